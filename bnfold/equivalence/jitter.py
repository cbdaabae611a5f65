"""A copy of the reference whose weights are moved by an ulp, to measure its noise floor.

Folding rewrites weights and biases, each rounded once to the model's dtype, so the
difference between a correct fold and its source is rounding noise of the kind this copy
has. Running it (on slightly moved inputs) measures the reference's noise floor, including
noise that input perturbation alone cannot reach: a large constant bias whose rounding
dominates a small result, or a model whose inputs are all integers.

Only float constants read by ops whose weights folding could touch (see ``JITTERED_OPS``)
are moved; sizes, scales, thresholds and other semantic constants stay exact.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import numpy as np
import onnx
from onnx import numpy_helper

from bnfold.equivalence.source import ModelSource, open_proto

logger = logging.getLogger(__name__)

JITTERED_OPS = frozenset(
    {
        "Conv",
        "ConvTranspose",
        "Gemm",
        "MatMul",
        "Einsum",
        "BatchNormalization",
        "InstanceNormalization",
        "LayerNormalization",
        "PRelu",
        "Gather",
        "Add",
        "Sub",
        "Mul",
        "Div",
        "Identity",
    }
)
_FLOAT_TYPES = frozenset(
    {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE}
)


@contextlib.contextmanager
def open_jittered(
    source: ModelSource, rng: np.random.Generator, ulps: int
) -> Iterator[ModelSource]:
    """Yield a ModelSource of the jittered copy (a temporary file when it is over 2 GB)."""
    proto = jittered_copy(source.full_proto(), rng, ulps)
    with open_proto(proto, f"{source.label} (weights jittered)") as jittered:
        yield jittered


def jittered_copy(model: onnx.ModelProto, rng: np.random.Generator, ulps: int) -> onnx.ModelProto:
    """Return a copy with every eligible float constant moved by ±1…``ulps`` ulps."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    eligible = _eligible_names(graph)
    moved = 0
    for tensor in graph.initializer:
        if tensor.name in eligible and tensor.data_type in _FLOAT_TYPES:
            tensor.CopyFrom(_jitter(tensor, rng, ulps))
            moved += 1
    for node in graph.node:
        if node.op_type == "Constant" and node.output[0] in eligible:
            for attr in node.attribute:
                if attr.name == "value" and attr.t.data_type in _FLOAT_TYPES:
                    attr.t.CopyFrom(_jitter(attr.t, rng, ulps))
                    moved += 1
    logger.debug("jittered %d constant tensor(s)", moved)
    return out


def _eligible_names(graph: onnx.GraphProto) -> set[str]:
    """Values read only by ops in JITTERED_OPS (default domain) and not graph outputs.

    Anything a subgraph (If/Loop/Scan body) reads is left alone.
    """
    ok: dict[str, bool] = {}
    for node in graph.node:
        allowed = node.op_type in JITTERED_OPS and node.domain in ("", "ai.onnx")
        for name in node.input:
            ok[name] = ok.get(name, True) and allowed
        for attr in node.attribute:
            for sub in (attr.g, *attr.graphs) if attr.HasField("g") else attr.graphs:
                for name in _names_read(sub):
                    ok[name] = False
    for value in graph.output:
        ok[value.name] = False
    return {name for name, flag in ok.items() if flag}


def _names_read(graph: onnx.GraphProto) -> set[str]:
    names = set()
    for node in graph.node:
        names.update(node.input)
        for attr in node.attribute:
            for sub in (attr.g, *attr.graphs) if attr.HasField("g") else attr.graphs:
                names |= _names_read(sub)
    return names


def _jitter(tensor: onnx.TensorProto, rng: np.random.Generator, ulps: int) -> onnx.TensorProto:
    array = numpy_helper.to_array(tensor)
    eps = np.finfo(array.dtype).eps
    steps = rng.integers(1, ulps + 1, array.shape) * rng.choice((-1, 1), array.shape)
    moved = (array.astype(np.float64) * (1.0 + steps * eps)).astype(array.dtype)
    return numpy_helper.from_array(moved, tensor.name)
