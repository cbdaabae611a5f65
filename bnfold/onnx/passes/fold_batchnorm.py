"""FoldBatchNormIntoProducerPass: fold a BN into the layer(s) that produce its input.

The producer side is planned by ``producers.plan_output_affine``: a Conv, ConvTranspose,
Gemm or MatMul (+ bias Add) directly, or reached through layout ops (LeViT's
``bn(x.flatten(0, 1))``), a channel Concat (s and t split per input) or an Add of
foldable terms (``s·(a + b) + t = (s·a + t) + s·b``). Everything is checked before the
graph changes.
"""

from __future__ import annotations

import onnx_ir as ir

from bnfold.onnx.batchnorm import frozen_batchnorms
from bnfold.onnx.passes.base import BnfoldPass
from bnfold.onnx.plan.plan import Plan
from bnfold.onnx.plan.producers import drop_batchnorm, plan_output_affine

_SPLIT_PATTERNS = {"Concat": "Concat→BN (split per input)", "Add": "Add→BN (split over terms)"}


class FoldBatchNormIntoProducerPass(BnfoldPass):
    """Fold each frozen BN into whatever linear layers produce its input."""

    def run(self, model: ir.Model) -> bool:
        modified = False
        for bn in frozen_batchnorms(self.ctx, record=True):
            node = bn.node
            x = node.inputs[0]
            assert x is not None
            plan = plan_output_affine(self.ctx, x, 1, bn.scale, bn.shift)
            if not isinstance(plan, Plan):
                self.ctx.skip(node, plan)
                continue
            drop_batchnorm(self.ctx, node, plan, pattern(plan))
            modified = True
        return modified


def pattern(plan: Plan) -> str:
    """The report's pattern: ``Conv→BN``, ``MatMul→Add→Transpose→BN``, ``Concat→BN (…)``."""
    return _SPLIT_PATTERNS.get(plan.path[0], "→".join([*plan.path, "BN"]))
