"""A model split into its structure and its large initializers, for cheap modified copies.

Probes add outputs and the noise floor moves weights: both need a second model that
differs from the first in a few small places. Copying and re-serialising a 100 MB proto
for that costs more than the session itself; instead the structure (a small proto whose
large initializers are marked as external data at an in-memory location) is copied and
the arrays are handed to onnxruntime directly (``SessionOptions.add_external_initializers``),
so a modified copy costs what its changes cost.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np
import onnx
from onnx import external_data_helper, numpy_helper

IN_MEMORY = "bnfold-in-memory"  # the location large initializers point at (never a file)
MIN_BYTES = 1024  # smaller initializers stay inline in the structure
# dtypes onnxruntime takes from numpy arrays without conversion
_ARRAY_TYPES = frozenset(
    {
        onnx.TensorProto.FLOAT,
        onnx.TensorProto.DOUBLE,
        onnx.TensorProto.FLOAT16,
        onnx.TensorProto.INT8,
        onnx.TensorProto.UINT8,
        onnx.TensorProto.INT16,
        onnx.TensorProto.UINT16,
        onnx.TensorProto.INT32,
        onnx.TensorProto.UINT32,
        onnx.TensorProto.INT64,
        onnx.TensorProto.UINT64,
        onnx.TensorProto.BOOL,
    }
)


@dataclasses.dataclass
class Skeleton:
    """``proto`` holds everything but the data of ``arrays`` (main-graph initializers)."""

    proto: onnx.ModelProto
    arrays: Mapping[str, np.ndarray]

    def nbytes(self) -> int:
        return self.proto.ByteSize() + sum(a.nbytes for a in self.arrays.values())


def split(model: onnx.ModelProto, base_dir: str = "") -> Skeleton:
    """Split ``model``; external data is read from ``base_dir``. ``model`` is not modified."""
    proto = _copy_without_initializers(model)
    arrays: dict[str, np.ndarray] = {}
    for tensor in model.graph.initializer:
        kept = proto.graph.initializer.add()
        if _movable(tensor):
            array = numpy_helper.to_array(tensor, base_dir)
            arrays[tensor.name] = array
            kept.name, kept.data_type = tensor.name, tensor.data_type
            kept.dims.extend(tensor.dims)
            kept.data_location = onnx.TensorProto.EXTERNAL
            kept.external_data.add(key="location", value=IN_MEMORY)
        else:
            kept.CopyFrom(tensor)
    _load_remaining_external(proto, base_dir)
    return Skeleton(proto, arrays)


def copy_structure(proto: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of a skeleton's structure (small: large data lives in its arrays)."""
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    return out


def _movable(tensor: onnx.TensorProto) -> bool:
    if tensor.data_type not in _ARRAY_TYPES or tensor.HasField("segment"):
        return False
    if external_data_helper.uses_external_data(tensor):
        return True
    count = int(np.prod(tensor.dims, dtype=np.int64)) if tensor.dims else 1
    itemsize = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
    return count * itemsize >= MIN_BYTES


def _copy_without_initializers(model: onnx.ModelProto) -> onnx.ModelProto:
    """Copy every field of ``model`` except the main graph's initializers."""
    out = onnx.ModelProto()
    for field, value in model.ListFields():
        if field.name != "graph":
            _set_field(out, field.name, value)
    for field, value in model.graph.ListFields():
        if field.name != "initializer":
            _set_field(out.graph, field.name, value)
    return out


def _set_field(message: Any, name: str, value: Any) -> None:
    if hasattr(value, "extend"):  # a repeated field
        getattr(message, name).extend(value)
    elif hasattr(value, "CopyFrom"):  # a message
        getattr(message, name).CopyFrom(value)
    else:
        setattr(message, name, value)


def _load_remaining_external(proto: onnx.ModelProto, base_dir: str) -> None:
    """External tensors left in the structure (subgraphs, odd dtypes): read them inline."""
    for tensor in external_data_helper._get_all_tensors(proto):
        if not external_data_helper.uses_external_data(tensor):
            continue
        location = next((e.value for e in tensor.external_data if e.key == "location"), "")
        if location != IN_MEMORY:
            external_data_helper.load_external_data_for_tensor(tensor, base_dir)
            tensor.data_location = onnx.TensorProto.DEFAULT
            del tensor.external_data[:]
