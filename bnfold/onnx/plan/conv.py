"""Conv adapter: ``s·Conv(x) + t`` (output side) and ``Conv(s·x + t)`` (input side, no padding).

Weights ``(C_out, C_in/g, k…)``. Output side: W' = W·s over axis 0, b' = b·s + t.
Input side: W' = W·s over input channels, b' = b + Σ W·t — exact only when the Conv
reads no padding (``patterns.input_padding_reason``).
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from bnfold import foldmath, patterns
from bnfold.onnx.context import FoldContext, display_name
from bnfold.onnx.plan.plan import Plan
from bnfold.onnx.plan.weights import (
    cast_like,
    conv_bias,
    input_dtype,
    layer_constant,
    padding_of,
    set_inputs,
    value_dtype,
)


def fold_output(
    ctx: FoldContext, layer: ir.Node, s: np.ndarray, t: np.ndarray, bias_add: ir.Node | None
) -> Plan | str:
    """Plan ``s·Conv(x) + t`` as one Conv."""
    del bias_add  # a Conv carries its own bias
    # No NaN scan here: the scaling below reads W anyway and refuses a non-finite result.
    w = layer_constant(ctx, layer, 1, "weight", scan=False)
    if isinstance(w, str):
        return w
    if w.ndim < 3:
        return f"Conv weight has rank {w.ndim}, expected ≥ 3"
    channels = w.shape[0]
    if s.shape[0] != channels:
        return f"{s.shape[0]} channels do not match Conv's {channels} outputs"
    b = conv_bias(ctx, layer, channels)
    if isinstance(b, str):
        return b
    blocked, reason = foldmath.scale_output_channels_cast(w, s, w.dtype)
    if reason is not None or blocked is None:
        if not foldmath.all_finite(w):  # the rare path: name the cause, not its effect
            return "Conv weight contains NaN or Inf"
        return f"weight: {reason}"
    return set_output_fold(ctx, layer, blocked, b, s, t, w.dtype)


def fold_input(
    ctx: FoldContext, node: ir.Node, axis: int, s: np.ndarray, t: np.ndarray
) -> Plan | str:
    """Plan ``Conv(s·x + t)`` (per channel along ``axis`` of the data input) as one Conv."""
    name = f"Conv '{display_name(node)}'"
    if axis != 1:
        return f"the channel axis maps to axis {axis} of {name}'s input, not its channels"
    w = layer_constant(ctx, node, 1, "weight")
    if isinstance(w, str):
        return w
    if w.ndim < 3:
        return f"{name} weight has rank {w.ndim}"
    mode, pads = padding_of(node)
    why = patterns.input_padding_reason([int(k) for k in w.shape[2:]], mode, pads)
    if why is not None:
        return f"{name} {why}"
    group = node.attributes.get_int("group", 1)
    if w.shape[1] * group != s.shape[0] or w.shape[0] % group:
        return f"{s.shape[0]} channels do not match {name}'s {w.shape[1] * group} inputs"
    b = conv_bias(ctx, node, w.shape[0])
    if isinstance(b, str):
        return b
    w64, b64 = foldmath.fold_conv_input_affine(w, b, s, t, group)
    new_w = cast_like(w64, w, "weight")
    new_b = cast_like(b64, b if b is not None else np.zeros(w.shape[0], w.dtype), "bias", None)
    if isinstance(new_w, str) or isinstance(new_b, str):
        return new_w if isinstance(new_w, str) else new_b  # type: ignore[return-value]
    w_type = value_dtype(node.inputs[1])
    arrays = {1: (new_w, w_type), 2: (new_b, input_dtype(node, 2, w_type))}
    return Plan(set_inputs(ctx, node, arrays), [display_name(node)], ["Conv"])


def set_output_fold(
    ctx: FoldContext,
    layer: ir.Node,
    new_w: np.ndarray,
    b: np.ndarray | None,
    s: np.ndarray,
    t: np.ndarray,
    dtype: np.dtype,
) -> Plan | str:
    """Output side of Conv/ConvTranspose: bias b' = b·s + t cast back; a plan setting W' and b'."""
    channels = s.shape[0]
    bias_like = b if b is not None else np.zeros(channels, dtype=dtype)
    new_b = cast_like(foldmath.fold_output_bias(b, s, t), bias_like, "bias", None)
    if isinstance(new_b, str):
        return new_b
    w_type = value_dtype(layer.inputs[1])
    arrays = {1: (new_w, w_type), 2: (new_b, input_dtype(layer, 2, w_type))}
    return Plan(set_inputs(ctx, layer, arrays), [display_name(layer)], [layer.op_type])


def identity_tap(conv: ir.Node, kernel: tuple[int, ...]) -> tuple[int, ...] | None:
    """Kernel index of ``conv`` that reads the input pixel at the output position, if any.

    See ``patterns.identity_tap``: adding ``v`` there adds ``v·x`` to the Conv's output.
    """
    n = len(kernel)
    dilations = list(conv.attributes.get_ints("dilations", [1] * n))
    mode, pads = padding_of(conv)
    begins, ends = patterns.pad_extents(kernel, dilations, mode, pads)
    strides = conv.attributes.get_ints("strides", [1] * n)
    return patterns.identity_tap(kernel, strides, dilations, begins, ends)
