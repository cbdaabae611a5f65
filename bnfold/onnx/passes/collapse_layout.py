"""CollapseLayoutChainsPass: back-to-back Reshapes and Transposes left behind by folds.

Folding ``bn(x.flatten(0, 1)).reshape_as(x)`` leaves ``Reshape → Reshape``; folding through
``Transpose → BN → Transpose`` leaves a Transpose pair. Both collapse exactly:

- ``Reshape(Reshape(x, a), b)`` → ``Reshape(x, b)`` when ``b`` is constant and has no 0
  (a 0 would copy a dimension of the *intermediate* shape) and the inner result has no
  other reader;
- ``Transpose(Transpose(x, p), q)`` → ``Transpose(x, p∘q)``, or ``x`` itself when that
  composition is the identity.
"""

from __future__ import annotations

import onnx_ir as ir

from bnfold.onnx.constants import constant_array, is_onnx_op
from bnfold.onnx.passes.base import BnfoldPass
from bnfold.onnx.uses import replace_output


class CollapseLayoutChainsPass(BnfoldPass):
    """Merge Reshape→Reshape and Transpose→Transpose chains (inner result used once)."""

    def run(self, model: ir.Model) -> bool:
        modified = False
        for node in self.ctx.all_nodes():
            if node.graph is None or not node.inputs or node.inputs[0] is None:
                continue
            inner = node.inputs[0].producer()
            if inner is None or inner.op_type != node.op_type or inner.graph is not node.graph:
                continue
            if not _single_reader(inner.outputs[0]):
                continue
            if is_onnx_op(node, "Reshape"):
                modified = self.collapse_reshape(node, inner) or modified
            elif is_onnx_op(node, "Transpose"):
                modified = self.collapse_transpose(node, inner) or modified
        return modified

    def collapse_reshape(self, node: ir.Node, inner: ir.Node) -> bool:
        if len(node.inputs) < 2 or inner.inputs[0] is None:
            return False
        target = constant_array(node.inputs[1])
        if target is None or target.ndim != 1 or (target == 0).any():
            return False
        node.replace_input_with(0, inner.inputs[0])
        assert inner.graph is not None
        inner.graph.remove(inner, safe=True)
        return True

    def collapse_transpose(self, node: ir.Node, inner: ir.Node) -> bool:
        source = inner.inputs[0]
        p, q = _perm(inner), _perm(node)
        if source is None or p is None or q is None or len(p) != len(q):
            return False
        composed = [p[i] for i in q]
        graph = node.graph
        assert graph is not None and inner.graph is not None
        if composed == sorted(composed) and not (
            node.outputs[0].is_graph_output() and source.is_graph_input()
        ):
            replace_output(node.outputs[0], source)
            graph.remove(node, safe=True)
        else:
            node.attributes["perm"] = ir.AttrInt64s("perm", composed)
            node.replace_input_with(0, source)
        inner.graph.remove(inner, safe=True)
        return True


def _perm(node: ir.Node) -> list[int] | None:
    attr = node.attributes.get("perm")
    if attr is None:
        return None  # default reverses the axes; needs the rank: leave it
    return list(attr.as_ints())


def _single_reader(value: ir.Value) -> bool:
    return not value.is_graph_output() and len(value.uses()) == 1
