"""StripDropoutPass: Dropout is the identity at inference (every opset form)."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from bnfold.onnx.constants import constant_array, is_onnx_op
from bnfold.onnx.passes.base import BnfoldPass
from bnfold.onnx.uses import is_graph_boundary, replace_output
from bnfold.onnx.walk import node_opset


class StripDropoutPass(BnfoldPass):
    """Remove inference-mode Dropout; a consumed mask becomes an all-true tensor."""

    def run(self, model: ir.Model) -> bool:
        modified = False
        for node in self.ctx.all_nodes():
            if node.graph is None or not is_onnx_op(node, "Dropout") or self.ctx.kept(node):
                continue
            reason = self.check(node)
            if reason is not None:
                self.ctx.skip(node, reason)
                continue
            self.rewrite(node)
            modified = True
        return modified

    def opset(self, node: ir.Node) -> int:
        return node_opset(node, self.ctx.model)

    def check(self, node: ir.Node) -> str | None:
        """None when the Dropout is an inference-time identity, else why it stays."""
        training = self.training_mode(node)
        if training is None:
            return "Dropout's training_mode is a run-time input; it may be random at run time"
        if training and not self.ctx.options.assume_eval:
            return (
                "Dropout is in training mode (it zeroes activations at random); "
                "use --assume-eval to treat it as inference"
            )
        if not node.inputs or node.inputs[0] is None:
            return "Dropout has no data input"
        if len(node.outputs) > 1 and _is_used(node.outputs[1]) and self.opset(node) < 9:
            rank = _rank(node.inputs[0], node.outputs[1])
            if self.opset(node) < 6 or rank is None:
                return "Dropout's mask is used and cannot be rebuilt (opset < 6 or unknown rank)"
        return None

    def training_mode(self, node: ir.Node) -> bool | None:
        """True/False when known; None when it is decided at run time."""
        if self.opset(node) < 7:
            return node.attributes.get_int("is_test", 0) == 0
        if self.opset(node) < 12 or len(node.inputs) < 3 or node.inputs[2] is None:
            return False
        flag = constant_array(node.inputs[2])
        if flag is None:
            return None
        return bool(np.asarray(flag).reshape(-1)[0])

    def rewrite(self, node: ir.Node) -> None:
        data, out = node.inputs[0], node.outputs[0]
        assert data is not None and node.graph is not None
        graph = node.graph
        if len(node.outputs) > 1 and _is_used(node.outputs[1]):
            self.replace_mask(node, data)
        # read before removal: a removed node's inputs are detached
        note = "training-mode Dropout removed (--assume-eval)" if self.training_mode(node) else None
        if _is_used(out):
            if out.is_graph_output() and is_graph_boundary(data):
                ident = ir.Node("", "Identity", inputs=[data], name=node.name or None)
                ident.outputs[0].type = out.type
                ident.outputs[0].shape = out.shape
                graph.insert_before(node, ident)
                replace_output(out, ident.outputs[0])
            else:
                replace_output(out, data)
        graph.remove(node, safe=True)
        self.ctx.done(node, "removed", pattern="Dropout→identity", note=note)

    def replace_mask(self, node: ir.Node, data: ir.Value) -> None:
        """An all-true mask shaped like ``data``: bool from opset 10, 1 in data's dtype before.

        ``ConstantOfShape(Shape(data))`` from opset 9; ``Tile(ones, Shape(data))`` before.
        """
        mask = node.outputs[1]
        opset = self.opset(node)
        if opset >= 10:
            fill = np.ones(1, dtype=np.bool_)
        else:
            fill = np.ones(1, dtype=data.dtype.numpy() if data.dtype else np.float32)
        name = self.ctx.unique_name(f"{mask.name}_all_true")
        shape = ir.Node("", "Shape", inputs=[data], name=f"{name}_shape")
        shape.outputs[0].name = self.ctx.unique_name(f"{name}_shape")
        if opset >= 9:
            const = ir.Node(
                "",
                "ConstantOfShape",
                inputs=[shape.outputs[0]],
                attributes=[ir.AttrTensor("value", ir.Tensor(fill))],
                name=name,
            )
        else:  # Tile-6: ones of shape (1,)*rank, repeated Shape(data) times
            rank = _rank(data, mask)
            assert rank is not None
            ones = self.ctx.new_constant(node, fill.reshape((1,) * rank), f"{name}_one")
            const = ir.Node("", "Tile", inputs=[ones, shape.outputs[0]], name=name)
        const.outputs[0].name = name
        const.outputs[0].type = mask.type
        const.outputs[0].shape = mask.shape
        assert node.graph is not None
        node.graph.insert_before(node, [shape, const])
        replace_output(mask, const.outputs[0])


def _is_used(value: ir.Value) -> bool:
    return bool(value.uses()) or value.is_graph_output()


def _rank(data: ir.Value, mask: ir.Value) -> int | None:
    for value in (data, mask):
        if value.shape is not None:
            return len(value.shape)
    return None
