"""Fold BatchNorm call sites in an fx graph: producer, concat-split, identity branch, consumer.

Decisions are made per call site (graph node), never per module: a folded layer is always a
new module bound to that call site (the original is never modified), so a Conv called twice
gets one folded copy per call site, and a Conv whose output is also used elsewhere keeps its
BN. Layout ops between a Linear and its BN (LeViT's ``bn(x.flatten(0, 1)).reshape_as(x)``) are
followed only when the recorded shapes prove the feature axis lands on BN's channel axis.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import operator
from typing import Any

import torch
from torch import fx, nn

from bnfold import patterns
from bnfold.report import ReportEntry
from bnfold.torch import layers
from bnfold.torch.registry import BNMatch, is_batchnorm_like, match_batchnorm
from bnfold.torch.tracing import Shapes

logger = logging.getLogger(__name__)

_LAYOUT_METHODS = {"contiguous", "flatten", "reshape", "view", "transpose", "permute", "squeeze"}
_LAYOUT_METHODS |= {"unsqueeze"}
_LAYOUT_FUNCTIONS = {torch.flatten, torch.reshape, torch.transpose, torch.permute, torch.squeeze}
_LAYOUT_FUNCTIONS |= {torch.unsqueeze}
_CAT = {torch.cat, torch.concat, torch.concatenate}
_ADD = {operator.add, torch.add}
_SHAPE_ATTRS = {"shape", "dtype", "device", "ndim", "is_cuda", "layout"}


@dataclasses.dataclass
class Outcome:
    """What happened to one BN call site; ``module_id`` ties it to the BN module object."""

    module_id: int
    entry: ReportEntry


class GraphFolder:
    """Folds every BN call site of one region's GraphModule (in place on that GraphModule)."""

    def __init__(self, gm: fx.GraphModule, scope: str, shapes: Shapes | None = None) -> None:
        self.gm = gm
        self.scope = scope
        self.shapes = shapes or {}
        self.outcomes: list[Outcome] = []
        self._matches: dict[int, BNMatch | None] = {}

    # -- entry point ------------------------------------------------------------------
    def run(self) -> bool:
        """Fold what can be folded; returns whether the graph changed."""
        changed = False
        bn_nodes = [n for n in self.gm.graph.nodes if self._is_bn_node(n)]
        counts: dict[str, int] = {}
        for node in bn_nodes:
            counts[node.target] = counts.get(node.target, 0) + 1
        seen: dict[str, int] = {}
        for node in bn_nodes:
            module = self._mod(node)
            seen[node.target] = seen.get(node.target, 0) + 1
            name = self._full(node.target)
            if counts[node.target] > 1:
                name = f"{name}#{seen[node.target]}"
            entry = self._fold_one(node, module, name)
            changed |= entry.status == "folded"
            self.outcomes.append(Outcome(id(module), entry))
        if changed:
            self.gm.graph.lint()
            self.gm.delete_all_unused_submodules()
            self.gm.recompile()
        return changed

    def _fold_one(self, node: fx.Node, module: nn.Module, name: str) -> ReportEntry:
        kind = type(module).__name__
        match = self._match(module)
        if match is None or not match.foldable:
            reason = match.reason if match else "not recognised as BatchNorm"
            return ReportEntry(name, kind, "left", reason=reason, scope=self.scope)
        if len(node.args) != 1 or node.kwargs or not isinstance(node.args[0], fx.Node):
            why = "BN called with extra arguments"
            return ReportEntry(name, kind, "left", reason=why, scope=self.scope)
        reasons = []
        for attempt in (self._producer, self._concat, self._identity_branch, self._consumer):
            try:
                result = attempt(node, match)
            except Exception as exc:  # never let one odd call site abort the whole fold
                logger.warning("bnfold: %s failed on %s: %s", attempt.__name__, name, exc)
                result = f"internal error while matching ({type(exc).__name__}: {exc})"
            if isinstance(result, tuple):
                into, pattern = result
                return ReportEntry(name, kind, "folded", into, pattern, scope=self.scope)
            if result:
                reasons.append(result)
        return ReportEntry(name, kind, "left", reason=reasons[0], scope=self.scope)

    # -- patterns ---------------------------------------------------------------------
    def _producer(self, bn: fx.Node, match: BNMatch) -> tuple[str, str] | str:
        found = self._producer_chain(bn)
        if isinstance(found, str):
            return found
        producer, chain = found
        layer = self._mod(producer)
        kind = layers.layer_kind(layer)
        why = self._check_axis(producer, chain, bn, kind)
        if why:
            return why
        for node, nxt in zip([producer, *chain], [*chain, bn], strict=True):
            users = self._real_users(node)
            if users != [nxt]:
                return f"the {kind} output is also used by {self._describe(users, nxt)}"
        assert match.params is not None
        s, t = match.params.scale_shift()
        new = layers.fold_into_producer(layer, s, t)
        if isinstance(new, str):
            return new
        if layers.overrides_forward(layer):
            shape = self._shape(producer.args[0])
            if shape is None or not layers.probe_producer(layer, new, shape, s, t):
                return f"{type(layer).__name__} has its own forward and the fold was not proven"
        into = self._install(producer, new)
        self._drop_bn(bn, match.remainder)
        return into, f"{kind}→BN"

    def _concat(self, bn: fx.Node, match: BNMatch) -> tuple[str, str] | str | None:
        cat = bn.args[0]
        if not (cat.op == "call_function" and cat.target in _CAT):
            return None
        tensors = cat.args[0] if cat.args else cat.kwargs.get("tensors")
        dim = cat.args[1] if len(cat.args) > 1 else cat.kwargs.get("dim", 0)
        ndim = self._ndim(cat)
        if not isinstance(tensors, (list, tuple)) or not isinstance(dim, int):
            return "BN follows a Concat of unknown inputs"
        if (dim if dim >= 0 or ndim is None else dim + ndim) != 1:
            return "BN follows a Concat that is not on the channel axis"
        if self._real_users(cat) != [bn]:
            return "the Concat output is also used elsewhere"
        parts: list[tuple[fx.Node, nn.Module]] = []
        for t in tensors:
            layer = self._mod(t) if isinstance(t, fx.Node) and t.op == "call_module" else None
            kind = layers.layer_kind(layer) if layer is not None else None
            if kind is None or (kind == "Linear" and ndim != 2):
                return "a Concat input is not produced by a Conv/ConvTranspose"
            if tensors.count(t) != 1 or self._real_users(t) != [cat] or self._check_layer(layer):
                return "a Concat input is also used elsewhere"
            parts.append((t, layer))
        assert match.params is not None
        s, t = match.params.scale_shift()
        split = patterns.split_concat(s, t, [layers.out_channels(m) for _, m in parts])
        if isinstance(split, str):
            return split
        news = []
        for (_node, layer), (s_i, t_i) in zip(parts, split, strict=True):
            new = layers.fold_into_producer(layer, s_i, t_i)
            if isinstance(new, str):
                return new
            news.append(new)
        into = [self._install(node, new) for (node, _), new in zip(parts, news, strict=True)]
        self._drop_bn(bn, match.remainder)
        return ", ".join(into), "Concat→BN (split)"

    def _identity_branch(self, bn: fx.Node, match: BNMatch) -> tuple[str, str] | str | None:
        users = self._real_users(bn)
        if match.remainder is not None or len(users) != 1 or not _is_add(users[0]):
            return None
        add = users[0]
        if len(add.args) != 2 or not all(isinstance(a, fx.Node) for a in add.args):
            return None
        x = bn.args[0]
        for term in self._add_terms(add):
            if not (term.op == "call_module" and term.args and term.args[0] is x):
                continue
            conv = self._mod(term)
            assert match.params is not None
            if layers.identity_conv_reason(conv, match.params.channels) or self._check_layer(conv):
                continue
            if len(term.users) != 1 or not self._same_shape(term, x):
                continue
            new = layers.fold_identity_into_conv(conv, *match.params.scale_shift())
            if isinstance(new, str):
                return new
            into = self._install(term, new)
            other = add.args[0] if add.args[1] is bn else add.args[1]
            add.replace_all_uses_with(other)
            self.gm.graph.erase_node(add)
            self.gm.graph.erase_node(bn)
            return into, "Conv+BN(identity)→Conv (re-param)"
        return None

    def _consumer(self, bn: fx.Node, match: BNMatch) -> tuple[str, str] | str | None:
        users = self._real_users(bn)
        if match.remainder is not None or len(users) != 1 or users[0].op != "call_module":
            return None
        user = users[0]
        layer = self._mod(user)
        kind = layers.layer_kind(layer)
        if kind not in ("Conv", "Linear") or user.args[0] is not bn or len(user.args) != 1:
            return None
        ndim = self._ndim(bn.args[0])
        want = 2 if kind == "Linear" else layer.weight.dim()
        if ndim != want or self._check_layer(layer) or bn in self._outputs():
            return None
        assert match.params is not None
        new = layers.fold_into_consumer(layer, *match.params.scale_shift())
        if isinstance(new, str):
            return new
        into = self._install(user, new)
        self._drop_bn(bn, None)
        return into, f"BN→{kind} (consumer)"

    # -- checks -----------------------------------------------------------------------
    def _producer_chain(self, bn: fx.Node) -> tuple[fx.Node, list[fx.Node]] | str:
        cur, chain = bn.args[0], []
        while isinstance(cur, fx.Node):
            if cur.op == "call_module" and layers.layer_kind(self._mod(cur)):
                if len(cur.args) != 1 or cur.kwargs:
                    return "the layer is called with extra arguments"
                return cur, chain[::-1]
            if not _is_layout(cur):
                break
            chain.append(cur)
            cur = cur.args[0]
        return (
            f"BN input comes from {_describe_node(cur, self.gm)}, not a Conv/ConvTranspose/Linear"
        )

    def _check_layer(self, layer: nn.Module) -> str | None:
        if layers.overrides_forward(layer):
            return f"{type(layer).__name__} has its own forward"
        return None

    def _check_axis(
        self, producer: fx.Node, chain: list[fx.Node], bn: fx.Node, kind: str
    ) -> str | None:
        out_nd = self._ndim(producer)
        if out_nd is None:
            if chain or kind == "Linear":
                return f"{kind}→BN needs example_inputs to prove which axis BN normalises"
            return None
        weight_nd = self._mod(producer).weight.dim()
        if kind != "Linear" and out_nd != weight_nd:
            return f"unbatched {kind} output: BN does not normalise its channel axis"
        axes = {out_nd - 1} if kind == "Linear" else {1}
        prev = producer
        for node in chain:
            axes = self._map_axes(node, prev, axes)
            if not axes:
                return f"the {kind}'s feature axis does not survive {_describe_node(node, self.gm)}"
            prev = node
        bn_nd = self._ndim(bn.args[0])
        if bn_nd is None or bn_nd < 2 or 1 not in axes:
            return f"BN normalises a different axis than the {kind}'s output channels"
        return None

    def _map_axes(self, node: fx.Node, prev: fx.Node, axes: set[int]) -> set[int]:
        src, dst = self._shape(prev), self._shape(node)
        if src is None or dst is None:
            return set()
        name = node.target if node.op == "call_method" else getattr(node.target, "__name__", "")
        if name == "contiguous":
            return axes
        if name in ("transpose", "permute"):
            perm = _permutation(node, len(src))
            return {perm.index(a) for a in axes} if perm else set()
        out: set[int] = set()
        for a in axes:  # reshape-like: the feature coordinate survives iff the inner block does
            inner = math.prod(src[a + 1 :])
            out |= {
                j for j in range(len(dst)) if dst[j] == src[a] and math.prod(dst[j + 1 :]) == inner
            }
        return out

    # -- graph helpers ----------------------------------------------------------------
    def _install(self, node: fx.Node, new: nn.Module) -> str:
        """Bind ``new`` to this call site only; returns the full path of the new module."""
        same = [n for n in self.gm.graph.nodes if n.op == "call_module" and n.target == node.target]
        target = node.target
        if len(same) > 1:
            base, k = f"{node.target}_bnfold", 1
            while _has_path(self.gm, f"{base}{k}"):
                k += 1
            target = f"{base}{k}"
        self.gm.add_submodule(target, new)
        node.target = target
        return self._full(target)

    def _drop_bn(self, bn: fx.Node, remainder: nn.Module | None) -> None:
        if remainder is None:
            bn.replace_all_uses_with(bn.args[0])
            self.gm.graph.erase_node(bn)
        else:
            self._install(bn, remainder)

    def _add_terms(self, add: fx.Node) -> list[fx.Node]:
        root = add
        while len(root.users) == 1 and _is_add(next(iter(root.users))):
            root = next(iter(root.users))
        terms: list[fx.Node] = []

        def collect(node: fx.Node) -> None:
            for arg in node.args:
                if not isinstance(arg, fx.Node):
                    continue
                if _is_add(arg) and len(arg.users) == 1:
                    collect(arg)
                else:
                    terms.append(arg)

        collect(root)
        return terms

    def _real_users(self, node: fx.Node) -> list[fx.Node]:
        return [u for u in node.users if not _is_shape_use(u, node)]

    def _describe(self, users: list[fx.Node], expected: fx.Node) -> str:
        others = [u for u in users if u is not expected]
        return ", ".join(_describe_node(u, self.gm) for u in others[:3]) or "nothing else"

    def _outputs(self) -> set[fx.Node]:
        out = next(n for n in reversed(self.gm.graph.nodes) if n.op == "output")
        return set(out.all_input_nodes)

    def _shape(self, node: fx.Node) -> tuple[int, ...] | None:
        shapes = self.shapes.get(node)
        return next(iter(shapes)) if shapes and len(shapes) == 1 else None

    def _ndim(self, node: fx.Node) -> int | None:
        ranks = {len(s) for s in self.shapes.get(node, ())}
        return ranks.pop() if len(ranks) == 1 else None

    def _same_shape(self, a: fx.Node, b: fx.Node) -> bool:
        if not self.shapes:
            return True
        sa, sb = self.shapes.get(a), self.shapes.get(b)
        return sa is not None and sa == sb

    def _is_bn_node(self, node: fx.Node) -> bool:
        return node.op == "call_module" and is_batchnorm_like(self._mod(node))

    def _match(self, module: nn.Module) -> BNMatch | None:
        if id(module) not in self._matches:
            self._matches[id(module)] = match_batchnorm(module)
        return self._matches[id(module)]

    def _mod(self, node: fx.Node) -> nn.Module:
        return self.gm.get_submodule(node.target)

    def _full(self, target: str) -> str:
        return f"{self.scope}.{target}" if self.scope else target


def _is_layout(node: fx.Node) -> bool:
    if node.op == "call_method":
        return node.target in _LAYOUT_METHODS
    return node.op == "call_function" and node.target in _LAYOUT_FUNCTIONS


def _is_add(node: fx.Node) -> bool:
    if node.kwargs:
        return False
    if node.op == "call_function" and node.target in _ADD:
        return len(node.args) == 2
    return node.op == "call_method" and node.target == "add" and len(node.args) == 2


def _is_shape_use(user: fx.Node, node: fx.Node) -> bool:
    """Uses that read only the tensor's metadata, unchanged by folding."""
    if user.op == "call_method" and user.target in ("size", "dim", "numel"):
        return user.args[0] is node and all(a is not node for a in user.args[1:])
    if user.op == "call_method" and user.target in ("reshape_as", "view_as", "expand_as"):
        return user.args[0] is not node
    if user.op == "call_function" and user.target is getattr:
        return user.args[0] is node and user.args[1] in _SHAPE_ATTRS
    return False


def _permutation(node: fx.Node, ndim: int) -> list[int] | None:
    args = list(node.args[1:])
    if len(args) == 1 and isinstance(args[0], (list, tuple)):
        args = list(args[0])
    if not all(isinstance(a, int) for a in args):
        return None
    name = node.target if node.op == "call_method" else node.target.__name__
    if name == "transpose" and len(args) == 2:
        d0, d1 = (a % ndim for a in args)
        perm = list(range(ndim))
        perm[d0], perm[d1] = perm[d1], perm[d0]
        return perm
    if name == "permute" and len(args) == ndim:
        return [a % ndim for a in args]
    return None


def _has_path(gm: fx.GraphModule, target: str) -> bool:
    try:
        gm.get_submodule(target)
    except AttributeError:
        return False
    return True


def _describe_node(node: Any, gm: fx.GraphModule) -> str:
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
