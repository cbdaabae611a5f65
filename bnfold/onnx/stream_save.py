"""Writing a model with inline weights without building one giant protobuf.

``onnx.save``/``ir.save`` build the full ModelProto and then serialise it: two extra
copies of every weight. Protobuf merges repeated occurrences of an embedded message
field, so a file may be written as the model without initializers followed by one
``graph { initializer: <tensor> }`` chunk per weight; every protobuf parser
(onnx, onnxruntime) reads it as the same model. Peak memory: one tensor at a time.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import BinaryIO

import onnx_ir as ir

logger = logging.getLogger(__name__)

_MODEL_GRAPH_FIELD = 7  # ModelProto.graph
_GRAPH_INITIALIZER_FIELD = 5  # GraphProto.initializer
_LENGTH_DELIMITED = 2


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
    assert value.const_value is not None
    proto = ir.serde.serialize_tensor(value.const_value)
    proto.name = value.name or proto.name
    tensor = proto.SerializeToString()
    del proto
    inner = _key(_GRAPH_INITIALIZER_FIELD) + _varint(len(tensor))
    f.write(_key(_MODEL_GRAPH_FIELD) + _varint(len(inner) + len(tensor)) + inner)
    f.write(tensor)


def _key(field: int) -> bytes:
    return _varint((field << 3) | _LENGTH_DELIMITED)


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)
