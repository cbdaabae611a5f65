"""RewriteStandaloneBatchNormPass: a BN that folds nowhere becomes ``x·s + t`` (opt-in).

Measured with ``benchmarks/standalone_bn.py`` (onnxruntime CPU): one BatchNormalization
node is 1.5–2.5× *faster* than the equivalent Mul+Add, so this rewrite is off by default
(``rewrite_standalone`` / ``--rewrite-standalone``). It exists for runtimes without a BN
kernel and for graphs that must contain no BN. The cheapest exact form is used: Mul only
when t = 0, Add only when s = 1, nothing when both.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from bnfold import foldmath
from bnfold.onnx.batchnorm import FrozenBatchNorm, frozen_batchnorms
from bnfold.onnx.context import display_name
from bnfold.onnx.passes.base import BnfoldPass
from bnfold.onnx.plan import layout
from bnfold.onnx.uses import replace_output


class RewriteStandaloneBatchNormPass(BnfoldPass):
    """Replace every BN still present by Mul/Add with per-channel constants."""

    def run(self, model: ir.Model) -> bool:
        if not self.ctx.options.rewrite_standalone:
            return False
        modified = False
        for bn in frozen_batchnorms(self.ctx):
            if self.rewrite(bn):
                modified = True
        return modified

    def rewrite(self, bn: FrozenBatchNorm) -> bool:
        node = bn.node
        x = node.inputs[0]
        dims = layout.static_dims(x)
        dtype = x.dtype if x is not None else None
        if x is None or dims is None or dtype is None or len(dims) < 2:
            reason = self.ctx.reason_of(node) or ""
            self.ctx.skip(node, f"{reason} [not rewritten: input rank or dtype unknown]")
            return False
        shape = (bn.channels,) + (1,) * (len(dims) - 2)
        like = np.zeros(shape, dtype=dtype.numpy())
        s, why_s = foldmath.cast_back(bn.scale.reshape(shape), like.dtype)
        t, why_t = foldmath.cast_back(bn.shift.reshape(shape), like.dtype)
        if s is None or t is None:
            reason = self.ctx.reason_of(node) or ""
            self.ctx.skip(node, f"{reason} [not rewritten: {why_s or why_t}]")
            return False
        out = x
        ops = []
        name = display_name(node)
        if np.any(bn.scale != 1.0):
            out = self._binary(node, "Mul", out, s, f"{name}.scale")
            ops.append("Mul")
        if np.any(bn.shift != 0.0):
            out = self._binary(node, "Add", out, t, f"{name}.shift")
            ops.append("Add")
        if out is x and node.outputs[0].is_graph_output():
            ident = ir.Node("", "Identity", inputs=[x], name=self.ctx.unique_name(name))
            node.graph.insert_before(node, ident)  # type: ignore[union-attr]
            out = ident.outputs[0]
        reason = self.ctx.reason_of(node)
        replace_output(node.outputs[0], out)
        assert node.graph is not None
        node.graph.remove(node, safe=True)
        form = "+".join(ops) or "identity"
        self.ctx.done(node, "rewritten", pattern=f"BN→{form}", note=reason)
        return True

    def _binary(
        self, near: ir.Node, op: str, x: ir.Value, array: np.ndarray, base: str
    ) -> ir.Value:
        const = self.ctx.new_constant(near, array, base, x.dtype)
        node = ir.Node("", op, inputs=[x, const], name=self.ctx.unique_name(f"{base}_{op}"))
        out = node.outputs[0]
        out.name = self.ctx.unique_name(f"{base}_{op.lower()}")
        out.type, out.shape = near.outputs[0].type, near.outputs[0].shape
        assert near.graph is not None
        near.graph.insert_before(near, node)
        return out
