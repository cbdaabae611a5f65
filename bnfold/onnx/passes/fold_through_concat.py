"""FoldBatchNormThroughConcatPass: BN after a channel Concat of foldable layers.

Mixed-kernel (MixNet) and inception-style blocks concatenate several layer outputs on the
channel axis and normalise the result once. When every Concat input is produced by a
foldable layer used only by that Concat, s and t are split per input and each slice folds
into its layer. Every input is checked before anything changes: all fold or none do.
"""

from __future__ import annotations

import logging

from bnfold.onnx.batchnorm import read_batchnorm
from bnfold.onnx.constants import is_onnx_op
from bnfold.onnx.passes.base import BnfoldPass
from bnfold.onnx.producers import Plan, drop_batchnorm, plan_output_affine

logger = logging.getLogger(__name__)


class FoldBatchNormThroughConcatPass(BnfoldPass):
    """Split a BN after Concat(axis=channels) into the layers feeding the Concat."""

    def run(self) -> bool:
        modified = False
        for node in self.ctx.all_nodes():
            if node.graph is None or not is_onnx_op(node, "BatchNormalization"):
                continue
            x = node.inputs[0]
            producer = x.producer() if x is not None else None
            if producer is None or not is_onnx_op(producer, "Concat"):
                continue
            bn = read_batchnorm(self.ctx, node)
            if isinstance(bn, str):
                continue  # the producer pass already recorded this reason
            plan = plan_output_affine(self.ctx, x, 1, bn.scale, bn.shift)  # type: ignore[arg-type]
            if not isinstance(plan, Plan):
                self.ctx.skip(node, plan)
                continue
            drop_batchnorm(self.ctx, node, plan, "Concat→BN (split per input)")
            modified = True
        return modified
