"""Input-side folds into one linear layer: ``L(s·x + t) = L'(x)``.

Conv: W' = W·s over input channels, b' = b + Σ W·t — exact only without padding
(padding inserts zeros, not t). Gemm/MatMul: B' = s·B over input rows, bias + α·(t·B).
Each planner checks everything first and returns a ``Plan`` or the reason it cannot.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np
import onnx_ir as ir

from bnfold import foldmath
from bnfold.onnx import layout
from bnfold.onnx.constants import constant_array, is_onnx_op
from bnfold.onnx.context import FoldContext, display_name
from bnfold.onnx.layers import cast_like, conv_bias, layer_constant, value_dtype
from bnfold.onnx.producers import Plan
from bnfold.onnx.uses import content_uses

logger = logging.getLogger(__name__)

CONSUMER_OPS = ("Conv", "Gemm", "MatMul")


def plan_layer_input(
    ctx: FoldContext, node: ir.Node, axis: int, scale: np.ndarray, shift: np.ndarray
) -> Plan | str:
    """Plan folding ``s·x + t`` (along ``axis`` of the data input) into a linear layer."""
    if is_onnx_op(node, "Conv"):
        return _plan_conv(ctx, node, axis, scale, shift)
    if is_onnx_op(node, "Gemm"):
        return _plan_gemm(ctx, node, axis, scale, shift)
    if is_onnx_op(node, "MatMul"):
        return _plan_matmul(ctx, node, axis, scale, shift)
    return f"{node.op_type} '{display_name(node)}' is not a linear layer"


def padding_of(node: ir.Node) -> tuple[str, list[int]]:
    """A Conv's or pooling op's ``(auto_pad mode, explicit pads)``."""
    auto_pad = node.attributes.get("auto_pad")
    mode = auto_pad.as_string() if auto_pad is not None else "NOTSET"
    pads = node.attributes.get("pads")
    return mode, [int(p) for p in pads.as_ints()] if pads is not None else []


def conv_padding_reason(node: ir.Node, kernel: tuple[int, ...]) -> str | None:
    """None when the Conv reads no padding (so the shift t reaches every output equally)."""
    name = f"Conv '{display_name(node)}'"
    mode, pads = padding_of(node)
    if mode in ("SAME_UPPER", "SAME_LOWER"):
        if all(k == 1 for k in kernel):
            return None
        return f"{name} pads its input (auto_pad={mode}); padding inserts zeros, not the BN shift"
    if mode == "VALID":
        return None
    if any(pads):
        return f"{name} has padding {pads}; padding inserts zeros, not the BN shift"
    return None


def _plan_conv(
    ctx: FoldContext, node: ir.Node, axis: int, s: np.ndarray, t: np.ndarray
) -> Plan | str:
    name = f"Conv '{display_name(node)}'"
    if axis != 1:
        return f"the channel axis maps to axis {axis} of {name}'s input, not its channels"
    w = layer_constant(ctx, node, 1, "weight")
    if isinstance(w, str):
        return w
    if w.ndim < 3:
        return f"{name} weight has rank {w.ndim}"
    reason = conv_padding_reason(node, tuple(int(k) for k in w.shape[2:]))
    if reason is not None:
        return reason
    group_attr = node.attributes.get("group")
    group = group_attr.as_int() if group_attr is not None else 1
    if w.shape[1] * group != s.shape[0] or w.shape[0] % group:
        return f"{s.shape[0]} channels do not match {name}'s {w.shape[1] * group} inputs"
    b = conv_bias(ctx, node, w.shape[0])
    if isinstance(b, str):
        return b
    w64, b64 = foldmath.fold_conv_input_affine(w, b, s, t, group)
    new_w = cast_like(w64, w, "weight")
    new_b = cast_like(b64, b if b is not None else np.zeros(w.shape[0], w.dtype), "bias")
    if isinstance(new_w, str) or isinstance(new_b, str):
        return new_w if isinstance(new_w, str) else new_b  # type: ignore[return-value]
    w_type = value_dtype(node.inputs[1])
    b_type = value_dtype(node.inputs[2]) if b is not None else w_type
    return Plan(
        _set_inputs(ctx, node, {1: (new_w, w_type), 2: (new_b, b_type)}),
        [display_name(node)],
        ["Conv"],
    )


def _plan_gemm(
    ctx: FoldContext, node: ir.Node, axis: int, s: np.ndarray, t: np.ndarray
) -> Plan | str:
    name = f"Gemm '{display_name(node)}'"
    trans_a = node.attributes.get("transA")
    feat = 0 if trans_a is not None and trans_a.as_int() else 1
    if axis != feat:
        return f"the channel axis maps to axis {axis} of {name}'s A, not its features ({feat})"
    b = layer_constant(ctx, node, 1, "B")
    if isinstance(b, str):
        return b
    trans_b = node.attributes.get("transB")
    in_axis = 1 if trans_b is not None and trans_b.as_int() else 0
    if b.ndim != 2 or b.shape[in_axis] != s.shape[0]:
        return f"{s.shape[0]} channels do not match {name}'s B of shape {tuple(b.shape)}"
    alpha_attr, beta_attr = node.attributes.get("alpha"), node.attributes.get("beta")
    alpha = alpha_attr.as_float() if alpha_attr is not None else 1.0
    beta = beta_attr.as_float() if beta_attr is not None else 1.0
    b64, extra = foldmath.fold_matrix_input_affine(b, None, s, t, in_axis)
    has_c = len(node.inputs) > 2 and node.inputs[2] is not None
    c = None
    if has_c:
        got = layer_constant(ctx, node, 2, "C")
        if isinstance(got, str):
            return got
        c = got
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
    b_type = value_dtype(node.inputs[1])
    c_type = value_dtype(node.inputs[2]) if has_c else b_type
    set_inputs = _set_inputs(ctx, node, {1: (new_b, b_type), 2: (new_c, c_type)})

    def apply() -> None:
        set_inputs()
        node.attributes["beta"] = ir.AttrFloat32("beta", 1.0)

    return Plan(apply, [display_name(node)], ["Gemm"])


def _plan_matmul(
    ctx: FoldContext, node: ir.Node, axis: int, s: np.ndarray, t: np.ndarray
) -> Plan | str:
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
    set_weight = _set_inputs(ctx, node, {1: (new_b, b_type)})
    if not np.any(extra):
        return Plan(set_weight, [display_name(node)], ["MatMul"])
    bias_add = _bias_add(ctx, node)
    if bias_add is not None:
        add, c_index, c = bias_add
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


def _bias_add(ctx: FoldContext, node: ir.Node) -> tuple[ir.Node, int, np.ndarray] | None:
    """(Add, constant index, constant) when the MatMul's only consumer adds a float constant."""
    out = node.outputs[0]
    uses = content_uses(out)
    if out.is_graph_output() or len(uses) != 1:
        return None
    add, index = uses[0]
    if not is_onnx_op(add, "Add") or len(add.inputs) != 2:
        return None
    c_index = 1 - index
    c = constant_array(add.inputs[c_index], allow_graph_inputs=ctx.options.allow_graph_input_params)
    if c is None or not (np.issubdtype(c.dtype, np.floating) or c.dtype.name == "bfloat16"):
        return None
    return add, c_index, c


def _set_inputs(
    ctx: FoldContext, node: ir.Node, arrays: dict[int, tuple[np.ndarray, ir.DataType | None]]
) -> Callable[[], None]:
    def apply() -> None:
        base = display_name(node)
        if len(node.inputs) < max(arrays) + 1:
            node.resize_inputs(max(arrays) + 1)
        for index, (array, dtype) in arrays.items():
            what = {1: "weight", 2: "bias"}.get(index, str(index))
            const = ctx.new_constant(node, array, f"{base}.{what}_bnfold", dtype)
            node.replace_input_with(index, const)

    return apply


def add_after(ctx: FoldContext, value: ir.Value, bias: ir.Value) -> ir.Value:
    """Insert ``value + bias`` and route every consumer of ``value`` (outputs too) to it."""
    producer = value.producer()
    assert producer is not None and producer.graph is not None
    users = list(value.uses())
    add = ir.Node("", "Add", inputs=[value, bias], name=ctx.unique_name(f"{producer.name}_bias"))
    out = add.outputs[0]
    out.name = ctx.unique_name(f"{value.name}_biased")
    out.type, out.shape = value.type, value.shape
    producer.graph.insert_after(producer, add)
    for user, index in users:
        user.replace_input_with(index, out)
    graph = producer.graph
    outputs = graph.outputs
    for i, o in enumerate(outputs):
        if o is value:
            keep = value.name
            value.name = ctx.unique_name(f"{keep}_unbiased")
            out.name = keep
            outputs[i] = out
    return out
