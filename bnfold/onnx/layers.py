"""Linear layers that can absorb a per-channel affine map on their output.

Each adapter separates *check* (return a reason string) from *rewrite* (a prepared
``Rewrite`` that only mutates the graph when applied). The affine map is
``y ↦ s·y + t`` along the layer's feature axis, with s and t in float64.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable

import numpy as np
import onnx_ir as ir

from bnfold import foldmath
from bnfold.onnx.constants import constant_array, is_onnx_op, why_not_constant
from bnfold.onnx.context import FoldContext, display_name

logger = logging.getLogger(__name__)

PRODUCER_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


@dataclasses.dataclass
class Rewrite:
    """A checked, ready-to-apply change. ``apply()`` mutates the graph."""

    apply: Callable[[], ir.Value]  # returns the value that now carries s·y + t
    into: str


def output_rank(node: ir.Node) -> int | None:
    """Rank of a linear layer's output when it can be proven, else None."""
    if is_onnx_op(node, ("Conv", "ConvTranspose")):
        w = node.inputs[1]
        if w is not None and w.shape is not None:
            return len(w.shape)
    if is_onnx_op(node, "Gemm"):
        return 2
    out = node.outputs[0]
    if out.shape is not None:
        return len(out.shape)
    if is_onnx_op(node, "MatMul"):
        a, b = node.inputs[0], node.inputs[1]
        if a is not None and a.shape is not None and b is not None and b.shape is not None:
            ra, rb = len(a.shape), len(b.shape)
            if ra >= 2 and rb == 2:
                return ra
    return None


def feature_axis(node: ir.Node) -> int | None:
    """The output axis carrying the layer's output features (non-negative), if known."""
    if is_onnx_op(node, ("Conv", "ConvTranspose", "Gemm")):
        return 1
    if is_onnx_op(node, "MatMul"):
        rank = output_rank(node)
        return None if rank is None else rank - 1
    return None


def prepare_output_affine(
    ctx: FoldContext,
    layer: ir.Node,
    scale: np.ndarray,
    shift: np.ndarray,
    axis: int,
    bias_add: ir.Node | None = None,
) -> Rewrite | str:
    """Plan folding ``s·y + t`` (per channel along output ``axis``) into ``layer``."""
    if not is_onnx_op(layer, PRODUCER_OPS):
        return f"producer {layer.op_type} is not a foldable linear layer"
    feat = feature_axis(layer)
    if feat is None:
        return f"cannot prove the rank of {layer.op_type} '{display_name(layer)}' output"
    if axis != feat:
        return (
            f"the per-channel axis ({axis}) is not the feature axis ({feat}) of "
            f"{layer.op_type} '{display_name(layer)}'"
        )
    if is_onnx_op(layer, "Conv"):
        return _prepare_conv(ctx, layer, scale, shift, transpose=False)
    if is_onnx_op(layer, "ConvTranspose"):
        return _prepare_conv(ctx, layer, scale, shift, transpose=True)
    if is_onnx_op(layer, "Gemm"):
        return _prepare_gemm(ctx, layer, scale, shift)
    return _prepare_matmul(ctx, layer, scale, shift, bias_add)


def layer_constant(ctx: FoldContext, layer: ir.Node, index: int, what: str) -> np.ndarray | str:
    """Input ``index`` of ``layer`` as a finite float array, or why it cannot be folded."""
    value = layer.inputs[index] if index < len(layer.inputs) else None
    allow = ctx.options.allow_graph_input_params
    arr = constant_array(value, allow_graph_inputs=allow)
    if arr is None:
        return why_not_constant(value, f"{layer.op_type} {what}", allow_graph_inputs=allow)
    if not np.issubdtype(np.dtype(arr.dtype), np.floating) and arr.dtype.name != "bfloat16":
        return f"{layer.op_type} {what} has non-float dtype {arr.dtype}"
    if not foldmath.all_finite(arr):
        return f"{layer.op_type} {what} contains NaN or Inf"
    return arr


def conv_bias(ctx: FoldContext, layer: ir.Node, channels: int) -> np.ndarray | str | None:
    """A Conv/ConvTranspose bias as a length-``channels`` vector, None when absent, or why not.

    torch's dynamo exporter gives a bias-free Conv3d an all-zero bias of the wrong shape
    (the exported model does not run); such a bias is treated as no bias.
    """
    if len(layer.inputs) < 3 or layer.inputs[2] is None:
        return None
    got = layer_constant(ctx, layer, 2, "bias")
    if isinstance(got, str):
        return got
    b = got.reshape(-1)
    if b.shape[0] == channels:
        return b
    if not np.any(b):
        return None
    return f"{layer.op_type} bias has {b.shape[0]} entries, expected {channels}"


def cast_like(
    folded: np.ndarray, like: np.ndarray, what: str, axis: int | tuple[int, ...] | None = 0
) -> np.ndarray | str:
    """float64 results cast to ``like``'s dtype (range-checked), or the refusal reason.

    ``axis``: the output-channel axis of weights (see ``foldmath.cast_back``'s underflow
    rule); None for additive terms (biases, Gemm C), which are never judged for underflow.
    """
    judged = axis is not None and like.shape == folded.shape
    out, reason = foldmath.cast_back(
        folded, like.dtype, like if judged else None, 0 if axis is None else axis
    )
    if reason is not None:
        return f"{what}: {reason}"
    assert out is not None
    return out


def value_dtype(value: ir.Value | None) -> ir.DataType | None:
    """The ONNX dtype of a (constant) value."""
    if value is None:
        return None
    return value.const_value.dtype if value.const_value is not None else value.dtype


def _prepare_conv(
    ctx: FoldContext, layer: ir.Node, s: np.ndarray, t: np.ndarray, *, transpose: bool
) -> Rewrite | str:
    w = layer_constant(ctx, layer, 1, "weight")
    if isinstance(w, str):
        return w
    if w.ndim < 3:
        return f"{layer.op_type} weight has rank {w.ndim}, expected ≥ 3"
    group_attr = layer.attributes.get("group")
    group = group_attr.as_int() if group_attr is not None else 1
    channels = w.shape[1] * group if transpose else w.shape[0]
    if s.shape[0] != channels:
        return f"{s.shape[0]} channels do not match {layer.op_type}'s {channels} outputs"
    has_bias = len(layer.inputs) > 2 and layer.inputs[2] is not None
    b = conv_bias(ctx, layer, channels)
    if isinstance(b, str):
        return b
    if transpose:
        grouped = foldmath.grouped_conv_transpose(
            foldmath.scale_conv_transpose_output(w, s, group), group
        )
        like = foldmath.grouped_conv_transpose(w, group)
        new_w = cast_like(grouped, like, "weight", foldmath.CONV_TRANSPOSE_AXES)
        if not isinstance(new_w, str):
            new_w = new_w.reshape(w.shape)
    else:
        blocked, reason = foldmath.scale_output_channels_cast(w, s, w.dtype)
        new_w = f"weight: {reason}" if reason is not None else blocked  # type: ignore[assignment]
    if isinstance(new_w, str):
        return new_w
    bias_like = b if b is not None else np.zeros(channels, dtype=w.dtype)
    new_b = cast_like(foldmath.fold_output_bias(b, s, t), bias_like, "bias", None)
    if isinstance(new_b, str):
        return new_b
    w_dtype = value_dtype(layer.inputs[1])  # type: ignore[arg-type]
    b_dtype = value_dtype(layer.inputs[2]) if has_bias else w_dtype  # type: ignore[arg-type]

    def apply() -> None:
        name = display_name(layer)
        w_val = ctx.new_constant(layer, new_w, f"{name}.weight_bnfold", w_dtype)
        b_val = ctx.new_constant(layer, new_b, f"{name}.bias_bnfold", b_dtype)
        if len(layer.inputs) < 3:
            layer.resize_inputs(3)
        layer.replace_input_with(1, w_val)
        layer.replace_input_with(2, b_val)
        return layer.outputs[0]

    return Rewrite(apply, display_name(layer))


def _prepare_gemm(ctx: FoldContext, layer: ir.Node, s: np.ndarray, t: np.ndarray) -> Rewrite | str:
    b = layer_constant(ctx, layer, 1, "B")
    if isinstance(b, str):
        return b
    if b.ndim != 2:
        return f"Gemm B has rank {b.ndim}"
    trans_b = layer.attributes.get("transB")
    trans = bool(trans_b.as_int()) if trans_b is not None else False
    out_axis = 0 if trans else 1
    channels = b.shape[out_axis]
    if s.shape[0] != channels:
        return f"{s.shape[0]} channels do not match Gemm's {channels} outputs"
    beta_attr = layer.attributes.get("beta")
    beta = beta_attr.as_float() if beta_attr is not None else 1.0
    has_c = len(layer.inputs) > 2 and layer.inputs[2] is not None
    c: np.ndarray | None = None
    if has_c:
        got = layer_constant(ctx, layer, 2, "C")
        if isinstance(got, str):
            return got
        c = got
        if c.ndim > 2 or (c.ndim >= 1 and c.shape[-1] not in (1, channels)):
            return f"Gemm C of shape {tuple(c.shape)} does not broadcast to {channels} outputs"
    new_b = cast_like(foldmath.scale_output_channels(b, s, axis=out_axis), b, "B", out_axis)
    if isinstance(new_b, str):
        return new_b
    if c is None:
        c64 = t.copy()
        c_like = np.zeros(channels, dtype=b.dtype)
    else:
        c64 = np.float64(beta) * c.astype(np.float64) * s + t
        c_like = c if c.shape == c64.shape else np.zeros(c64.shape, dtype=c.dtype)
    new_c = cast_like(c64, c_like, "C", None)
    if isinstance(new_c, str):
        return new_c
    b_dtype = value_dtype(layer.inputs[1])  # type: ignore[arg-type]
    c_dtype = value_dtype(layer.inputs[2]) if has_c else b_dtype  # type: ignore[arg-type]

    def apply() -> None:
        name = display_name(layer)
        b_val = ctx.new_constant(layer, new_b, f"{name}.B_bnfold", b_dtype)
        c_val = ctx.new_constant(layer, new_c, f"{name}.C_bnfold", c_dtype)
        if len(layer.inputs) < 3:
            layer.resize_inputs(3)
        layer.replace_input_with(1, b_val)
        layer.replace_input_with(2, c_val)
        layer.attributes["beta"] = ir.AttrFloat32("beta", 1.0)
        return layer.outputs[0]

    return Rewrite(apply, display_name(layer))


def matmul_bias_add(ctx: FoldContext, value: ir.Value) -> tuple[ir.Node, ir.Node] | None:
    """(MatMul, Add) when ``value`` is ``Add(MatMul(A, B), c)`` with c a constant."""
    add = value.producer()
    if add is None or not is_onnx_op(add, "Add") or len(add.inputs) != 2:
        return None
    for i in (0, 1):
        x, c = add.inputs[i], add.inputs[1 - i]
        mm = x.producer() if x is not None else None
        if mm is None or not is_onnx_op(mm, "MatMul"):
            continue
        if constant_array(c, allow_graph_inputs=ctx.options.allow_graph_input_params) is None:
            continue
        return mm, add
    return None


def _prepare_matmul(
    ctx: FoldContext,
    layer: ir.Node,
    s: np.ndarray,
    t: np.ndarray,
    bias_add: ir.Node | None = None,
) -> Rewrite | str:
    """MatMul(A, B) [+ c] → MatMul(A, B·s) + (c·s + t)."""
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
    c_index = None
    bias64 = t
    if bias_add is not None:
        c_index = 0 if bias_add.inputs[1].producer() is layer else 1  # type: ignore[union-attr]
        c = constant_array(bias_add.inputs[c_index], allow_graph_inputs=True)
        assert c is not None
        if c.ndim > 1 and any(d != 1 for d in c.shape[:-1]):
            return f"bias Add constant of shape {tuple(c.shape)} is not per-feature"
        if c.ndim >= 1 and c.shape[-1] not in (1, channels):
            return f"bias Add constant of shape {tuple(c.shape)} does not match {channels}"
        bias64 = np.broadcast_to(c.astype(np.float64).reshape(-1), (channels,)) * s + t
    new_t = cast_like(bias64, np.zeros(channels, dtype=b.dtype), "bias", None)
    if isinstance(new_t, str):
        return new_t
    b_dtype = value_dtype(layer.inputs[1])  # type: ignore[arg-type]

    def apply() -> ir.Value:
        name = display_name(layer)
        b_val = ctx.new_constant(layer, new_b, f"{name}.B_bnfold", b_dtype)
        layer.replace_input_with(1, b_val)
        if bias_add is not None and c_index is not None:
            t_val = ctx.new_constant(layer, new_t, f"{name}.bias_bnfold", b_dtype)
            bias_add.replace_input_with(c_index, t_val)
            return bias_add.outputs[0]
        out = layer.outputs[0]
        if not np.any(new_t):
            return out  # a pure scale needs no bias Add
        t_val = ctx.new_constant(layer, new_t, f"{name}.bias_bnfold", b_dtype)
        add = ir.Node("", "Add", inputs=[out, t_val], name=ctx.unique_name(f"{name}_bias"))
        add.outputs[0].name = ctx.unique_name(f"{out.name}_biased")
        add.outputs[0].type = out.type
        add.outputs[0].shape = out.shape
        assert layer.graph is not None
        layer.graph.insert_after(layer, add)
        return add.outputs[0]

    return Rewrite(apply, display_name(layer))
