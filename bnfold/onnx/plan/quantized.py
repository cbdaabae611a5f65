"""Folding into a layer whose weight is ``DequantizeLinear(W_q, scale, zero_point)``.

``s·(W·x) + t`` with ``W = (W_q − zp)·scale`` per output channel c becomes
``scale'[c] = |s[c]|·scale[c]``: the integer weights stay, except that a channel with
s[c] < 0 is mirrored around its zero point (``q' = 2·zp − q``, refused when that leaves
the integer range, e.g. −128 in int8 with zp = 0). A per-tensor scale becomes per-channel.
The new bias ``s·b + t`` stays float (exact up to float rounding); with ``quantize_bias``
it is re-quantized to int32 at ``x_scale·scale'`` (not bit-exact, so reported).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx_ir as ir

from bnfold.onnx.constants import constant_array, dequantizer, read_dequantize
from bnfold.onnx.context import FoldContext, display_name
from bnfold.onnx.plan.plan import Plan
from bnfold.onnx.uses import is_exclusive

_INT_RANGES = {
    "int8": (-128, 127),
    "uint8": (0, 255),
    "int16": (-32768, 32767),
    "uint16": (0, 65535),
    "int4": (-8, 7),
    "uint4": (0, 15),
}


@dataclasses.dataclass
class QuantizedWeight:
    """A layer weight read through its DequantizeLinear."""

    dq: ir.Node
    q: np.ndarray  # integer weights
    scale: np.ndarray
    zero_point: np.ndarray  # same shape as scale
    axis: int | None  # None: per-tensor


def quantized_weight(layer: ir.Node, index: int = 1) -> QuantizedWeight | str | None:
    """The layer's weight through its DequantizeLinear; None when it is not quantized."""
    value = layer.inputs[index] if index < len(layer.inputs) else None
    dq = dequantizer(value)
    if dq is None:
        return None
    assert value is not None
    if not is_exclusive(value):
        return f"quantized weight '{value.name}' feeds other nodes too"
    read = read_dequantize(dq)
    if isinstance(read, str):
        return read
    q, scale, zp, axis = read
    return QuantizedWeight(dq, q, scale, zp, axis)


def fold_output(
    ctx: FoldContext,
    layer: ir.Node,
    weight: QuantizedWeight,
    s: np.ndarray,
    t: np.ndarray,
    out_axis: int,
    bias: np.ndarray | None,
) -> tuple[Plan, np.ndarray] | str:
    """Plan new scales (and mirrored channels) for ``s·layer(x)``; returns it with ``s·b + t``.

    ``out_axis``: the weight axis of the output channels. The caller installs the bias.
    """
    w = weight
    channels = s.shape[0]
    if w.q.ndim <= out_axis or w.q.shape[out_axis] != channels:
        return f"{channels} channels do not match the quantized weight {tuple(w.q.shape)}"
    if w.axis is not None and w.axis % w.q.ndim != out_axis:
        return f"the weight is quantized along axis {w.axis}, not its output channels"
    dtype = w.q.dtype.name
    if dtype not in _INT_RANGES:
        return f"quantized weight of type {dtype} is not supported"
    lo, hi = _INT_RANGES[dtype]
    scale = np.broadcast_to(w.scale.astype(np.float64).reshape(-1), (channels,))
    zp = np.broadcast_to(w.zero_point.astype(np.int64).reshape(-1), (channels,))
    shape = [1] * w.q.ndim
    shape[out_axis] = channels
    negative = (s < 0).reshape(shape)
    mirrored = 2 * zp.reshape(shape) - w.q.astype(np.int64)
    new_q = np.where(negative, mirrored, w.q.astype(np.int64))
    if np.any(new_q < lo) or np.any(new_q > hi):
        bad = sorted({int(c) for c in np.nonzero((new_q < lo) | (new_q > hi))[out_axis]})
        return (
            f"negative BN scale on channel(s) {bad[:5]} would mirror a weight out of the "
            f"{dtype} range ({lo}…{hi})"
        )
    new_scale = (np.abs(s) * scale).astype(w.scale.dtype)
    if not np.all(np.isfinite(new_scale)) or np.any((new_scale == 0) & (s != 0)):
        return "the folded weight scale is not representable"
    new_zp = zp.astype(w.zero_point.dtype)
    q_changed = bool(np.any(negative))
    folded_bias = s * (0.0 if bias is None else bias.astype(np.float64)) + t

    def apply() -> None:
        name = display_name(layer)
        dq = w.dq
        if q_changed:
            q_val = ctx.new_constant(dq, new_q.astype(w.q.dtype), f"{name}.weight_q_bnfold")
            dq.replace_input_with(0, q_val)
        dq.replace_input_with(1, ctx.new_constant(dq, new_scale, f"{name}.weight_scale_bnfold"))
        if len(dq.inputs) < 3:
            dq.resize_inputs(3)
        dq.replace_input_with(2, ctx.new_constant(dq, new_zp, f"{name}.weight_zp_bnfold"))
        dq.attributes["axis"] = ir.AttrInt64("axis", out_axis)

    return Plan(apply, [display_name(layer)], [layer.op_type]), folded_bias


def input_scale(layer: ir.Node) -> float | None:
    """The per-tensor scale of the layer's quantized data input (``x_scale``), if any."""
    dq = dequantizer(layer.inputs[0])
    scale = constant_array(dq.inputs[1]) if dq is not None and len(dq.inputs) > 1 else None
    if scale is None or scale.size != 1:
        return None
    return float(scale.reshape(-1)[0])


def quantized_bias(
    bias: np.ndarray, x_scale: float, w_scale: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """``bias`` as int32 at ``x_scale·w_scale`` (per channel): (values, scales)."""
    scales = (np.float64(x_scale) * w_scale.astype(np.float64)).astype(np.float32)
    values = np.round(bias / scales.astype(np.float64))
    return np.clip(values, -(2**31), 2**31 - 1).astype(np.int32), scales
