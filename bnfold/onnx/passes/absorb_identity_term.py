"""AbsorbIdentityTermPass: in a sum feeding a BN, ``Conv(x) + x`` becomes ``Conv'(x)``.

RepViT normalises ``conv(x) + conv1(x) + x``. The identity term ``x`` blocks the BN fold
(x is no layer output), but it is itself a convolution of x: with C_in = C_out, stride 1 and
size-keeping padding, adding 1 at each channel's aligned tap (``patterns.identity_tap``) gives
Conv'(x) = Conv(x) + x exactly. The term then leaves the sum and the BN can fold into the
remaining terms (FoldBatchNormIntoProducerPass). Only sums read by a BN are touched.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx_ir as ir

from bnfold import foldmath
from bnfold.onnx.constants import constant_array, is_onnx_op
from bnfold.onnx.context import display_name
from bnfold.onnx.passes.base import BnfoldPass
from bnfold.onnx.plan.conv import identity_tap
from bnfold.onnx.sums import sum_leaves
from bnfold.onnx.uses import is_exclusive, replace_output
from bnfold.patterns import add_identity

logger = logging.getLogger(__name__)


class AbsorbIdentityTermPass(BnfoldPass):
    """Merge an identity term into a same-input Conv term of a sum that a BN reads."""

    def run(self, model: ir.Model) -> bool:
        modified = False
        for node in self.ctx.all_nodes():
            if node.graph is None or not is_onnx_op(node, "BatchNormalization"):
                continue
            if self.ctx.kept(node):
                continue
            x = node.inputs[0]
            top = x.producer() if x is not None else None
            if top is None or not is_onnx_op(top, "Add") or len(top.inputs) != 2:
                continue
            while self.absorb_one(top):
                modified = True
                if top.graph is None:
                    break
        return modified

    def absorb_one(self, top: ir.Node) -> bool:
        """Absorb one identity term of the sum rooted at ``top``; False when none fits."""
        leaves = sum_leaves(top)
        shape = top.outputs[0].shape
        for term, add in leaves:
            if shape is None or term.shape != shape:
                continue
            for conv_out, _ in leaves:
                conv = conv_out.producer()
                if conv is None or not is_onnx_op(conv, "Conv") or conv.inputs[0] is not term:
                    continue
                if not is_exclusive(conv_out):
                    continue
                new_w = self.weights(conv)
                if new_w is None:
                    continue
                self.rewrite(conv, new_w, term, add)
                return True
        return False

    def weights(self, conv: ir.Node) -> np.ndarray | None:
        """Conv weights plus the identity, cast back; None when the identity is no Conv tap."""
        allow = self.ctx.options.allow_graph_input_params
        w = constant_array(conv.inputs[1], allow_graph_inputs=allow)
        if w is None or w.ndim < 3:
            return None
        g = conv.attributes.get_int("group", 1)
        if w.shape[1] * g != w.shape[0]:
            return None
        tap = identity_tap(conv, tuple(int(k) for k in w.shape[2:]))
        if tap is None:
            return None
        new_w, reason = foldmath.cast_back(add_identity(w, np.ones(w.shape[0]), g, tap), w.dtype)
        if new_w is None:
            logger.debug("identity not absorbed into %s: %s", display_name(conv), reason)
        return new_w

    def rewrite(self, conv: ir.Node, new_w: np.ndarray, term: ir.Value, add: ir.Node) -> None:
        w_val = conv.inputs[1]
        dtype = w_val.const_value.dtype if w_val is not None and w_val.const_value else None
        name = f"{display_name(conv)}.weight_bnfold"
        conv.replace_input_with(1, self.ctx.new_constant(conv, new_w, name, dtype))
        other = add.inputs[1] if add.inputs[0] is term else add.inputs[0]
        assert other is not None and add.graph is not None
        replace_output(add.outputs[0], other)
        add.graph.remove(add, safe=True)
        logger.debug("absorbed identity term '%s' into %s", term.name, display_name(conv))
