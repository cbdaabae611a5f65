"""Output-side folds into Conv / ConvTranspose (one group) / Gemm with a quantized weight.

The weight stays quantized (``quantized.fold_output``); the new bias ``s·b + t`` is set as a
float constant, or re-quantized to int32 behind a new DequantizeLinear with the
``quantize_bias`` option when the layer's input is quantized per tensor.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx_ir as ir

from bnfold.onnx.constants import constant_array, dequantized, is_onnx_op
from bnfold.onnx.context import FoldContext, display_name
from bnfold.onnx.plan import quantized
from bnfold.onnx.plan.plan import Plan


def fold_output(
    ctx: FoldContext,
    layer: ir.Node,
    weight: quantized.QuantizedWeight,
    s: np.ndarray,
    t: np.ndarray,
) -> Plan | str:
    """Plan ``s·layer(x) + t`` for a layer whose weight is behind a DequantizeLinear."""
    name = f"{layer.op_type} '{display_name(layer)}'"
    if is_onnx_op(layer, "Conv"):
        out_axis, bias_index = 0, 2
    elif is_onnx_op(layer, "ConvTranspose") and layer.attributes.get_int("group", 1) == 1:
        out_axis, bias_index = 1, 2
    elif is_onnx_op(layer, "Gemm"):
        out_axis, bias_index = (0 if layer.attributes.get_int("transB", 0) else 1), 2
    else:
        return f"{name}: folding into its quantized weight is not supported"
    bias = _bias(ctx, layer, bias_index, s.shape[0])
    if isinstance(bias, str):
        return bias
    planned = quantized.fold_output(ctx, layer, weight, s, t, out_axis, bias)
    if isinstance(planned, str):
        return planned
    plan, new_bias = planned
    set_bias = _bias_setter(ctx, layer, bias_index, new_bias, weight, s)
    if isinstance(set_bias, str):
        return set_bias

    def apply() -> None:
        plan.apply()
        set_bias()
        if is_onnx_op(layer, "Gemm"):
            layer.attributes["beta"] = ir.AttrFloat32("beta", 1.0)

    return Plan(apply, plan.into, [f"{layer.op_type}(quantized weight)"])


def _bias(ctx: FoldContext, layer: ir.Node, index: int, channels: int) -> np.ndarray | str | None:
    """The layer's bias as float64 per channel (read through a DequantizeLinear), or None."""
    value = layer.inputs[index] if index < len(layer.inputs) else None
    if value is None:
        return None
    allow = ctx.options.allow_graph_input_params
    arr = constant_array(value, allow_graph_inputs=allow)
    if arr is None:
        arr = dequantized(value)
    if arr is None:
        return f"{layer.op_type} bias '{value.name}' is not a constant"
    flat = np.asarray(arr, dtype=np.float64).reshape(-1)
    if is_onnx_op(layer, "Gemm"):
        flat = flat * layer.attributes.get_float("beta", 1.0)
    if flat.size == 1:
        return np.full(channels, flat[0])
    if flat.size != channels:
        if not np.any(flat):
            return None  # the dynamo exporter's all-zero bias of the wrong shape
        return f"{layer.op_type} bias of shape {tuple(arr.shape)} is not per output channel"
    return flat


def _bias_setter(
    ctx: FoldContext,
    layer: ir.Node,
    index: int,
    bias: np.ndarray,
    weight: quantized.QuantizedWeight,
    s: np.ndarray,
) -> Callable[[], None] | str:
    """A function installing the new bias: float, or int32 behind a DequantizeLinear."""
    name = display_name(layer)
    out = layer.outputs[0]
    float_dtype = out.dtype.numpy() if out.dtype is not None else np.float32
    if not ctx.options.quantize_bias:
        values = bias.astype(float_dtype)

        def set_float() -> None:
            if len(layer.inputs) <= index:
                layer.resize_inputs(index + 1)
            layer.replace_input_with(index, ctx.new_constant(layer, values, f"{name}.bias_bnfold"))

        return set_float
    x_scale = quantized.input_scale(layer)
    if x_scale is None:
        return f"{name}: --quantize-bias needs a per-tensor quantized input"
    w_scale = np.abs(s) * np.broadcast_to(weight.scale.astype(np.float64).reshape(-1), s.shape)
    q_bias, scales = quantized.quantized_bias(bias, x_scale, w_scale)

    def set_quantized() -> None:
        graph = layer.graph
        assert graph is not None
        q_val = ctx.new_constant(layer, q_bias, f"{name}.bias_q_bnfold")
        s_val = ctx.new_constant(layer, scales, f"{name}.bias_scale_bnfold")
        zp_val = ctx.new_constant(layer, np.zeros_like(q_bias), f"{name}.bias_zp_bnfold")
        dq = ir.Node(
            "",
            "DequantizeLinear",
            inputs=[q_val, s_val, zp_val],
            attributes=[ir.AttrInt64("axis", 0)],
            name=ctx.unique_name(f"{name}_bias_dq"),
        )
        dq.outputs[0].name = ctx.unique_name(f"{name}.bias_bnfold")
        graph.insert_before(layer, dq)
        if len(layer.inputs) <= index:
            layer.resize_inputs(index + 1)
        layer.replace_input_with(index, dq.outputs[0])
        ctx.report.warn(f"bias of {name} re-quantized to int32 (--quantize-bias): not bit-exact")

    return set_quantized
