"""FoldBatchNormThroughLayoutPass: layer → Reshape/Flatten/Transpose/Squeeze/Unsqueeze → BN.

How Linear → BatchNorm1d over tokens is exported (LeViT: ``bn(x.flatten(0, 1)).reshape_as(x)``)
and MatMul on 3-D inputs followed by a Transpose. The BN's channel axis is mapped back
through the layout ops onto the layer's feature axis (``layout.py``); the BN folds into the
layer and the layout ops stay.
"""

from __future__ import annotations

import logging

from bnfold.onnx import layout
from bnfold.onnx.batchnorm import read_batchnorm
from bnfold.onnx.constants import is_onnx_op
from bnfold.onnx.passes.base import BnfoldPass
from bnfold.onnx.producers import Plan, drop_batchnorm, plan_output_affine

logger = logging.getLogger(__name__)


class FoldBatchNormThroughLayoutPass(BnfoldPass):
    """Fold a BN whose input comes from a linear layer through layout ops."""

    def run(self) -> bool:
        modified = False
        for node in self.ctx.all_nodes():
            if node.graph is None or not is_onnx_op(node, "BatchNormalization"):
                continue
            x = node.inputs[0]
            producer = x.producer() if x is not None else None
            if producer is None or not layout.is_layout_op(producer):
                continue
            bn = read_batchnorm(self.ctx, node)
            if isinstance(bn, str):
                continue  # the producer pass already recorded this reason
            plan = plan_output_affine(self.ctx, x, 1, bn.scale, bn.shift)  # type: ignore[arg-type]
            if not isinstance(plan, Plan):
                self.ctx.skip(node, plan)
                continue
            drop_batchnorm(self.ctx, node, plan, "→".join([*plan.path, "BN"]))
            modified = True
        return modified
