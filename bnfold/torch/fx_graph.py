"""Small questions about fx graph nodes: layout ops, sums, metadata-only uses, descriptions."""

from __future__ import annotations

import operator
from typing import Any

import torch
from torch import fx

LAYOUT_METHODS = {"contiguous", "flatten", "reshape", "view", "transpose", "permute", "squeeze"}
LAYOUT_METHODS |= {"unsqueeze"}
LAYOUT_FUNCTIONS = {torch.flatten, torch.reshape, torch.transpose, torch.permute, torch.squeeze}
LAYOUT_FUNCTIONS |= {torch.unsqueeze}
CAT = {torch.cat, torch.concat, torch.concatenate}
ADD = {operator.add, operator.iadd, torch.add}
SHAPE_ATTRS = {"shape", "dtype", "device", "ndim", "is_cuda", "layout"}


def is_layout(node: fx.Node) -> bool:
    """A pure data-movement op (flatten, reshape, view, permute, transpose, (un)squeeze)."""
    if node.op == "call_method":
        return node.target in LAYOUT_METHODS
    return node.op == "call_function" and node.target in LAYOUT_FUNCTIONS


def op_name(node: fx.Node) -> str:
    """``flatten`` for ``x.flatten(…)``, ``torch.flatten(x, …)`` and ``aten.flatten.using_ints``."""
    if node.op == "call_method":
        return str(node.target)
    target = getattr(node.target, "overloadpacket", node.target)  # an aten OpOverload
    return getattr(target, "__name__", str(target))


def is_add(node: fx.Node) -> bool:
    """``a + b`` (also ``+=``, ``torch.add`` and ``a.add(b)``) without alpha or out."""
    if node.kwargs or len(node.args) != 2:
        return False
    if node.op == "call_function" and node.target in ADD:
        return True
    return node.op == "call_method" and node.target in ("add", "add_", "__iadd__")


def is_zero(value: Any) -> bool:
    """A Python int zero (``0 + x`` keeps x's dtype; a float zero could promote it)."""
    return type(value) is int and value == 0


def is_shape_use(user: fx.Node, node: fx.Node) -> bool:
    """Uses that read only the tensor's metadata, unchanged by folding."""
    if user.op == "call_method" and user.target in ("size", "dim", "numel"):
        return user.args[0] is node and all(a is not node for a in user.args[1:])
    if user.op == "call_method" and user.target in ("reshape_as", "view_as", "expand_as"):
        return user.args[0] is not node
    if user.op == "call_function" and user.target is getattr:
        return user.args[0] is node and user.args[1] in SHAPE_ATTRS
    return False


def real_users(node: fx.Node) -> list[fx.Node]:
    """Users that read the tensor's values (not only its shape)."""
    return [u for u in node.users if not is_shape_use(u, node)]


def output_nodes(graph: fx.Graph) -> set[fx.Node]:
    """Nodes the graph returns."""
    out = next(n for n in reversed(graph.nodes) if n.op == "output")
    return set(out.all_input_nodes)


def permutation(node: fx.Node, ndim: int) -> list[int] | None:
    """The axis permutation of a transpose/permute node on an ``ndim``-D tensor."""
    args = list(node.args[1:])
    if len(args) == 1 and isinstance(args[0], (list, tuple)):
        args = list(args[0])
    if not all(isinstance(a, int) for a in args) or ndim <= 0:
        return None
    name = op_name(node)
    if name == "transpose" and len(args) == 2:
        if not all(-ndim <= a < ndim for a in args):
            return None
        d0, d1 = (a % ndim for a in args)
        perm = list(range(ndim))
        perm[d0], perm[d1] = perm[d1], perm[d0]
        return perm
    if name == "permute" and len(args) == ndim:
        perm = [a % ndim for a in args]
        return perm if sorted(perm) == list(range(ndim)) else None
    return None


def has_path(gm: fx.GraphModule, target: str) -> bool:
    try:
        gm.get_submodule(target)
    except AttributeError:
        return False
    return True


def describe_node(node: Any, gm: fx.GraphModule) -> str:
    """``ReLU 'stages.0.act'``, ``the input 'x'``, ``mean (mean_1)``…"""
    if not isinstance(node, fx.Node):
        return f"a constant ({type(node).__name__})"
    if node.op == "call_module":
        return f"{type(gm.get_submodule(node.target)).__name__} '{node.target}'"
    if node.op == "placeholder":
        return f"the input '{node.target}'"
    if node.op == "output":
        return "the output"
    target = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", "?")
    return f"{target} ({node.name})"


def sum_root(add: fx.Node) -> fx.Node:
    """The top of the Add tree ``add`` belongs to (climbing through single-use Adds)."""
    root = add
    while len(root.users) == 1 and is_add(next(iter(root.users))):
        root = next(iter(root.users))
    return root


def sum_terms(root: fx.Node) -> list[tuple[fx.Node, fx.Node]]:
    """``(term, the Add reading it)`` for every tensor term of the Add tree under ``root``.

    Inner Adds read only by the tree are opened; constant zeros are skipped.
    """
    terms: list[tuple[fx.Node, fx.Node]] = []

    def collect(node: fx.Node) -> None:
        for arg in node.args:
            if not isinstance(arg, fx.Node):
                continue
            if is_add(arg) and len(arg.users) == 1 and node.args.count(arg) == 1:
                collect(arg)
            else:
                terms.append((arg, node))

    collect(root)
    return terms


def drop_zero_adds(graph: fx.Graph) -> bool:
    """``0 + x`` / ``x + 0`` → ``x`` (MobileOne starts its branch sum at ``0``)."""
    changed = False
    for node in list(graph.nodes):
        if node.op == "call_function" and node.target in ADD and not node.kwargs:
            if len(node.args) != 2:
                continue
            a, b = node.args
            keep = b if is_zero(a) else a if is_zero(b) else None
            if isinstance(keep, fx.Node) and not any(_in_place(u) for u in node.users):
                node.replace_all_uses_with(keep)
                graph.erase_node(node)
                changed = True
    return changed


def _in_place(node: fx.Node) -> bool:
    """An op that writes into its first argument (``x.add_(…)``, ``x += …`` on a tensor)."""
    if node.op == "call_method":
        return str(node.target).endswith("_") and not str(node.target).startswith("__")
    return node.op == "call_function" and node.target in _IN_PLACE_OPS


_IN_PLACE_OPS = {
    operator.iadd, operator.isub, operator.imul, operator.itruediv, operator.ifloordiv,
    operator.imod, operator.ipow, operator.iand, operator.ior, operator.ixor, operator.imatmul,
}  # fmt: skip
