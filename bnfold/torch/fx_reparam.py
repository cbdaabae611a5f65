"""Re-parameterise multi-branch blocks in an fx graph (RepVGG, MobileOne, RepViT).

- ``identity_branch``: ``Conv(x) + BN(x)`` → ``Conv'(x)``: the BN-only branch becomes
  ``s`` on the Conv's identity tap and ``t`` in its bias (``patterns.fold_identity_branch``).
- ``absorb_identity_terms``: in a sum a BN reads, ``Conv(x) + x`` → ``Conv'(x)`` (1 on the
  identity tap), so the BN can fold into the remaining terms (RepViT).
- ``merge_parallel_convs``: ``Conv_k×k(x) + Conv_1×1(x)`` → one Conv, the 1×1 kernel
  zero-padded into the k×k kernel's aligned tap (``patterns.embed_kernel``).

Each is exact for any input the block accepts; each needs every rewritten output to be read
only by the sum (a Conv output used elsewhere keeps its branch).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from torch import fx, nn

from bnfold.torch import layers
from bnfold.torch.fx_graph import is_add, output_nodes, real_users, sum_root, sum_terms

if TYPE_CHECKING:
    from bnfold.torch.fx_fold import GraphFolder
    from bnfold.torch.registry import BNMatch

IDENTITY_PATTERN = "Conv+BN(identity)→Conv (re-param)"


def identity_branch(f: GraphFolder, bn: fx.Node, match: BNMatch) -> tuple[str, str] | str | None:
    """Fold a BN-only branch ``BN(x)`` into a Conv of the same ``x`` in the same sum."""
    users = real_users(bn)
    if match.remainder is not None or len(users) != 1 or not is_add(users[0]):
        return None
    add, x = users[0], bn.args[0]
    if add.args.count(bn) != 1 or bn in output_nodes(f.gm.graph):
        return None
    if not all(isinstance(a, fx.Node) for a in add.args):
        return None
    assert match.params is not None
    rank = f.ndim(x)
    for term, reader in sum_terms(sum_root(add)):
        if term is bn or not _conv_of(f, term, x):
            continue
        conv = f.mod(term)
        if layers.identity_conv_reason(conv, match.params.channels):
            continue
        if rank != conv.weight.dim() and (rank is not None or _rank_free(match.module)):
            continue  # unbatched input: BN would normalise another axis than the channels
        if not _exclusive(f, term, reader):
            continue
        new = layers.fold_identity_into_conv(conv, *match.params.scale_shift())
        if isinstance(new, str):
            return new
        into = f.install(term, new)
        _drop_term(f, add, bn)
        f.gm.graph.erase_node(bn)
        return into, IDENTITY_PATTERN
    return None


def absorb_identity_terms(f: GraphFolder) -> bool:
    """``Conv(x) + x`` → ``Conv'(x)`` inside sums that a BN reads; returns whether it changed."""
    changed = False
    for node in list(f.gm.graph.nodes):
        if node.op != "call_module" or not f.is_bn(node) or not node.args:
            continue
        top = node.args[0]
        while isinstance(top, fx.Node) and is_add(top) and real_users(top) == [node]:
            if not _absorb_one(f, top):
                break
            changed = True
            top = node.args[0]
    return changed


def _absorb_one(f: GraphFolder, top: fx.Node) -> bool:
    leaves = sum_terms(top)
    for term, add in leaves:
        for conv_out, reader in leaves:
            if conv_out is term or not _conv_of(f, conv_out, term):
                continue
            conv = f.mod(conv_out)
            if layers.identity_conv_reason(conv, int(conv.out_channels)):
                continue
            if f.ndim(term) != conv.weight.dim() or not _exclusive(f, conv_out, reader):
                continue
            ones = np.ones(int(conv.out_channels))
            new = layers.fold_identity_into_conv(conv, ones, np.zeros_like(ones))
            if isinstance(new, str) or add.args.count(term) != 1:
                continue
            if not all(isinstance(a, fx.Node) for a in add.args):
                continue
            f.install(conv_out, new)
            _drop_term(f, add, term)
            return True
    return False


def merge_parallel_convs(f: GraphFolder) -> bool:
    """Merge ``ConvA(x) + ConvB(x)`` into one Conv wherever the shapes agree."""
    changed = False
    for add in list(f.gm.graph.nodes):
        if add.graph is None or not is_add(add):
            continue
        a, b = add.args
        if not (isinstance(a, fx.Node) and isinstance(b, fx.Node)) or a is b:
            continue
        if not (_conv_of(f, a, None) and _conv_of(f, b, a.args[0])):
            continue
        if not (_exclusive(f, a, add) and _exclusive(f, b, add)):
            continue
        big, small = (a, b) if _kernel(f.mod(a)) >= _kernel(f.mod(b)) else (b, a)
        new = layers.merge_parallel(f.mod(big), f.mod(small))
        if isinstance(new, str):
            continue
        f.install(big, new)
        add.replace_all_uses_with(big)
        f.gm.graph.erase_node(add)
        f.gm.graph.erase_node(small)
        changed = True
    return changed


def _conv_of(f: GraphFolder, node: fx.Node, x: fx.Node | None) -> bool:
    """``node`` is a plain Conv call on ``x`` (any single input when ``x`` is None)."""
    if node.op != "call_module" or len(node.args) != 1 or node.kwargs:
        return False
    if x is not None and node.args[0] is not x:
        return False
    m = f.mod(node)
    return layers.layer_kind(m) == "Conv" and not layers.overrides_forward(m)


def _exclusive(f: GraphFolder, node: fx.Node, reader: fx.Node) -> bool:
    return real_users(node) == [reader] and node not in output_nodes(f.gm.graph)


def _drop_term(f: GraphFolder, add: fx.Node, term: fx.Node) -> None:
    """Replace ``add = term + other`` by ``other``."""
    other = add.args[1] if add.args[0] is term else add.args[0]
    assert isinstance(other, fx.Node)
    add.replace_all_uses_with(other)
    f.gm.graph.erase_node(add)


def _rank_free(bn: nn.Module) -> bool:
    """True when the BN accepts several ranks (BatchNorm1d: 2-D or 3-D)."""
    return not isinstance(bn, (nn.BatchNorm2d, nn.BatchNorm3d))


def _kernel(conv: nn.Module) -> int:
    return int(np.prod(conv.kernel_size))
