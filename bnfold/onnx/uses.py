"""Which uses of a value read its *contents* (a fold changes contents, never shapes or dtypes)."""

from __future__ import annotations

from typing import Any

import onnx_ir as ir

from bnfold.onnx.constants import is_onnx_op

# (op, input index or None for every input) whose result depends only on shape/dtype
_METADATA_ONLY = (("Shape", None), ("Size", None), ("CastLike", 1))


def reads_contents(use: Any) -> bool:
    """False for uses such as ``Shape(x)`` that see only x's shape or dtype."""
    node: ir.Node = use.node
    for op, index in _METADATA_ONLY:
        if is_onnx_op(node, op) and (index is None or use.idx == index):
            return False
    return True


def content_uses(value: ir.Value) -> list[Any]:
    """The uses of ``value`` that read its elements."""
    return [u for u in value.uses() if reads_contents(u)]


def is_exclusive(value: ir.Value) -> bool:
    """True when one node alone reads the value's contents and it is not a graph output."""
    return not value.is_graph_output() and len(content_uses(value)) == 1


def replace_output(old: ir.Value, new: ir.Value) -> None:
    """Route every use of ``old`` (graph outputs included) to ``new``, keeping output names."""
    was_output = old.is_graph_output()
    old.replace_all_uses_with(new, replace_graph_outputs=True)
    if was_output:
        new.name = old.name


def is_graph_boundary(value: ir.Value) -> bool:
    """Graph inputs, initializers and outputs cannot be renamed away."""
    return value.is_graph_input() or value.is_initializer() or value.is_graph_output()
