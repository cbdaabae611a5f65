"""FoldBatchNormIntoConsumerPass: BN → Conv (unpadded) / Gemm / MatMul with constant weights.

For a BN its producer cannot absorb (pre-activation networks, BN on the network input,
BN after a pooling op): ``L(s·x + t) = L'(x)`` with the layer adapters' input-side folds
(``plan/layers.py``). Between the BN and the layer the walk in ``plan/consumers.py`` passes
layout ops and pooling ops the map commutes with (``BN → ReduceMean → Linear`` heads,
``BN → GlobalAveragePool → Flatten → Gemm``; see ``plan/pooling.py``). A value on the way
may feed several readers when every one of them absorbs the map (each gets its own folded
weights); none may be a graph output. A padded Conv is left with that reason.
"""

from __future__ import annotations

import onnx_ir as ir

from bnfold.onnx.batchnorm import frozen_batchnorms
from bnfold.onnx.passes.base import BnfoldPass
from bnfold.onnx.plan.consumers import plan_input_affine
from bnfold.onnx.plan.plan import Plan
from bnfold.onnx.plan.producers import drop_batchnorm


class FoldBatchNormIntoConsumerPass(BnfoldPass):
    """Fold a frozen BN into the linear layer that reads its output."""

    def run(self, model: ir.Model) -> bool:
        modified = False
        for bn in frozen_batchnorms(self.ctx):
            node = bn.node
            plan = plan_input_affine(self.ctx, node.outputs[0], 1, bn.scale, bn.shift)
            if not isinstance(plan, Plan):
                continue  # the final explanation names both sides' blockers
            drop_batchnorm(self.ctx, node, plan, "BN→" + "→".join(plan.path) + " (consumer)")
            modified = True
        return modified
