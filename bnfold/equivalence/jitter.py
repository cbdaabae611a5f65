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

from bnfold.equivalence.skeleton import Skeleton, copy_structure
from bnfold.equivalence.source import ModelSource, open_skeleton

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
    """Yield a ModelSource of the jittered copy: only the moved tensors are new.

    The structure is copied (small) and the large initializers reach onnxruntime as
    arrays (:mod:`bnfold.equivalence.skeleton`): nothing of the size of the whole model
    is copied, serialised or parsed again.
    """
    moved = jittered_skeleton(source.skeleton(), rng, ulps)
    with open_skeleton(moved, f"{source.label} (weights jittered)") as jittered:
        yield jittered


def jittered_skeleton(skeleton: Skeleton, rng: np.random.Generator, ulps: int) -> Skeleton:
    """Like :func:`jittered_copy` on a split model; the same ``rng`` moves the same values."""
    proto = copy_structure(skeleton.proto)
    graph = proto.graph
    eligible = _eligible_names(graph)
    arrays = dict(skeleton.arrays)
    moved = 0
    for tensor in graph.initializer:
        if tensor.name in eligible and tensor.data_type in _FLOAT_TYPES:
            if tensor.name in arrays:
                arrays[tensor.name] = _jitter_array(arrays[tensor.name], rng, ulps)
            else:
                tensor.CopyFrom(_jitter(tensor, rng, ulps))
            moved += 1
    moved += _jitter_constants(graph, eligible, rng, ulps)
    logger.debug("jittered %d constant tensor(s)", moved)
    return Skeleton(proto, arrays)


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
    moved += _jitter_constants(graph, eligible, rng, ulps)
    logger.debug("jittered %d constant tensor(s)", moved)
    return out


def _jitter_constants(
    graph: onnx.GraphProto, eligible: set[str], rng: np.random.Generator, ulps: int
) -> int:
    """Move the eligible float ``Constant`` nodes' values in place; return how many."""
    moved = 0
    for node in graph.node:
        if node.op_type == "Constant" and node.output[0] in eligible:
            for attr in node.attribute:
                if attr.name == "value" and attr.t.data_type in _FLOAT_TYPES:
                    attr.t.CopyFrom(_jitter(attr.t, rng, ulps))
                    moved += 1
    return moved


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
    for name in _shape_sources(graph):
        ok[name] = False
    return {name for name, flag in ok.items() if flag}


_INTEGER_TYPES = frozenset(
    {
        onnx.TensorProto.INT8,
        onnx.TensorProto.INT16,
        onnx.TensorProto.INT32,
        onnx.TensorProto.INT64,
        onnx.TensorProto.UINT8,
        onnx.TensorProto.UINT16,
        onnx.TensorProto.UINT32,
        onnx.TensorProto.UINT64,
        onnx.TensorProto.BOOL,
    }
)
# (op, first input index read as a size, index or scale): everything after it too
_SEMANTIC_INPUTS = {
    "Reshape": 1,
    "Pad": 1,
    "Slice": 1,
    "Expand": 1,
    "Tile": 1,
    "Resize": 1,
    "Upsample": 1,
    "ConstantOfShape": 0,
    "Range": 0,
    "OneHot": 1,
    "TopK": 1,
    "Squeeze": 1,
    "Unsqueeze": 1,
    "Split": 1,
}


def _shape_sources(graph: onnx.GraphProto) -> set[str]:
    """Values that flow into sizes, pads, indices or integer casts (float shape arithmetic).

    A legacy export may compute pads in float (``Cast(Div(Sub(size, k), 2))``): one ulp on
    such a constant moves a size by one and the jittered copy no longer runs (NASNet).
    """
    producers = {out: node for node in graph.node for out in node.output}
    stack: list[str] = []
    for node in graph.node:
        first = _SEMANTIC_INPUTS.get(node.op_type)
        if first is not None:
            stack.extend(node.input[first:])
        to = next((a.i for a in node.attribute if a.name == "to"), None)
        if node.op_type == "Cast" and to in _INTEGER_TYPES:
            stack.extend(node.input)
    seen: set[str] = set()
    while stack:
        name = stack.pop()
        if not name or name in seen:
            continue
        seen.add(name)
        producer = producers.get(name)
        if producer is not None and producer.op_type not in _METADATA_OPS:
            stack.extend(producer.input)
    return seen


_METADATA_OPS = frozenset({"Shape", "Size"})  # read only a tensor's shape, never its values


def _names_read(graph: onnx.GraphProto) -> set[str]:
    names = set()
    for node in graph.node:
        names.update(node.input)
        for attr in node.attribute:
            for sub in (attr.g, *attr.graphs) if attr.HasField("g") else attr.graphs:
                names |= _names_read(sub)
    return names


def _jitter(tensor: onnx.TensorProto, rng: np.random.Generator, ulps: int) -> onnx.TensorProto:
    moved = _jitter_array(numpy_helper.to_array(tensor), rng, ulps)
    return numpy_helper.from_array(moved, tensor.name)


def _jitter_array(array: np.ndarray, rng: np.random.Generator, ulps: int) -> np.ndarray:
    """``array`` times ``1 ± k·eps`` per element, k in 1…ulps (a new array)."""
    eps = np.finfo(array.dtype).eps
    steps = rng.integers(1, ulps + 1, array.shape) * rng.choice((-1, 1), array.shape)
    return (array.astype(np.float64) * (1.0 + steps * eps)).astype(array.dtype)
