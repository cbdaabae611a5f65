"""Planning a per-channel affine map on a layer's *input* into that layer's weights.

BN before a linear layer: ``L(s·x + t) = L'(x)`` (the per-layer math is in
the layer adapters, ``layers.py``). Between the BN and the layer, layout ops are walked through when
they map BN's channel axis onto the layer's input-feature axis, and pooling ops when the
map commutes with them (averages always, maxima when every s > 0; see ``pooling.py``).
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from bnfold.onnx.constants import is_onnx_op
from bnfold.onnx.context import FoldContext, display_name
from bnfold.onnx.plan import layout, pooling
from bnfold.onnx.plan.layers import CONSUMER_OPS, plan_layer_input
from bnfold.onnx.plan.plan import Plan, combined
from bnfold.onnx.plan.producers import MAX_DEPTH, op_counts
from bnfold.onnx.uses import content_uses


def plan_input_affine(
    ctx: FoldContext,
    value: ir.Value,
    axis: int,
    scale: np.ndarray,
    shift: np.ndarray,
    depth: int = 0,
) -> Plan | str:
    """Plan absorbing ``s·value + t`` (along ``axis``) into every layer that reads ``value``.

    With several readers, each must absorb the map (each gets its own folded weights);
    one reader that cannot is the reason the BN stays.
    """
    if depth > MAX_DEPTH:
        return "too many layout ops between the BN and the next layer"
    if value.is_graph_output():
        return f"'{value.name}' is a graph output"
    uses = content_uses(value)
    if not uses:
        return f"'{value.name}' has no consumer"
    plans: list[Plan] = []
    for node, index in uses:
        plan = _plan_use(ctx, node, index, axis, scale, shift, depth)
        if isinstance(plan, str):
            if len(uses) == 1:
                return plan
            return f"'{value.name}' feeds {len(uses)} nodes ({op_counts(uses)}); {plan}"
        plans.append(plan)
    if len(plans) == 1:
        return plans[0]

    return combined(plans, "+".join(sorted({"→".join(p.path) for p in plans})))


def _plan_use(
    ctx: FoldContext,
    node: ir.Node,
    index: int,
    axis: int,
    scale: np.ndarray,
    shift: np.ndarray,
    depth: int,
) -> Plan | str:
    name = f"{node.op_type} '{display_name(node)}'"
    through = layout.is_layout_op(node) or pooling.is_pooling_op(node)
    if through and index == 0:
        return _plan_through(ctx, node, axis, scale, shift, depth)
    if not is_onnx_op(node, CONSUMER_OPS):
        return f"{name} is not a linear layer"
    if index != 0:
        return f"the BN output is input {index} (not the data input) of {name}"
    return plan_layer_input(ctx, node, axis, scale, shift)


def _plan_through(
    ctx: FoldContext,
    node: ir.Node,
    axis: int,
    scale: np.ndarray,
    shift: np.ndarray,
    depth: int,
) -> Plan | str:
    """Map the channel axis through a layout or pooling op and plan its output's readers."""
    if pooling.is_pooling_op(node):
        mappings = pooling.map_forward(ctx, node, axis, scale)
    else:
        mappings = layout.map_forward(node, axis, scale.shape[0])
    if isinstance(mappings, str):
        return mappings
    reasons = []
    for new_axis, idx in mappings:
        plan = plan_input_affine(ctx, node.outputs[0], new_axis, scale[idx], shift[idx], depth + 1)
        if isinstance(plan, Plan):
            plan.path.insert(0, node.op_type)
            return plan
        reasons.append(plan)
    return f"through {node.op_type} '{display_name(node)}': {reasons[0]}"
