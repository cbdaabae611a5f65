"""MatMul adapter: a constant 2-D right-hand side B (K, N), features on the last axis.

Output side: B' = B·s over columns, and the bias (an existing ``+ c`` or a new Add) becomes
c·s + t. Input side: B' = s·B over rows, bias + t·B (merged into an existing ``+ c``).
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from bnfold import foldmath
from bnfold.onnx.context import FoldContext, display_name
from bnfold.onnx.plan import layout
from bnfold.onnx.plan.plan import Plan
from bnfold.onnx.plan.weights import (
    add_after,
    bias_add_of,
    cast_like,
    layer_constant,
    set_inputs,
    value_dtype,
)


def fold_output(
    ctx: FoldContext, layer: ir.Node, s: np.ndarray, t: np.ndarray, bias_add: ir.Node | None
) -> Plan | str:
    """Plan ``s·(MatMul(A, B) [+ c]) + t`` as ``MatMul(A, B·s) + (c·s + t)``."""
    b = layer_constant(ctx, layer, 1, "right-hand side")
    if isinstance(b, str):
        return b
    if b.ndim != 2:
        return f"MatMul right-hand side has rank {b.ndim}; only a 2-D constant can absorb it"
    channels = b.shape[1]
    if s.shape[0] != channels:
        return f"{s.shape[0]} channels do not match MatMul's {channels} outputs"
    new_b = cast_like(foldmath.scale_output_channels(b, s, axis=1), b, "weight", 1)
    if isinstance(new_b, str):
        return new_b
    bias64, c_index = t, None
    if bias_add is not None:
        found = bias_add_of(ctx, layer)
        if found is None or found[0] is not bias_add:
            return f"the Add after MatMul '{display_name(layer)}' is not its own bias"
        _, c_index, c = found
        if c.ndim > 1 and any(d != 1 for d in c.shape[:-1]):
            return f"bias Add constant of shape {tuple(c.shape)} is not per-feature"
        if c.ndim >= 1 and c.shape[-1] not in (1, channels):
            return f"bias Add constant of shape {tuple(c.shape)} does not match {channels}"
        bias64 = np.broadcast_to(c.astype(np.float64).reshape(-1), (channels,)) * s + t
    new_t = cast_like(bias64, np.zeros(channels, dtype=b.dtype), "bias", None)
    if isinstance(new_t, str):
        return new_t
    b_type = value_dtype(layer.inputs[1])
    set_weight = set_inputs(ctx, layer, {1: (new_b, b_type)})

    def apply() -> ir.Value | None:
        set_weight()
        name = display_name(layer)
        if bias_add is not None and c_index is not None:
            t_val = ctx.new_constant(layer, new_t, f"{name}.bias_bnfold", b_type)
            bias_add.replace_input_with(c_index, t_val)
            return bias_add.outputs[0]
        if not np.any(new_t):
            return None  # a pure scale needs no bias Add
        t_val = ctx.new_constant(layer, new_t, f"{name}.bias_bnfold", b_type)
        return add_after(ctx, layer.outputs[0], t_val)

    path = ["MatMul", "Add"] if bias_add is not None else ["MatMul"]
    return Plan(apply, [display_name(layer)], path)


def fold_input(
    ctx: FoldContext, node: ir.Node, axis: int, s: np.ndarray, t: np.ndarray
) -> Plan | str:
    """Plan ``MatMul(s·A + t, B)`` (per feature on A's last axis) as ``MatMul(A, s·B) + t·B``."""
    name = f"MatMul '{display_name(node)}'"
    a_dims = layout.static_dims(node.inputs[0])
    if a_dims is None:
        return f"cannot prove the rank of {name}'s left input"
    if axis != len(a_dims) - 1:
        return (
            f"the channel axis maps to axis {axis} of {name}'s left input, not its contraction "
            f"axis {len(a_dims) - 1}"
        )
    b = layer_constant(ctx, node, 1, "right-hand side")
    if isinstance(b, str):
        return b
    if b.ndim != 2 or b.shape[0] != s.shape[0]:
        return f"{name} right-hand side of shape {tuple(b.shape)} is not a ({s.shape[0]}, N) matrix"
    b64, extra = foldmath.fold_matrix_input_affine(b, None, s, t, 0)
    new_b = cast_like(b64, b, "weight", 1)  # (K, N): output features on axis 1
    if isinstance(new_b, str):
        return new_b
    b_type = value_dtype(node.inputs[1])
    set_weight = set_inputs(ctx, node, {1: (new_b, b_type)})
    if not np.any(extra):
        return Plan(set_weight, [display_name(node)], ["MatMul"])
    found = bias_add_of(ctx, node)
    if found is not None:
        add, c_index, c = found
        merged = cast_like(
            c.astype(np.float64) + extra,
            np.zeros(np.broadcast_shapes(c.shape, extra.shape), c.dtype),
            "bias",
            None,
        )
        if isinstance(merged, str):
            return merged
        c_type = value_dtype(add.inputs[c_index])

        def apply_merged() -> None:
            set_weight()
            const = ctx.new_constant(add, merged, f"{display_name(node)}.bias_bnfold", c_type)
            add.replace_input_with(c_index, const)

        return Plan(apply_merged, [display_name(node)], ["MatMul", "Add"])
    new_bias = cast_like(extra, np.zeros(extra.shape, b.dtype), "bias", None)
    if isinstance(new_bias, str):
        return new_bias

    def apply() -> None:
        set_weight()
        bias = ctx.new_constant(node, new_bias, f"{display_name(node)}.bias_bnfold", b_type)
        add_after(ctx, node.outputs[0], bias)

    return Plan(apply, [display_name(node)], ["MatMul"])
