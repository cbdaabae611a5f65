"""Reading a model file with its large inline weights left in the file, memory-mapped.

``onnx.load`` copies every weight at least twice (file → bytes → message), and onnx-ir
copies it again on first use. Here the file is memory-mapped and walked at the wire
level: each large main-graph ``raw_data`` payload is cut out of the bytes handed to the
protobuf parser and becomes a read-only numpy view of the mapping instead. What is parsed
is the model without those payloads: the same message, structurally.

This is only a fast path. Anything unusual (groups, duplicate names, packed layouts we do
not map, sizes that do not add up) returns ``None`` and the caller parses normally, so
errors for bad files stay those of the regular parser.
"""

from __future__ import annotations

import dataclasses
import logging
import mmap
import sys
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir

from bnfold.errors import ModelLoadError
from bnfold.onnx.io import lite, wire

logger = logging.getLogger(__name__)

MIN_MAPPED_BYTES = 64 * 1024  # smaller payloads are parsed as usual
MIN_MAPPED_FILE_BYTES = 1024 * 1024  # smaller files: a copy is cheaper than the wire walk

_MODEL_GRAPH = 7
_GRAPH_INITIALIZER = 5
_TENSOR_DIMS, _TENSOR_DATA_TYPE, _TENSOR_SEGMENT = 1, 2, 3
_TENSOR_NAME, _TENSOR_RAW_DATA = 8, 9

# Types whose raw bytes are exactly one numpy element each (little-endian).
MAPPED_TYPES = frozenset(
    {
        ir.DataType.FLOAT,
        ir.DataType.FLOAT16,
        ir.DataType.DOUBLE,
        ir.DataType.BFLOAT16,
        ir.DataType.INT8,
        ir.DataType.INT16,
        ir.DataType.INT32,
        ir.DataType.INT64,
        ir.DataType.UINT8,
        ir.DataType.UINT16,
        ir.DataType.UINT32,
        ir.DataType.UINT64,
        ir.DataType.BOOL,
    }
)


@dataclasses.dataclass
class MappedModel:
    """The model without its large weights, and those weights as views of the file."""

    proto: onnx.ModelProto
    weights: dict[str, np.ndarray]


class _NotMapped(Exception):
    """The file takes the regular parser."""


def read_mapped(path: Path) -> MappedModel | None:
    """Parse ``path`` with its large inline weights memory-mapped; None when not worth it."""
    if sys.byteorder != "little":
        return None
    try:
        if path.stat().st_size < MIN_MAPPED_FILE_BYTES:
            return None
        with open(path, "rb") as f:
            mapping = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    except (OSError, ValueError):  # empty file, special file: the regular path explains
        return None
    buf = memoryview(mapping)
    weights: dict[str, np.ndarray] = {}
    try:
        stripped = _strip_model(buf, weights)
    except (wire.WireError, _NotMapped) as err:
        logger.debug("%s: regular parse (%s)", path, err)
        return None
    if not weights:
        return None
    proto = onnx.ModelProto()
    try:
        proto.ParseFromString(stripped)
    except Exception as err:  # the regular parser gives the one-line error
        logger.debug("%s: regular parse (%s)", path, err)
        return None
    return MappedModel(proto, weights)


def attach(model: ir.Model, weights: dict[str, np.ndarray]) -> None:
    """Give the main-graph initializers named in ``weights`` their mapped data."""
    for name, array in weights.items():
        value = model.graph.initializers[name]
        old = value.const_value
        if old is None or tuple(old.shape.numpy()) != array.shape:
            raise ModelLoadError(f"initializer '{name}' is defined twice, with different shapes")
        value.const_value = ir.Tensor(
            array,
            dtype=old.dtype,
            name=old.name,
            doc_string=old.doc_string,
            metadata_props=dict(old.metadata_props),
        )


def _strip_model(buf: memoryview, weights: dict[str, np.ndarray]) -> bytes:
    parts: list[bytes | memoryview] = []
    for field in wire.fields(buf, 0, len(buf)):
        if field.number == _MODEL_GRAPH and field.wire_type == wire.LEN:
            graph = _strip_graph(buf, field, weights)
            parts += [wire.len_field(_MODEL_GRAPH, len(graph)), graph]
        else:
            parts.append(buf[field.start : field.end])
    return b"".join(parts)


def _strip_graph(buf: memoryview, graph: wire.Field, weights: dict[str, np.ndarray]) -> bytes:
    parts: list[bytes | memoryview] = []
    for field in wire.fields(buf, graph.value_start, graph.end):
        stripped = None
        if field.number == _GRAPH_INITIALIZER and field.wire_type == wire.LEN:
            stripped = _strip_tensor(buf, field, weights)
        if stripped is None:
            parts.append(buf[field.start : field.end])
        else:
            parts += [wire.len_field(_GRAPH_INITIALIZER, len(stripped)), stripped]
    return b"".join(parts)


def _strip_tensor(
    buf: memoryview, tensor: wire.Field, weights: dict[str, np.ndarray]
) -> bytes | None:
    """The tensor without its ``raw_data`` (recorded in ``weights``), or None to keep it."""
    kept: list[memoryview] = []
    dims: list[int] = []
    data_type = 0
    name: bytes | None = None
    raw: wire.Field | None = None
    for field in wire.fields(buf, tensor.value_start, tensor.end):
        number, kind = field.number, field.wire_type
        if number == _TENSOR_RAW_DATA and kind == wire.LEN:
            raw = field  # the last occurrence wins, as in protobuf
            continue
        kept.append(buf[field.start : field.end])
        if number == _TENSOR_SEGMENT:
            return None
        if number == _TENSOR_DIMS and kind == wire.VARINT:
            dims.append(wire.read_varint(buf, field.value_start, field.end)[0])
        elif number == _TENSOR_DIMS and kind == wire.LEN:
            dims += wire.packed_varints(buf, field.value_start, field.end)
        elif number == _TENSOR_DATA_TYPE and kind == wire.VARINT:
            data_type = wire.read_varint(buf, field.value_start, field.end)[0]
        elif number == _TENSOR_NAME and kind == wire.LEN:
            name = bytes(buf[field.value_start : field.end])
    if raw is None or raw.end - raw.value_start < MIN_MAPPED_BYTES or not name:
        return None
    array = _view(buf, raw, data_type, dims)
    if array is None:
        return None
    try:
        key = name.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if key in weights:
        raise _NotMapped(f"two initializers named {key!r}")
    weights[key] = array
    return b"".join(kept)


def _view(buf: memoryview, raw: wire.Field, data_type: int, dims: list[int]) -> np.ndarray | None:
    """A read-only array over the payload, when its size matches the declared shape."""
    try:
        dtype = ir.DataType(data_type)
    except ValueError:
        return None
    if dtype not in MAPPED_TYPES:
        return None
    np_dtype = np.dtype(dtype.numpy())  # the host is little-endian, as raw_data is
    count = 1
    for d in dims:
        if d >= 1 << 63:  # a negative int64 on the wire
            return None
        count *= d
    if count * np_dtype.itemsize != raw.end - raw.value_start or lite.is_small_shape(count):
        return None  # a small tensor must keep its data: the checker sees it
    array = np.frombuffer(buf, dtype=np_dtype, count=count, offset=raw.value_start)
    return array.reshape(dims)
