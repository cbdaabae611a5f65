"""Reading a BatchNormalization node into its frozen per-channel affine map."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import numpy as np
import onnx_ir as ir

from bnfold import foldmath, patterns
from bnfold.onnx.constants import constant_array, dequantized, is_onnx_op, why_not_constant
from bnfold.onnx.context import FoldContext
from bnfold.onnx.eval_mode import bn_in_training
from bnfold.onnx.walk import node_opset

_PARAMS = ((1, "scale"), (2, "bias"), (3, "mean"), (4, "var"))


@dataclasses.dataclass
class FrozenBatchNorm:
    """BN(x) = s·x + t along axis 1 of ``x``."""

    node: ir.Node
    scale: np.ndarray  # s, float64
    shift: np.ndarray  # t, float64

    @property
    def channels(self) -> int:
        return int(self.scale.shape[0])


def read_batchnorm(ctx: FoldContext, node: ir.Node) -> FrozenBatchNorm | str:
    """The BN's (s, t) when it is a frozen inference-time BN, else the reason it is not."""
    opset = node_opset(node, ctx.model)
    statistics_used = any(
        out is not None and (bool(out.uses()) or out.is_graph_output()) for out in node.outputs[1:]
    )
    reason = patterns.bn_training_reason(
        bn_in_training(node, opset), statistics_used, ctx.options.assume_eval
    )
    if reason is not None:
        return reason
    spatial = node.attributes.get_int("spatial", 1)
    if opset < 9 and spatial == 0:
        return "BN with spatial=0 normalises per activation, not per channel"
    if len(node.inputs) < 5 or node.inputs[0] is None:
        return "BN is missing inputs"
    allow = ctx.options.allow_graph_input_params
    params = tuple(node.inputs[index] for index, _ in _PARAMS)
    eps = node.attributes.get_float("epsilon", 1e-5)
    tensors = tuple(v.const_value if v is not None else None for v in params)
    cacheable = all(t is not None for t in tensors)
    key = (eps, allow, node, *tensors)  # by identity from the node on: tensors never change
    cached = ctx.bn_cache.get(id(node)) if cacheable else None
    if cached is not None and _same(cached[0], key):
        got = cached[1]
    else:
        got = _scale_shift(node, params, eps, allow)
        if cacheable:
            ctx.bn_cache[id(node)] = (key, got)
    if isinstance(got, str):
        return got
    return FrozenBatchNorm(node, got.scale.copy(), got.shift.copy())  # callers own theirs


def _same(a: tuple[object, ...], b: tuple[object, ...]) -> bool:
    """Same ε and option, then the very same node and parameter tensors."""
    if len(a) != len(b) or a[:2] != b[:2]:
        return False
    return all(x is y for x, y in zip(a[2:], b[2:], strict=True))


def _scale_shift(
    node: ir.Node, params: tuple[ir.Value | None, ...], eps: float, allow: bool
) -> FrozenBatchNorm | str:
    """(s, t) of a BN from its parameter values, or why they cannot fold."""
    arrays: dict[str, np.ndarray] = {}
    for (_, what), value in zip(_PARAMS, params, strict=True):
        arr = constant_array(value, allow_graph_inputs=allow)
        if arr is None:
            arr = dequantized(value)  # quantizers also quantize BN's γ and β
        if arr is None:
            return why_not_constant(value, f"BN {what}", allow_graph_inputs=allow)
        arrays[what] = np.asarray(arr).astype(np.float64)
    reason = foldmath.check_bn_params(
        arrays["scale"], arrays["bias"], arrays["mean"], arrays["var"], eps
    )
    if reason is not None:
        return reason
    s, t = foldmath.bn_scale_shift(
        arrays["scale"], arrays["bias"], arrays["mean"], arrays["var"], eps
    )
    return FrozenBatchNorm(node, s, t)


def frozen_batchnorms(ctx: FoldContext, *, record: bool = False) -> Iterator[FrozenBatchNorm]:
    """Every readable BN still in the model, over a snapshot that tolerates removals.

    BNs the user asked to keep are never yielded. ``record`` notes why an unreadable BN
    cannot fold (the first fold pass does this).
    """
    for node in ctx.all_nodes():
        if node.graph is None or not is_onnx_op(node, "BatchNormalization"):
            continue
        if ctx.kept(node):
            continue
        bn = read_batchnorm(ctx, node)
        if isinstance(bn, str):
            if record:
                ctx.skip(node, bn)
            continue
        yield bn
