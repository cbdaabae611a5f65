"""KeepOutputNamesIdentityEliminationPass: onnx-ir's Identity elimination, output-name safe.

onnx-ir's pass removes ``y = Identity(x)`` when ``y`` is a graph output by renaming ``x``
to ``y``. When ``x`` is itself a graph output, that renames one output and lists the
other twice, so such an Identity must stay (Dropout removal inserts exactly this form).
"""

from __future__ import annotations

import onnx_ir as ir
from onnx_ir.passes.common import IdentityEliminationPass


class KeepOutputNamesIdentityEliminationPass(IdentityEliminationPass):
    """Eliminate Identity nodes, except one that copies a graph output to a graph output."""

    def _try_eliminate_identity_node(self, node: ir.Node) -> bool:
        x = node.inputs[0] if len(node.inputs) == 1 else None
        if (
            node.op_type == "Identity"
            and node.domain == ""
            and x is not None
            and x.is_graph_output()
            and node.outputs[0].is_graph_output()
        ):
            return False
        return super()._try_eliminate_identity_node(node)
