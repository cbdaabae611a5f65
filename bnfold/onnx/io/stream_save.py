"""Writing a model with inline weights without building one giant protobuf.

``onnx.save``/``ir.save`` build the full ModelProto and then serialise it: two extra
copies of every weight. Protobuf merges repeated occurrences of an embedded message
field, so a file may be written as the model without initializers followed by one
``graph { initializer: <tensor> }`` chunk per weight; every protobuf parser
(onnx, onnxruntime) reads it as the same model. A numpy-backed weight is written straight
from its array (header by hand, then the array's bytes): no copy at all, so a weight
memory-mapped from the input goes from page cache to page cache.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import BinaryIO

import numpy as np
import onnx
import onnx_ir as ir

from bnfold.onnx.io import wire
from bnfold.onnx.io.mapped import MAPPED_TYPES

_MODEL_GRAPH_FIELD = 7  # ModelProto.graph
_GRAPH_INITIALIZER_FIELD = 5  # GraphProto.initializer
_TENSOR_RAW_DATA_FIELD = 9  # TensorProto.raw_data


def write_inline(model: ir.Model, path: Path) -> None:
    """Serialise ``model`` (weights inline) to ``path``, streaming main-graph initializers."""
    graph = model.graph
    streamed = [v for v in graph.initializers.values() if v.const_value is not None]
    order = list(graph.initializers.values())
    for value in streamed:
        graph.initializers.pop(value.name)  # type: ignore[arg-type]
    try:
        header = ir.serde.serialize_model(model).SerializeToString()
    finally:
        _restore(graph, order)
    with open(path, "wb") as f:
        f.write(header)
        for value in streamed:
            _write_initializer(f, value)


def _restore(graph: ir.Graph, order: list[ir.Value]) -> None:
    """Put the initializers back in their original order."""
    for value in list(graph.initializers.values()):
        graph.initializers.pop(value.name)  # type: ignore[arg-type]
    for value in order:
        graph.register_initializer(value)


def _write_initializer(f: BinaryIO, value: ir.Value) -> None:
    tensor = value.const_value
    assert tensor is not None
    data = raw_array(tensor)
    if data is None:
        proto = ir.serde.serialize_tensor(tensor)
        proto.name = value.name or proto.name
        head, data_bytes = proto.SerializeToString(), b""
        del proto
    else:
        head = _tensor_header(tensor, value.name or tensor.name or "")
        head += wire.len_field(_TENSOR_RAW_DATA_FIELD, data.nbytes)
        data_bytes = data  # type: ignore[assignment]
    size = len(head) + len(data_bytes)
    inner = wire.len_field(_GRAPH_INITIALIZER_FIELD, size)
    f.write(wire.len_field(_MODEL_GRAPH_FIELD, len(inner) + size) + inner + head)
    if len(data_bytes):
        f.write(data_bytes)


def raw_array(tensor: ir.TensorProtocol) -> np.ndarray | None:
    """The tensor's ``raw_data`` bytes as a flat uint8 array viewing its numpy data, or None
    when the tensor is not a plain numpy-backed one (then onnx-ir serialises it)."""
    if type(tensor) is not ir.Tensor or tensor.dtype not in MAPPED_TYPES:
        return None
    if sys.byteorder != "little":
        return None
    array = tensor.raw
    if not isinstance(array, np.ndarray) or array.dtype.itemsize * 8 != tensor.dtype.bitwidth:
        return None
    return np.ascontiguousarray(array).reshape(-1).view(np.uint8)


def _tensor_header(tensor: ir.TensorProtocol, name: str) -> bytes:
    """The TensorProto of ``tensor`` without its data, as onnx-ir would write it."""
    proto = onnx.TensorProto(name=name, data_type=tensor.dtype.value)
    proto.dims.extend(tensor.shape.numpy())
    if tensor.doc_string:
        proto.doc_string = tensor.doc_string
    for key, text in tensor.metadata_props.items():
        proto.metadata_props.add(key=key, value=text)
    return proto.SerializeToString()
