"""FoldChannelAffinePass: per-channel constant Add/Sub/Mul/Div after a linear layer.

Covers bias Adds between a layer and its BN (ConvTranspose → Add → BN), decomposed BN
(FrozenBatchNorm2d exports: ``x·scale + bias``) and converters that split BN into Mul/Add.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx_ir as ir

from bnfold.onnx.channel_affine import per_channel_vector
from bnfold.onnx.constants import constant_array, is_onnx_op
from bnfold.onnx.layers import (
    PRODUCER_OPS,
    Rewrite,
    feature_axis,
    matmul_bias_add,
    output_rank,
    prepare_output_affine,
)
from bnfold.onnx.passes.base import BnfoldPass, replace_output
from bnfold.onnx.uses import is_exclusive

logger = logging.getLogger(__name__)

AFFINE_OPS = ("Add", "Sub", "Mul", "Div")


class FoldChannelAffinePass(BnfoldPass):
    """Absorb ``layer(x) ⊙ c`` (⊙ ∈ +, −, ×, ÷; c constant per output channel) into the layer."""

    def run(self) -> bool:
        modified = False
        for node in self.ctx.all_nodes():
            if node.graph is None or not is_onnx_op(node, AFFINE_OPS) or len(node.inputs) != 2:
                continue
            plan = self.check(node)
            if plan is None:
                continue
            new_out = plan.apply()
            replace_output(node.outputs[0], new_out)
            assert node.graph is not None
            node.graph.remove(node, safe=True)
            modified = True
        return modified

    def check(self, node: ir.Node) -> Rewrite | None:
        """A ready Rewrite, or None when this elementwise node is not a foldable affine."""
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
            plan = prepare_output_affine(self.ctx, layer, s, t, axis, bias_add)
            if isinstance(plan, Rewrite):
                return plan
            logger.debug("affine %s not folded: %s", node.name, plan)
        return None

    def affine(
        self, node: ir.Node, var_index: int, const: np.ndarray, layer: ir.Node
    ) -> tuple[np.ndarray, np.ndarray, int] | None:
        rank, axis = output_rank(layer), feature_axis(layer)
        if rank is None or axis is None:
            return None
        channels = _channels(layer)
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


def _channels(layer: ir.Node) -> int | None:
    w = layer.inputs[1] if len(layer.inputs) > 1 else None
    arr = constant_array(w, allow_graph_inputs=True)
    if arr is None or arr.ndim < 2:
        return None
    if is_onnx_op(layer, "Conv"):
        return int(arr.shape[0])
    if is_onnx_op(layer, "ConvTranspose"):
        group = layer.attributes.get("group")
        return int(arr.shape[1]) * (group.as_int() if group is not None else 1)
    if is_onnx_op(layer, "Gemm"):
        trans = layer.attributes.get("transB")
        return int(arr.shape[0] if trans is not None and trans.as_int() else arr.shape[1])
    return int(arr.shape[1])
