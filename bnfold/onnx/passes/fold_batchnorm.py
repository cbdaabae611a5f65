"""FoldBatchNormIntoProducerPass: Conv/ConvTranspose/Gemm/MatMul (+ bias Add) → BN."""

from __future__ import annotations

import logging

import onnx_ir as ir

from bnfold.onnx.batchnorm import FrozenBatchNorm, read_batchnorm
from bnfold.onnx.constants import is_onnx_op
from bnfold.onnx.context import display_name
from bnfold.onnx.layers import PRODUCER_OPS, Rewrite, matmul_bias_add, prepare_output_affine
from bnfold.onnx.passes.base import BnfoldPass, replace_output
from bnfold.onnx.uses import content_uses

logger = logging.getLogger(__name__)


class FoldBatchNormIntoProducerPass(BnfoldPass):
    """Fold a frozen BN into the linear layer that produces its input."""

    def run(self) -> bool:
        modified = False
        for node in self.ctx.all_nodes():
            if node.graph is None or not is_onnx_op(node, "BatchNormalization"):
                continue
            bn = read_batchnorm(self.ctx, node)
            if isinstance(bn, str):
                self.ctx.skip(node, bn)
                continue
            result = self.check(bn)
            if isinstance(result, str):
                self.ctx.skip(node, result)
                continue
            self.rewrite(bn, result)
            modified = True
        return modified

    def check(self, bn: FrozenBatchNorm) -> Rewrite | str:
        """A ready Rewrite, or why this BN cannot fold into its producer."""
        x = bn.node.inputs[0]
        assert x is not None
        producer = x.producer()
        if producer is None:
            kind = "an initializer" if x.is_initializer() else "a graph input"
            return f"BN input '{x.name}' is {kind}; there is no producer to fold into"
        bias_add = None
        layer = producer
        if not is_onnx_op(producer, PRODUCER_OPS):
            pair = matmul_bias_add(self.ctx, x)
            if pair is None:
                return (
                    f"producer {producer.op_type} '{display_name(producer)}' is not a linear layer"
                )
            layer, bias_add = pair
        reason = _exclusive(x, "BN")
        if reason is None and bias_add is not None:
            reason = _exclusive(layer.outputs[0], "bias Add")
        if reason is not None:
            return f"{layer.op_type} '{display_name(layer)}' output {reason}"
        return prepare_output_affine(self.ctx, layer, bn.scale, bn.shift, 1, bias_add)

    def rewrite(self, bn: FrozenBatchNorm, rewrite: Rewrite) -> None:
        node = bn.node
        new_out = rewrite.apply()
        replace_output(node.outputs[0], new_out)
        assert node.graph is not None
        node.graph.remove(node, safe=True)
        layer = new_out.producer()
        op = layer.op_type if layer is not None else "?"
        if layer is not None and is_onnx_op(layer, "Add"):
            op = "MatMul+Add"
        self.ctx.done(node, "folded", into=rewrite.into, pattern=f"{op}→BN")


def _exclusive(value: ir.Value, consumer: str) -> str | None:
    """None when ``value`` feeds only its one consumer and is not a graph output."""
    if value.is_graph_output():
        return "is also a graph output"
    users = content_uses(value)  # Shape(x) reads no values: a fold cannot change it
    if len(users) != 1:
        others = sorted({u.node.op_type for u in users})
        return f"has {len(users)} consumers ({', '.join(others)}), not only the {consumer}"
    return None
