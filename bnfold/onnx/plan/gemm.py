"""Gemm adapter: Y = α·A'·B' + β·C with A' = A or Aᵀ (transA), B' = B or Bᵀ (transB).

Output side: scale B's output columns by s; C' = β·C·s + t and β becomes 1 (α unchanged).
Input side: scale B's input rows by s; C' = β·C + α·(t·B) and β becomes 1.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from bnfold import foldmath
from bnfold.onnx.context import FoldContext, display_name
from bnfold.onnx.plan.plan import Plan
from bnfold.onnx.plan.weights import cast_like, input_dtype, layer_constant, set_inputs


def fold_output(
    ctx: FoldContext, layer: ir.Node, s: np.ndarray, t: np.ndarray, bias_add: ir.Node | None
) -> Plan | str:
    """Plan ``s·Gemm(A, B, C) + t`` as one Gemm."""
    del bias_add  # C is the Gemm's own bias
    b = layer_constant(ctx, layer, 1, "B")
    if isinstance(b, str):
        return b
    if b.ndim != 2:
        return f"Gemm B has rank {b.ndim}"
    out_axis = 0 if layer.attributes.get_int("transB", 0) else 1
    channels = b.shape[out_axis]
    if s.shape[0] != channels:
        return f"{s.shape[0]} channels do not match Gemm's {channels} outputs"
    beta = layer.attributes.get_float("beta", 1.0)
    c = _c(ctx, layer)
    if isinstance(c, str):
        return c
    if c is not None and (c.ndim > 2 or (c.ndim >= 1 and c.shape[-1] not in (1, channels))):
        return f"Gemm C of shape {tuple(c.shape)} does not broadcast to {channels} outputs"
    new_b = cast_like(foldmath.scale_output_channels(b, s, axis=out_axis), b, "B", out_axis)
    if isinstance(new_b, str):
        return new_b
    if c is None:
        c64, c_like = t.copy(), np.zeros(channels, dtype=b.dtype)
    else:
        c64 = np.float64(beta) * c.astype(np.float64) * s + t
        c_like = c if c.shape == c64.shape else np.zeros(c64.shape, dtype=c.dtype)
    new_c = cast_like(c64, c_like, "C", None)
    if isinstance(new_c, str):
        return new_c
    return _plan(ctx, layer, new_b, new_c)


def fold_input(
    ctx: FoldContext, node: ir.Node, axis: int, s: np.ndarray, t: np.ndarray
) -> Plan | str:
    """Plan ``Gemm(s·A + t, B, C)`` (per feature of A) as one Gemm."""
    name = f"Gemm '{display_name(node)}'"
    feat = 0 if node.attributes.get_int("transA", 0) else 1
    if axis != feat:
        return f"the channel axis maps to axis {axis} of {name}'s A, not its features ({feat})"
    b = layer_constant(ctx, node, 1, "B")
    if isinstance(b, str):
        return b
    in_axis = 1 if node.attributes.get_int("transB", 0) else 0
    if b.ndim != 2 or b.shape[in_axis] != s.shape[0]:
        return f"{s.shape[0]} channels do not match {name}'s B of shape {tuple(b.shape)}"
    alpha = node.attributes.get_float("alpha", 1.0)
    beta = node.attributes.get_float("beta", 1.0)
    b64, extra = foldmath.fold_matrix_input_affine(b, None, s, t, in_axis)
    c = _c(ctx, node)
    if isinstance(c, str):
        return c
    c64 = np.float64(alpha) * extra
    if c is not None:
        c64 = np.float64(beta) * c.astype(np.float64) + c64
    if c64.ndim > 2:
        return f"{name} C of shape {tuple(c.shape)} does not broadcast"  # type: ignore[union-attr]
    new_b = cast_like(b64, b, "B", 1 - in_axis)  # output features
    c_like = c if c is not None and c.shape == c64.shape else np.zeros(c64.shape, b.dtype)
    new_c = cast_like(c64, c_like, "C", None)
    if isinstance(new_b, str) or isinstance(new_c, str):
        return new_b if isinstance(new_b, str) else new_c  # type: ignore[return-value]
    return _plan(ctx, node, new_b, new_c)


def _c(ctx: FoldContext, layer: ir.Node) -> np.ndarray | str | None:
    if len(layer.inputs) < 3 or layer.inputs[2] is None:
        return None
    return layer_constant(ctx, layer, 2, "C")


def _plan(ctx: FoldContext, layer: ir.Node, new_b: np.ndarray, new_c: np.ndarray) -> Plan:
    """Set B' and C' and make β = 1 (C' already holds β·C)."""
    b_type = input_dtype(layer, 1, None)
    arrays = {1: (new_b, b_type), 2: (new_c, input_dtype(layer, 2, b_type))}
    set_both = set_inputs(ctx, layer, arrays)

    def apply() -> None:
        set_both()
        layer.attributes["beta"] = ir.AttrFloat32("beta", 1.0)

    return Plan(apply, [display_name(layer)], ["Gemm"])
