"""Input validation beyond the ONNX checker: problems that make a model unusable.

The checker accepts models that onnxruntime rejects or that compute NaN: an opset newer
than any runtime knows, an operator domain nobody implements, BatchNorm parameters of
inconsistent length, negative variance, NaN/Inf weights. Each problem raises
``ModelLoadError`` with one line naming the node. The fold passes keep their own skip
reasons as a second line of defence for models handed over in memory.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterable, Iterator

import numpy as np
import onnx
import onnx_ir as ir

from bnfold import foldmath
from bnfold.errors import ModelLoadError
from bnfold.onnx.constants import FINITE_MARK as _FINITE_MARK
from bnfold.onnx.constants import constant_array, is_onnx_op, mark_finite
from bnfold.onnx.walk import all_nodes

logger = logging.getLogger(__name__)

# Domains onnxruntime implements besides the onnx ones (trusted when onnxruntime cannot
# list its operators).
RUNTIME_DOMAINS = frozenset(
    {"com.microsoft", "com.microsoft.nchwc", "com.ms.internal.nhwc", "com.microsoft.experimental"}
)
_BN_PARAMS = ("scale", "bias", "mean", "var")
_WEIGHT_INPUTS = {"Conv": (1, 2), "ConvTranspose": (1, 2), "Gemm": (1, 2), "MatMul": (0, 1)}
_CHUNK = 1 << 24  # elements per NaN scan step: bounded temporaries for huge weights
_UNSCANNED = "bnfold.unscanned"  # tensor meta: NaN/Inf scan deferred to after the fold


# -- structure (protobuf, before deserialisation) -------------------------------------
def validate_proto(
    proto: onnx.ModelProto, label: str, tensors: list[onnx.TensorProto] | None = None
) -> None:
    """Opsets and domains are known; every name a node reads is defined somewhere.

    ``tensors``: every tensor of ``proto``, when the caller already listed them.
    """
    check_opsets(proto, label)
    check_defined_names(proto.graph, label)
    check_tensor_sizes(proto, label, tensors)


def check_tensor_sizes(
    proto: onnx.ModelProto, label: str, tensors: list[onnx.TensorProto] | None = None
) -> None:
    """Every inline ``raw_data`` holds exactly the bytes its shape and type need.

    The checker does not look, and onnxruntime refuses such a model only when it runs it.
    """
    if tensors is None:
        tensors = list(onnx.external_data_helper._get_all_tensors(proto))
    for tensor in tensors:
        if tensor.data_location == onnx.TensorProto.EXTERNAL or not tensor.HasField("raw_data"):
            continue
        need = tensor_bytes(tensor)
        have = len(tensor.raw_data)
        if need is not None and have != need:
            dtype = ir.DataType(tensor.data_type).name
            raise ModelLoadError(
                f"{label}: tensor '{tensor.name}' holds {have} bytes but its shape "
                f"{list(tensor.dims)} of {dtype} needs {need} (truncated or corrupt data)"
            )


def tensor_bytes(tensor: onnx.TensorProto) -> int | None:
    """Bytes of the tensor's data as ``raw_data``; None for strings and unknown types."""
    try:
        dtype = ir.DataType(tensor.data_type)
    except ValueError:
        return None  # the checker reports unknown types
    if dtype == ir.DataType.STRING or dtype == ir.DataType.UNDEFINED:
        return None
    count = 1
    for dim in tensor.dims:
        count *= dim
    return (count * dtype.bitwidth + 7) // 8


def check_opsets(proto: onnx.ModelProto, label: str) -> None:
    """Refuse opset versions newer than the installed onnx and domains no runtime knows."""
    imports = {_domain(o.domain): o.version for o in proto.opset_import}
    newest = {"": onnx.defs.onnx_opset_version(), "ai.onnx.ml": onnx.helper.VERSION_TABLE[-1][3]}
    for domain, version in imports.items():
        limit = newest.get(domain)
        shown = domain or "ai.onnx"
        if version < 1:
            raise ModelLoadError(f"{label}: invalid opset version {version} for '{shown}'")
        if limit is not None and version > limit:
            raise ModelLoadError(
                f"{label}: unknown opset {version} for domain '{shown}' (onnx "
                f"{onnx.__version__} knows 1..{limit}); re-export with a released opset"
            )
    local = {(_domain(f.domain), f.name) for f in proto.functions}
    onnx_domains = _onnx_domains()
    for node in _all_nodes(proto):
        domain = _domain(node.domain)
        if domain in onnx_domains or (domain, node.op_type) in local:
            continue  # the checker validates onnx operators
        runtime = _runtime_ops()
        if runtime is None and domain in RUNTIME_DOMAINS:
            continue  # cannot ask onnxruntime; trust the domain
        if runtime is not None and (domain, node.op_type) in runtime:
            continue
        known = domain in RUNTIME_DOMAINS or (
            runtime is not None and any(d == domain for d, _ in runtime)
        )
        what = f"operator '{node.op_type}' of domain '{domain}'"
        why = (
            "onnxruntime has no such operator"
            if known
            else "neither onnx nor onnxruntime knows this domain"
        )
        raise ModelLoadError(
            f"{label}: unknown {what}: {why} and the model defines no such function"
        )


def check_defined_names(
    graph: onnx.GraphProto, label: str, outer: frozenset[str] = frozenset()
) -> None:
    """Every node input and graph output names a graph input, initializer or node output."""
    defined = set(outer)
    defined.update(i.name for i in graph.input)
    defined.update(t.name for t in graph.initializer)
    defined.update(t.values.name for t in graph.sparse_initializer)
    for node in graph.node:
        defined.update(o for o in node.output if o)
    for node in graph.node:
        for name in node.input:
            if name and name not in defined:
                shown = f"'{node.name}' ({node.op_type})" if node.name else node.op_type
                raise ModelLoadError(
                    f"{label}: node {shown} reads '{name}', which no node, graph input or "
                    "initializer defines (missing initializer?)"
                )
        for attr in node.attribute:
            for sub in (*([attr.g] if attr.HasField("g") else []), *attr.graphs):
                check_defined_names(sub, label, frozenset(defined))
    for out in graph.output:
        if out.name not in defined:
            raise ModelLoadError(
                f"{label}: graph output '{out.name}' is not produced by any node, input or "
                "initializer"
            )


# -- values (onnx-ir, weights memory-mapped) -----------------------------------------
def validate_model(model: ir.Model, label: str, *, defer_weight_scan: bool = False) -> None:
    """BatchNorm parameters are consistent and finite; linear-layer weights are finite.

    ``defer_weight_scan``: only mark the linear-layer weights; ``check_deferred_weights``
    scans those still in the model after folding. A fold reads every weight it rewrites
    and refuses a non-finite result, which a non-finite weight always gives (Inf·0 is
    NaN), so a folded weight needs no scan of its own: on a convolutional network that is
    nearly every weight byte, read once instead of twice.
    """
    for node in _ir_nodes(model):
        if is_onnx_op(node, "BatchNormalization"):
            check_batchnorm(node, label)
        elif is_onnx_op(node, tuple(_WEIGHT_INPUTS)):
            if defer_weight_scan:
                _mark_unscanned(node)
            else:
                check_weights(node, label)


def check_deferred_weights(model: ir.Model, label: str) -> None:
    """The NaN/Inf scan ``validate_model(defer_weight_scan=True)`` left out, on the weights
    the model still holds (a folded weight is a new tensor, proven finite by its fold)."""
    for node in _ir_nodes(model):
        if is_onnx_op(node, tuple(_WEIGHT_INPUTS)) and _has_unscanned(node):
            check_weights(node, label)


def _weight_tensors(node: ir.Node) -> Iterator[ir.TensorProtocol]:
    for index in _WEIGHT_INPUTS[node.op_type]:
        value = node.inputs[index] if index < len(node.inputs) else None
        if value is not None and value.const_value is not None:
            yield value.const_value


def _mark_unscanned(node: ir.Node) -> None:
    for tensor in _weight_tensors(node):
        if not tensor.meta.get(_FINITE_MARK):
            tensor.meta[_UNSCANNED] = True


def _has_unscanned(node: ir.Node) -> bool:
    return any(tensor.meta.get(_UNSCANNED) for tensor in _weight_tensors(node))


def check_batchnorm(node: ir.Node, label: str) -> None:
    """Raise when a BN's constant parameters are mis-shaped, non-finite or have variance < 0."""
    where = f"{label}: BatchNormalization '{_name(node)}'"
    arrays: dict[str, np.ndarray] = {}
    for index, what in enumerate(_BN_PARAMS, start=1):
        value = node.inputs[index] if index < len(node.inputs) else None
        arr = constant_array(value, allow_graph_inputs=True)
        if arr is not None:
            arrays[what] = np.asarray(arr)
    if node.attributes.get_int("spatial", 1) == 0:
        return _check_finite_params(arrays, where)  # per-activation layout (opset < 9)
    for what, arr in arrays.items():
        if arr.ndim != 1:
            raise ModelLoadError(f"{where}: {what} has shape {tuple(arr.shape)}, expected 1-D")
    lengths = {what: int(arr.shape[0]) for what, arr in arrays.items()}
    channels = _input_channels(node)
    if len(set(lengths.values())) > 1 or (
        channels is not None and lengths and (set(lengths.values()) != {channels})
    ):
        got = ", ".join(f"{k} {v}" for k, v in lengths.items())
        expect = f"; its input has {channels} channels" if channels is not None else ""
        raise ModelLoadError(f"{where}: parameter lengths do not match ({got}{expect})")
    _check_finite_params(arrays, where)
    if "var" in arrays:
        # ONNX stores ε as float32; the default 1e-5 too (9.99999974e-06)
        eps = np.float64(np.float32(node.attributes.get_float("epsilon", 1e-5)))
        var = arrays["var"].astype(np.float64)
        bad = np.flatnonzero(var + eps <= 0)
        if bad.size:
            raise ModelLoadError(
                f"{where}: variance is negative ({var[bad[0]]:g} at channel {bad[0]}, "
                f"{bad.size} channel(s)); variance + epsilon must be > 0"
            )


def check_weights(node: ir.Node, label: str) -> None:
    """Raise when a constant weight or bias of a linear layer holds NaN or Inf."""
    for index in _WEIGHT_INPUTS[node.op_type]:
        value = node.inputs[index] if index < len(node.inputs) else None
        arr = constant_array(value, allow_graph_inputs=True)
        if arr is None or not _is_float(arr):
            continue
        count = _count_non_finite(arr)
        if count:
            assert value is not None
            raise ModelLoadError(
                f"{label}: {node.op_type} '{_name(node)}' input '{value.name}' has {count} "
                "NaN/Inf value(s); the model's output would be NaN"
            )
        if value is not None and value.const_value is not None:
            mark_finite(value)  # the folds need not scan it again
            value.const_value.meta.pop(_UNSCANNED, None)


def _check_finite_params(arrays: dict[str, np.ndarray], where: str) -> None:
    for what, arr in arrays.items():
        count = _count_non_finite(arr) if _is_float(arr) else 0
        if count:
            raise ModelLoadError(f"{where}: {what} has {count} NaN/Inf value(s)")


def _count_non_finite(arr: np.ndarray) -> int:
    """NaN/Inf count, scanned in chunks so a memory-mapped weight is never copied whole."""
    flat = arr.reshape(-1)
    total = 0
    for start in range(0, flat.size, _CHUNK):
        chunk = flat[start : start + _CHUNK]
        if chunk.dtype.itemsize < 4 or chunk.dtype.kind != "f":
            chunk = chunk.astype(np.float32)
        if foldmath.all_finite(chunk):
            continue
        total += int(chunk.size - np.count_nonzero(np.isfinite(chunk)))  # the rare slow path
    return total


def _is_float(arr: np.ndarray) -> bool:
    return arr.dtype.kind == "f" or arr.dtype.name in ("bfloat16",) or "float8" in arr.dtype.name


def _input_channels(node: ir.Node) -> int | None:
    """Channel count of the BN input when it is known from its shape or its producer."""
    x = node.inputs[0] if node.inputs else None
    if x is None:
        return None
    if x.shape is not None and len(x.shape) >= 2 and isinstance(x.shape[1], int):
        return int(x.shape[1])
    producer = x.producer()
    if producer is None or not is_onnx_op(producer, ("Conv", "ConvTranspose")):
        return None
    w = producer.inputs[1] if len(producer.inputs) > 1 else None
    if w is None or w.shape is None or len(w.shape) < 3 or not isinstance(w.shape[0], int):
        return None
    if is_onnx_op(producer, "Conv"):
        return int(w.shape[0])
    dim = w.shape[1]
    return int(dim) * producer.attributes.get_int("group", 1) if isinstance(dim, int) else None


@functools.lru_cache(maxsize=1)
def _onnx_domains() -> frozenset[str]:
    return frozenset({""} | {_domain(s.domain) for s in onnx.defs.get_all_schemas_with_history()})


@functools.lru_cache(maxsize=1)
def _runtime_ops() -> frozenset[tuple[str, str]] | None:
    """(domain, op_type) of every operator onnxruntime implements; None when unknown."""
    try:
        from onnxruntime.capi import onnxruntime_pybind11_state as ort_state

        return frozenset((_domain(s.domain), s.name) for s in ort_state.get_all_operator_schema())
    except Exception as err:  # a build without the schema API: rely on the static list
        logger.debug("cannot list onnxruntime operators: %s", err)
        return None


def _domain(domain: str) -> str:
    return "" if domain == "ai.onnx" else domain


def _all_nodes(proto: onnx.ModelProto) -> Iterator[onnx.NodeProto]:
    yield from _graph_nodes(proto.graph.node)
    for func in proto.functions:
        yield from _graph_nodes(func.node)


def _graph_nodes(nodes: Iterable[onnx.NodeProto]) -> Iterator[onnx.NodeProto]:
    for node in nodes:
        yield node
        for attr in node.attribute:
            for sub in (*([attr.g] if attr.HasField("g") else []), *attr.graphs):
                yield from _graph_nodes(sub.node)


def _ir_nodes(model: ir.Model) -> Iterator[ir.Node]:
    return iter(all_nodes(model))


def _name(node: ir.Node) -> str:
    if node.name:
        return node.name
    out = node.outputs[0].name if node.outputs else "?"
    return f"{node.op_type}({out})"
