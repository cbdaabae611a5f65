"""What a benchmarked model is: where it comes from, its size and node counts."""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from bnfold.errors import InputError, ModelLoadError


@dataclass
class ModelStats:
    """Size on disk (or serialised) and node counts of one model."""

    label: str
    size_bytes: int
    nodes: int
    batchnorm: int
    dropout: int
    op_counts: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "size_bytes": self.size_bytes,
            "nodes": self.nodes,
            "batchnorm": self.batchnorm,
            "dropout": self.dropout,
            "op_counts": dict(self.op_counts),
        }


@dataclass
class ModelSource:
    """A model ready for onnxruntime (a path or bytes) with its stats."""

    ort_input: str | bytes
    stats: ModelStats


def resolve_model(model: Any, label: str | None = None) -> ModelSource:
    """Accept a path, serialised bytes, an ``onnx.ModelProto`` or an ``onnx_ir.Model``."""
    import onnx

    if isinstance(model, (str, os.PathLike)):
        path = os.fspath(model)
        if not os.path.isfile(path):
            raise ModelLoadError(f"model file not found: {path}")
        try:
            proto = onnx.load(path, load_external_data=False)
        except Exception as err:
            raise ModelLoadError(f"cannot read {path} as ONNX: {_first_line(err)}") from err
        size = os.path.getsize(path) + _external_bytes(proto, os.path.dirname(path))
        return ModelSource(path, _stats(proto, label or os.path.basename(path), size))
    if isinstance(model, bytes):
        try:
            proto = onnx.load_from_string(model)
        except Exception as err:
            raise ModelLoadError(f"cannot read bytes as ONNX: {_first_line(err)}") from err
        return ModelSource(model, _stats(proto, label or "model", len(model)))
    if isinstance(model, onnx.ModelProto):
        data = model.SerializeToString()
        return ModelSource(data, _stats(model, label or "model", len(data)))
    if type(model).__module__.startswith("onnx_ir"):
        import onnx_ir

        proto = onnx_ir.to_proto(model)
        data = proto.SerializeToString()
        return ModelSource(data, _stats(proto, label or "model", len(data)))
    raise InputError(f"cannot benchmark a {type(model).__name__}: give a path or an ONNX model")


def _stats(proto: Any, label: str, size: int) -> ModelStats:
    counts: Counter[str] = Counter()
    _count_ops(proto.graph, counts)
    return ModelStats(
        label=label,
        size_bytes=size,
        nodes=sum(counts.values()),
        batchnorm=counts.get("BatchNormalization", 0),
        dropout=counts.get("Dropout", 0),
        op_counts=dict(counts.most_common()),
    )


def _count_ops(graph: Any, counts: Counter[str]) -> None:
    """Count nodes by op type, subgraphs (If/Loop/Scan bodies) included."""
    for node in graph.node:
        counts[node.op_type] += 1
        for attr in node.attribute:
            if attr.HasField("g"):
                _count_ops(attr.g, counts)
            for sub in attr.graphs:
                _count_ops(sub, counts)


def _external_bytes(proto: Any, base_dir: str) -> int:
    """Total size of the distinct external data files a model's initializers refer to."""
    locations = {
        entry.value
        for tensor in _initializers(proto.graph)
        if tensor.data_location == 1  # onnx.TensorProto.EXTERNAL
        for entry in tensor.external_data
        if entry.key == "location"
    }
    paths = (os.path.join(base_dir, location) for location in locations)
    return sum(os.path.getsize(p) for p in paths if os.path.isfile(p))


def _initializers(graph: Any) -> list[Any]:
    """Initializers and Constant-node tensors of a graph and its subgraphs."""
    tensors = list(graph.initializer)
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                tensors.append(attr.t)
            if attr.HasField("g"):
                tensors.extend(_initializers(attr.g))
            for sub in attr.graphs:
                tensors.extend(_initializers(sub))
    return tensors


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
