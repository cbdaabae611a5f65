"""SwitchToInferencePass: under ``assume_eval``, training-mode BNs left unfolded use running stats.

A training-mode BN that could fold nowhere would otherwise keep normalising with batch
statistics, contradicting ``--assume-eval``. Runs after the fold fixpoint.
"""

from __future__ import annotations

import onnx_ir as ir

from bnfold.onnx.constants import is_onnx_op
from bnfold.onnx.eval_mode import bn_in_training, set_bn_inference
from bnfold.onnx.passes.base import BnfoldPass
from bnfold.onnx.walk import model_opset

NOTE = "switched to running statistics (--assume-eval)"


class SwitchToInferencePass(BnfoldPass):
    """Make every remaining training-mode BN an inference-mode BN (only with assume_eval)."""

    def run(self, model: ir.Model) -> bool:
        if not self.ctx.options.assume_eval:
            return False
        opset = model_opset(model)
        modified = False
        for node in self.ctx.all_nodes():
            if node.graph is None or not is_onnx_op(node, "BatchNormalization"):
                continue
            if not bn_in_training(node, opset):
                continue
            if set_bn_inference(node, opset):
                reason = self.ctx.reason_of(node)
                self.ctx.skip(node, f"{reason} [{NOTE}]" if reason else NOTE)
                modified = True
        return modified
