"""FoldChannelAffinePass: per-channel constant Add/Sub/Mul/Div after a linear layer.

Covers bias Adds between a layer and its BN (ConvTranspose → Add → BN), decomposed BN
(FrozenBatchNorm2d exports: ``x·scale + bias``) and converters that split BN into Mul/Add.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx_ir as ir

from bnfold.onnx.constants import constant_array, is_onnx_op
from bnfold.onnx.passes.base import BnfoldPass
from bnfold.onnx.plan.channel_affine import per_channel_vector
from bnfold.onnx.plan.layers import (
    PRODUCER_OPS,
    feature_axis,
    output_channels,
    output_rank,
    plan_layer_output,
)
from bnfold.onnx.plan.plan import Plan
from bnfold.onnx.plan.weights import matmul_bias_add
from bnfold.onnx.uses import is_exclusive, replace_output

logger = logging.getLogger(__name__)

AFFINE_OPS = ("Add", "Sub", "Mul", "Div")


class FoldChannelAffinePass(BnfoldPass):
    """Absorb ``layer(x) ⊙ c`` (⊙ ∈ +, −, ×, ÷; c constant per output channel) into the layer."""

    def run(self, model: ir.Model) -> bool:
        modified = False
        for node in self.ctx.all_nodes():
            if node.graph is None or not is_onnx_op(node, AFFINE_OPS) or len(node.inputs) != 2:
                continue
            found = self.check(node)
            if found is None:
                continue
            plan, x = found
            replace_output(node.outputs[0], plan.apply() or x)
            assert node.graph is not None
            node.graph.remove(node, safe=True)
            modified = True
        return modified

    def check(self, node: ir.Node) -> tuple[Plan, ir.Value] | None:
        """A ready Plan and the value carrying its result; None when this is no foldable affine."""
        allow = self.ctx.options.allow_graph_input_params
        for var_index in (0, 1):
            x, c_val = node.inputs[var_index], node.inputs[1 - var_index]
            if x is None or c_val is None:
                continue
            const = constant_array(c_val, allow_graph_inputs=allow)
            producer = x.producer()
            if const is None or producer is None:
                continue
            if not np.issubdtype(const.dtype, np.floating) and const.dtype.name != "bfloat16":
                continue
            layer, bias_add = producer, None
            if not is_onnx_op(producer, PRODUCER_OPS):
                pair = matmul_bias_add(self.ctx, x)
                if pair is None or node.op_type == "Add":
                    continue
                layer, bias_add = pair
            elif is_onnx_op(producer, "MatMul") and node.op_type == "Add":
                continue  # MatMul + Add already is the biased form
            if not is_exclusive(x) or (bias_add is not None and not is_exclusive(layer.outputs[0])):
                continue
            affine = self.affine(node, var_index, const, layer)
            if affine is None:
                continue
            s, t, axis = affine
            plan = plan_layer_output(self.ctx, layer, s, t, axis, bias_add)
            if isinstance(plan, Plan):
                return plan, x
            logger.debug("affine %s not folded: %s", node.name, plan)
        return None

    def affine(
        self, node: ir.Node, var_index: int, const: np.ndarray, layer: ir.Node
    ) -> tuple[np.ndarray, np.ndarray, int] | None:
        rank, axis = output_rank(layer), feature_axis(layer)
        if rank is None or axis is None:
            return None
        channels = output_channels(layer)
        if channels is None:
            return None
        vec = per_channel_vector(const, rank, axis, channels)
        if isinstance(vec, str) or not np.all(np.isfinite(vec)):
            return None
        ones, zeros = np.ones(channels), np.zeros(channels)
        op = node.op_type
        if op == "Add":
            return ones, vec, axis
        if op == "Mul":
            return vec, zeros, axis
        if op == "Sub":
            return (ones, -vec, axis) if var_index == 0 else (-ones, vec, axis)
        if var_index == 0 and np.all(vec != 0):  # Div(x, c)
            return 1.0 / vec, zeros, axis
        return None
