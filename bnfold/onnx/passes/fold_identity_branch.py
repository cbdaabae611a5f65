"""FoldBatchNormIdentityBranchPass: ``Conv(x) + BN(x)`` → ``Conv'(x)`` (RepVGG-style blocks).

Re-parameterisable blocks (RepVGG, MobileOne, PP-LCNetV3's learnable rep layers) add an
identity branch ``BN(x)`` to convolutions of the same ``x``. With C_in = C_out, stride 1 and
padding that keeps the spatial size, ``BN(x) = s·x + t`` is itself a convolution whose kernel
is ``s`` at the tap aligned with the output pixel: W'[o, o mod C_in/g, tap] += s[o], b' = b + t.
Exact, including at the borders (the identity tap never reads padding). The branch's Add
then disappears.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx_ir as ir

from bnfold import foldmath
from bnfold.onnx.batchnorm import FrozenBatchNorm, frozen_batchnorms
from bnfold.onnx.constants import constant_array, is_onnx_op
from bnfold.onnx.context import display_name
from bnfold.onnx.passes.base import BnfoldPass
from bnfold.onnx.plan.conv import identity_tap
from bnfold.onnx.plan.weights import value_dtype
from bnfold.onnx.uses import content_uses, is_exclusive, is_graph_boundary, replace_output
from bnfold.patterns import fold_identity_branch

logger = logging.getLogger(__name__)


class FoldBatchNormIdentityBranchPass(BnfoldPass):
    """Fold a BN summed with a Conv of the same input into that Conv's kernel centre."""

    def run(self, model: ir.Model) -> bool:
        modified = False
        for bn in frozen_batchnorms(self.ctx):
            plan = self.check(bn)
            if plan is None:
                continue
            self.rewrite(bn, *plan)
            modified = True
        return modified

    def check(self, bn: FrozenBatchNorm) -> tuple[ir.Node, ir.Node, np.ndarray, np.ndarray] | None:
        """(Add consuming the BN, Conv to absorb it, new weight, new bias) or None."""
        y, x = bn.node.outputs[0], bn.node.inputs[0]
        uses = content_uses(y)
        if x is None or y.is_graph_output() or len(uses) != 1:
            return None
        add = uses[0].node
        if not is_onnx_op(add, "Add") or len(add.inputs) != 2 or add.inputs[0] is add.inputs[1]:
            return None
        other = add.inputs[1] if add.inputs[0] is y else add.inputs[0]
        if other is None or (add.outputs[0].is_graph_output() and is_graph_boundary(other)):
            return None
        for conv in _sum_terms(add, skip=y):
            if not is_onnx_op(conv, "Conv") or conv.inputs[0] is not x:
                continue
            folded = self.fold_weights(conv, bn)
            if folded is not None:
                return add, conv, *folded
        return None

    def fold_weights(
        self, conv: ir.Node, bn: FrozenBatchNorm
    ) -> tuple[np.ndarray, np.ndarray] | None:
        allow = self.ctx.options.allow_graph_input_params
        w = constant_array(conv.inputs[1], allow_graph_inputs=allow)
        if w is None or w.ndim < 3 or w.shape[0] != bn.channels:
            return None
        g = conv.attributes.get_int("group", 1)
        if w.shape[1] * g != bn.channels:
            return None  # C_in ≠ C_out: BN(x) is not a same-shape branch of this Conv
        tap = identity_tap(conv, tuple(int(k) for k in w.shape[2:]))
        if tap is None:
            return None
        b = None
        if len(conv.inputs) > 2 and conv.inputs[2] is not None:
            b = constant_array(conv.inputs[2], allow_graph_inputs=allow)
            if b is None or b.size != bn.channels:
                return None
        w64, b64 = fold_identity_branch(w, b, bn.scale, bn.shift, g, tap)
        new_w, why_w = foldmath.cast_back(w64, w.dtype, w)
        like = b.reshape(-1) if b is not None else np.zeros(bn.channels, w.dtype)
        new_b, why_b = foldmath.cast_back(b64, like.dtype, like)
        if new_w is None or new_b is None:
            logger.debug("identity branch not folded: %s", why_w or why_b)
            return None
        return new_w, new_b

    def rewrite(
        self,
        bn: FrozenBatchNorm,
        add: ir.Node,
        conv: ir.Node,
        new_w: np.ndarray,
        new_b: np.ndarray,
    ) -> None:
        name = display_name(conv)
        w_type = value_dtype(conv.inputs[1])
        b_type = value_dtype(conv.inputs[2]) if len(conv.inputs) > 2 and conv.inputs[2] else w_type
        w_val = self.ctx.new_constant(conv, new_w, f"{name}.weight_bnfold", w_type)
        b_val = self.ctx.new_constant(conv, new_b, f"{name}.bias_bnfold", b_type)
        if len(conv.inputs) < 3:
            conv.resize_inputs(3)
        conv.replace_input_with(1, w_val)
        conv.replace_input_with(2, b_val)
        y = bn.node.outputs[0]
        other = add.inputs[1] if add.inputs[0] is y else add.inputs[0]
        assert other is not None and add.graph is not None and bn.node.graph is not None
        replace_output(add.outputs[0], other)
        add.graph.remove(add, safe=True)
        bn.node.graph.remove(bn.node, safe=True)
        self.ctx.done(bn.node, "folded", into=name, pattern="Conv(x) + BN(x) → Conv (identity tap)")


def _sum_terms(add: ir.Node, skip: ir.Value) -> list[ir.Node]:
    """Producers of every term of the Add tree around ``add`` (inner Adds used only there)."""
    terms: list[ir.Node] = []
    stack = [v for v in add.inputs if v is not None and v is not skip]
    top = add
    while True:  # climb: the Add's output may itself feed one Add of a larger sum
        out = top.outputs[0]
        users = content_uses(out)
        if out.is_graph_output() or len(users) != 1 or not is_onnx_op(users[0].node, "Add"):
            break
        top = users[0].node
        stack.extend(v for v in top.inputs if v is not None and v is not out)
    while stack:
        value = stack.pop()
        producer = value.producer()
        if producer is None:
            continue
        if is_onnx_op(producer, "Add") and is_exclusive(value):
            stack.extend(v for v in producer.inputs if v is not None)
        elif is_exclusive(value):
            terms.append(producer)
    return terms
