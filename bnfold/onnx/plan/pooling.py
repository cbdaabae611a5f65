"""Moving a per-channel affine map forward through pooling ops (BN → pool → linear layer).

``y = s·x + t`` per channel commutes with every average over non-channel axes:
``mean(s·x + t) = s·mean(x) + t``. So GlobalAveragePool, ReduceMean over axes without the
channel axis, and an AveragePool whose windows average input elements only pass the map
through unchanged. A maximum commutes only with an increasing map: ``max(s·x + t) =
s·max(x) + t`` needs every s > 0 (GlobalMaxPool, MaxPool with its Indices output unused).

Padding: an AveragePool that counts padded zeros (count_include_pad=1) averages in zeros,
not the shift t, and is refused. Padding that is never counted (count_include_pad=0) or
never selected (MaxPool) is harmless as long as every window holds at least one input
element, which holds for any stride when dilation is 1 and each pad is smaller than the
kernel (auto_pad SAME with dilation 1 always pads less than the kernel). ceil_mode=1 is
refused: its extra windows can start in the padding or past the input.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from bnfold import patterns
from bnfold.onnx.constants import constant_array, is_onnx_op, why_not_constant
from bnfold.onnx.context import FoldContext, display_name
from bnfold.onnx.plan.layout import Mapping, static_dims
from bnfold.onnx.plan.weights import padding_of

POOLING_OPS = ("GlobalAveragePool", "GlobalMaxPool", "AveragePool", "MaxPool", "ReduceMean")
MAX_OPS = ("GlobalMaxPool", "MaxPool")
WINDOW_OPS = ("AveragePool", "MaxPool")


def is_pooling_op(node: ir.Node) -> bool:
    """True for the pooling ops a per-channel affine map may commute with."""
    return is_onnx_op(node, POOLING_OPS)


def map_forward(
    ctx: FoldContext, node: ir.Node, axis: int, scale: np.ndarray
) -> list[Mapping] | str:
    """The output axis carrying ``s·x + t`` known on input ``axis``, or why it does not pass."""
    name = f"{node.op_type} '{display_name(node)}'"
    same = np.arange(scale.shape[0])
    if is_onnx_op(node, "ReduceMean"):
        new_axis = _reduce_mean_axis(ctx, node, axis, name)
        return new_axis if isinstance(new_axis, str) else [(new_axis, same)]
    if is_onnx_op(node, MAX_OPS) and not np.all(scale > 0):
        bad = int(np.count_nonzero(~(scale > 0)))
        return (
            f"{name} takes a maximum, which commutes with the BN only when every scale is "
            f"positive ({bad} of {scale.shape[0]} channels have γ ≤ 0)"
        )
    if axis > 1:
        return f"{name} pools axis {axis}, which carries the BN channels"
    dims = static_dims(node.inputs[0])
    if dims is not None and len(dims) < 3:
        return f"{name} input has rank {len(dims)}; there are no spatial axes to pool"
    if is_onnx_op(node, "MaxPool") and _indices_used(node):
        return f"{name} Indices output is used; it depends on the BN's sign and order"
    if is_onnx_op(node, WINDOW_OPS):
        reason = window_reason(node, name)
        if reason is not None:
            return reason
    return [(axis, same)]


def window_reason(node: ir.Node, name: str) -> str | None:
    """None when every AveragePool/MaxPool window pools input elements only (padding unused)."""
    if node.attributes.get_int("ceil_mode", 0):
        return f"{name} has ceil_mode=1; its extra windows can start in the padding"
    mode, pads = padding_of(node)
    if mode == "VALID" or (mode == "NOTSET" and not any(pads)):
        return None
    padding = f"auto_pad={mode}" if mode != "NOTSET" else f"padding {pads}"
    counted = node.attributes.get_int("count_include_pad", 0)
    if is_onnx_op(node, "AveragePool") and counted:
        return (
            f"{name} has {padding} counted in its averages (count_include_pad=1); padding "
            "inserts zeros, not the BN shift"
        )
    if any(d != 1 for d in node.attributes.get_ints("dilations", [])):
        return f"{name} has {padding} and dilations; a window might hold padding only"
    kernel_attr = node.attributes.get("kernel_shape")
    if kernel_attr is None:
        return f"{name} has no kernel_shape"
    kernel = [int(k) for k in kernel_attr.as_ints()]
    if mode == "NOTSET" and any(p >= kernel[i % len(kernel)] for i, p in enumerate(pads)):
        return f"{name} has {padding} not smaller than its kernel {kernel}"
    return None


def _indices_used(node: ir.Node) -> bool:
    if len(node.outputs) < 2 or node.outputs[1] is None:
        return False
    indices = node.outputs[1]
    return bool(indices.uses()) or indices.is_graph_output()


def _reduce_mean_axis(ctx: FoldContext, node: ir.Node, axis: int, name: str) -> int | str:
    """ReduceMean keeps the channel axis (maybe renumbered) unless it averages over it."""
    axes_input = node.inputs[1] if len(node.inputs) > 1 else None
    if axes_input is not None:
        allow = ctx.options.allow_graph_input_params
        arr = constant_array(axes_input, allow_graph_inputs=allow)
        if arr is None:
            return why_not_constant(axes_input, f"{name} axes", allow_graph_inputs=allow)
        axes = [int(a) for a in np.asarray(arr).reshape(-1)]
    else:
        axes = [int(a) for a in node.attributes.get_ints("axes", [])]
    if not axes:
        if node.attributes.get_int("noop_with_empty_axes", 0):
            return axis  # the identity
        return f"{name} averages over every axis, the channel axis {axis} included"
    dims = static_dims(node.inputs[0])
    if dims is None and any(a < 0 for a in axes):
        return f"{name}: input rank unknown, cannot resolve axes {axes}"
    rank = len(dims) if dims is not None else 0
    resolved = {a + rank if a < 0 else a for a in axes}
    moved = patterns.axis_after_reduce(axis, resolved, bool(node.attributes.get_int("keepdims", 1)))
    if moved is None:
        return f"{name} averages over axis {axis}, which carries the BN channels"
    return moved
