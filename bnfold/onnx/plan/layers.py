"""The linear layers an affine map can fold into, one adapter per kind, and what they share.

``plan_layer_output(ctx, layer, s, t, axis)`` plans ``s·layer(x) + t``;
``plan_layer_input(ctx, layer, axis, s, t)`` plans ``layer(s·x + t)``. Each checks
everything first and returns a ``Plan`` or the reason it cannot.
"""

from __future__ import annotations

from types import ModuleType

import numpy as np
import onnx_ir as ir

from bnfold.onnx.constants import constant_array, is_onnx_op
from bnfold.onnx.context import FoldContext, display_name
from bnfold.onnx.plan import conv, conv_transpose, gemm, matmul, quantized, quantized_layers
from bnfold.onnx.plan.plan import Plan

ADAPTERS: dict[str, ModuleType] = {
    "Conv": conv,
    "ConvTranspose": conv_transpose,
    "Gemm": gemm,
    "MatMul": matmul,
}
PRODUCER_OPS = tuple(ADAPTERS)
CONSUMER_OPS = tuple(op for op, a in ADAPTERS.items() if a.fold_input is not None)


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


def output_channels(layer: ir.Node) -> int | None:
    """How many output features a linear layer with constant weights produces."""
    w = layer.inputs[1] if len(layer.inputs) > 1 else None
    arr = constant_array(w, allow_graph_inputs=True)
    if arr is None or arr.ndim < 2:
        return None
    if is_onnx_op(layer, "Conv"):
        return int(arr.shape[0])
    if is_onnx_op(layer, "ConvTranspose"):
        return int(arr.shape[1]) * layer.attributes.get_int("group", 1)
    if is_onnx_op(layer, "Gemm"):
        return int(arr.shape[0] if layer.attributes.get_int("transB", 0) else arr.shape[1])
    return int(arr.shape[1])


def plan_layer_output(
    ctx: FoldContext,
    layer: ir.Node,
    scale: np.ndarray,
    shift: np.ndarray,
    axis: int,
    bias_add: ir.Node | None = None,
) -> Plan | str:
    """Plan folding ``s·y + t`` (per channel along output ``axis``) into ``layer``.

    ``bias_add``: the ``Add(MatMul, c)`` whose output carries the map, for a biased MatMul.
    """
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
    weight = quantized.quantized_weight(layer)
    if isinstance(weight, str):
        return weight
    if weight is not None:
        return quantized_layers.fold_output(ctx, layer, weight, scale, shift)
    return ADAPTERS[layer.op_type].fold_output(ctx, layer, scale, shift, bias_add)


def plan_layer_input(
    ctx: FoldContext, node: ir.Node, axis: int, scale: np.ndarray, shift: np.ndarray
) -> Plan | str:
    """Plan folding ``s·x + t`` (along ``axis`` of the data input) into a linear layer."""
    if not is_onnx_op(node, CONSUMER_OPS):
        return f"{node.op_type} '{display_name(node)}' is not a linear layer"
    return ADAPTERS[node.op_type].fold_input(ctx, node, axis, scale, shift)
