"""FoldBatchNormThroughAddPass: BN after a sum of layer outputs is split over the terms.

``s·(a + b) + t = (s·a + t) + s·b``: when every term of the Add is produced by a foldable
layer used only by that Add (or is a constant), the BN scales each term's layer and one of
them also takes the shift. Seen in re-parameterisable blocks that normalise a branch sum
(RepViT's ``bn(conv(x) + conv1(x) + x)``, once the identity term is absorbed) and in graphs
where a Conv's bias was exported as a separate Add. All terms are checked before anything
changes.
"""

from __future__ import annotations

import logging

from bnfold.onnx.batchnorm import read_batchnorm
from bnfold.onnx.constants import is_onnx_op
from bnfold.onnx.passes.base import BnfoldPass
from bnfold.onnx.producers import Plan, drop_batchnorm, plan_output_affine

logger = logging.getLogger(__name__)


class FoldBatchNormThroughAddPass(BnfoldPass):
    """Fold a BN whose input is an Add of foldable terms into every term."""

    def run(self) -> bool:
        modified = False
        for node in self.ctx.all_nodes():
            if node.graph is None or not is_onnx_op(node, "BatchNormalization"):
                continue
            x = node.inputs[0]
            producer = x.producer() if x is not None else None
            if producer is None or not is_onnx_op(producer, "Add"):
                continue
            bn = read_batchnorm(self.ctx, node)
            if isinstance(bn, str):
                continue
            plan = plan_output_affine(self.ctx, x, 1, bn.scale, bn.shift)  # type: ignore[arg-type]
            if not isinstance(plan, Plan):
                continue  # the final explanation names the blocking term
            drop_batchnorm(self.ctx, node, plan, "Add→BN (split over terms)")
            modified = True
        return modified
