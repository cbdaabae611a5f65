"""Reading a tree of Adds as one sum: its leaf terms and the Add that consumes each."""

from __future__ import annotations

import onnx_ir as ir

from bnfold.onnx.constants import is_onnx_op
from bnfold.onnx.uses import is_exclusive


def sum_leaves(top: ir.Node) -> list[tuple[ir.Value, ir.Node]]:
    """(term, the Add reading it) for every leaf of the sum rooted at ``top``.

    Descends only into inner Adds whose output feeds nothing else and has the sum's shape
    (no broadcasting), so rewriting inside the tree cannot change any other value.
    """
    out_shape = top.outputs[0].shape
    leaves: list[tuple[ir.Value, ir.Node]] = []
    stack = [top]
    while stack:
        add = stack.pop()
        for term in add.inputs:
            if term is None:
                continue
            inner = term.producer()
            if (
                inner is not None
                and is_onnx_op(inner, "Add")
                and len(inner.inputs) == 2
                and is_exclusive(term)
                and out_shape is not None
                and term.shape == out_shape
            ):
                stack.append(inner)
            else:
                leaves.append((term, add))
    return leaves
