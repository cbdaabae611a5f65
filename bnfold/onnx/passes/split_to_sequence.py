"""SequenceSplitToSplitPass: ``SplitToSequence`` read only by ``SequenceAt`` becomes ``Split``.

torch's dynamo exporter writes ``torch.split`` as ``SplitToSequence`` followed by
``SequenceAt(seq, i)`` per chunk. Sequences cost onnxruntime a copy per chunk and block
its fusions; a plain ``Split`` with one output per chunk computes the same tensors.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from bnfold.onnx.constants import constant_array, is_onnx_op
from bnfold.onnx.passes.base import BnfoldPass
from bnfold.onnx.uses import replace_output
from bnfold.onnx.walk import node_opset


class SequenceSplitToSplitPass(BnfoldPass):
    """Rewrite SplitToSequence (constant sizes) + constant-index SequenceAt into Split."""

    def run(self, model: ir.Model) -> bool:
        modified = False
        for node in self.ctx.all_nodes():
            if node.graph is None or not is_onnx_op(node, "SplitToSequence"):
                continue
            plan = self.check(node)
            if plan is None:
                continue
            self.rewrite(node, *plan)
            modified = True
        return modified

    def check(self, node: ir.Node) -> tuple[np.ndarray, list[tuple[ir.Node, int]]] | None:
        """(split sizes, [(SequenceAt, chunk index)]) when the rewrite is exact, else None."""
        if len(node.inputs) != 2 or node.inputs[0] is None:
            return None
        sizes = constant_array(node.inputs[1])
        if sizes is None or sizes.ndim != 1 or sizes.dtype.kind not in "iu" or not sizes.size:
            return None  # a scalar split size needs the static dim; leave it
        seq = node.outputs[0]
        if seq.is_graph_output():
            return None
        reads: list[tuple[ir.Node, int]] = []
        for use in seq.uses():
            reader = use.node
            if not is_onnx_op(reader, "SequenceAt") or use.idx != 0 or len(reader.inputs) != 2:
                return None
            position = constant_array(reader.inputs[1])
            if position is None or position.size != 1:
                return None
            index = int(position.reshape(-1)[0])
            if not -sizes.size <= index < sizes.size:
                return None
            reads.append((reader, index % sizes.size))
        return (sizes.astype(np.int64), reads) if reads else None

    def rewrite(self, node: ir.Node, sizes: np.ndarray, reads: list[tuple[ir.Node, int]]) -> None:
        axis = node.attributes.get_int("axis", 0)
        opset = node_opset(node, self.ctx.model)
        base = node.name or node.outputs[0].name or "split"
        inputs: list[ir.Value | None] = [node.inputs[0]]
        attributes: list[ir.Attr] = [ir.AttrInt64("axis", axis)]
        if opset >= 13:
            inputs.append(self.ctx.new_constant(node, sizes, f"{base}_sizes"))
        else:
            attributes.append(ir.AttrInt64s("split", [int(s) for s in sizes]))
        split = ir.Node(
            "",
            "Split",
            inputs=inputs,
            attributes=attributes,
            num_outputs=int(sizes.size),
            name=self.ctx.unique_name(f"{base}_split"),
        )
        for i, out in enumerate(split.outputs):
            out.name = self.ctx.unique_name(f"{base}_{i}")
        assert node.graph is not None
        node.graph.insert_before(node, split)
        for reader, index in reads:
            replace_output(reader.outputs[0], split.outputs[index])
            assert reader.graph is not None
            reader.graph.remove(reader, safe=True)
        node.graph.remove(node, safe=True)
