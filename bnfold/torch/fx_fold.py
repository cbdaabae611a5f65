"""Fold BatchNorm call sites in an fx graph: into producers (through layout ops, channel Concats
and sums), into an identity-branch sibling, or into a consumer.

Decisions are made per call site (graph node), never per module: a folded layer is always a
new module bound to that call site (the original is never modified), so a Conv called twice
gets one folded copy per call site, and a Conv whose output is also used elsewhere keeps its
BN. Layout ops between a layer and its BN (LeViT's ``bn(x.flatten(0, 1)).reshape_as(x)``) are
followed only when shapes prove the layer's feature axis lands on BN's channel axis one to
one; those shapes come from example inputs or from :mod:`bnfold.torch.fx_shapes`.
Folds repeat to a fixpoint: a RepVGG identity BN folds once its sibling Conv's BN has.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import numpy as np
from torch import fx, nn

from bnfold import patterns
from bnfold.report import ReportEntry
from bnfold.torch import fx_consumer, fx_reparam, layers
from bnfold.torch.fx_axes import map_axis_back
from bnfold.torch.fx_graph import (
    CAT,
    describe_node,
    drop_zero_adds,
    has_path,
    is_add,
    is_layout,
    output_nodes,
    real_users,
)
from bnfold.torch.registry import BNMatch, is_batchnorm_like, match_batchnorm

logger = logging.getLogger(__name__)

Shapes = dict[fx.Node, set[Any]]  # per node: shapes seen (tuples, None dims allowed; None: unknown)
Install = tuple[fx.Node, nn.Module]
MAX_DEPTH = 12


@dataclasses.dataclass
class Outcome:
    """What happened to one BN call site; ``module_id`` ties it to the BN module object."""

    module_id: int
    entry: ReportEntry


class GraphFolder:
    """Folds every BN call site of one region's GraphModule (in place on that GraphModule)."""

    def __init__(
        self,
        gm: fx.GraphModule,
        scope: str,
        shapes: Shapes | None = None,
        only: set[str] | None = None,
    ) -> None:
        self.gm = gm
        self.scope = scope
        self.shapes = shapes or {}
        self.only = only  # replay: fold just these call sites (names as reported)
        self.outcomes: list[Outcome] = []
        self._matches: dict[int, BNMatch | None] = {}

    # -- entry point ------------------------------------------------------------------
    def run(self) -> bool:
        """Fold what can be folded; returns whether the graph changed."""
        changed = drop_zero_adds(self.gm.graph)
        sites = self._sites()
        results: dict[fx.Node, ReportEntry] = {}
        pending = list(sites)
        while pending:
            progress = False
            changed |= fx_reparam.absorb_identity_terms(self)
            for node in list(pending):
                module, name = sites[node]
                entry = self._fold_one(node, module, name)
                results[node] = entry
                if entry.status == "folded":
                    pending.remove(node)
                    progress = changed = True
            if not progress:
                break
        for node, (module, _) in sites.items():
            self.outcomes.append(Outcome(id(module), results[node]))
        changed |= fx_reparam.merge_parallel_convs(self)
        if changed:
            self.gm.graph.lint()
            self.gm.delete_all_unused_submodules()
            self.gm.recompile()
        return changed

    def _sites(self) -> dict[fx.Node, tuple[nn.Module, str]]:
        bn_nodes = [n for n in self.gm.graph.nodes if self.is_bn(n)]
        counts: dict[str, int] = {}
        for node in bn_nodes:
            counts[node.target] = counts.get(node.target, 0) + 1
        seen: dict[str, int] = {}
        sites = {}
        for node in bn_nodes:
            seen[node.target] = seen.get(node.target, 0) + 1
            name = self.full(node.target)
            if counts[node.target] > 1:
                name = f"{name}#{seen[node.target]}"
            sites[node] = (self.mod(node), name)
        return sites

    def _fold_one(self, node: fx.Node, module: nn.Module, name: str) -> ReportEntry:
        kind = type(module).__name__
        match = self._match(module)
        if match is None or not match.foldable:
            reason = match.reason if match else "not recognised as BatchNorm"
            return ReportEntry(name, kind, "left", reason=reason, scope=self.scope)
        if self.only is not None and name not in self.only:
            why = "not folded when it was saved"
            return ReportEntry(name, kind, "left", reason=why, scope=self.scope)
        if len(node.args) != 1 or node.kwargs or not isinstance(node.args[0], fx.Node):
            why = "BN called with extra arguments"
            return ReportEntry(name, kind, "left", reason=why, scope=self.scope)
        reasons = []
        for attempt in (self._producer, self._identity_branch, self._consumer):
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

    # -- producer side: BN input ← layout / Concat / Add ← layers ------------------------
    def _producer(self, bn: fx.Node, match: BNMatch) -> tuple[str, str] | str:
        assert match.params is not None
        s, t = match.params.scale_shift()
        x = bn.args[0]
        dims = self.shape(x)
        if dims is not None and len(dims) < 2:
            return "BN input has rank < 2"
        kinds: set[str] = set()
        plan = self._plan_output(x, bn, 1, s, t, 0, kinds)
        if isinstance(plan, str):
            return plan
        news = {id(node): new for node, new in plan}
        into = [self.install(node, news[id(node)]) for node, _ in plan]
        self.drop_bn(bn, match.remainder)
        layer = "/".join(sorted(k for k in kinds if k in ("Conv", "ConvTranspose", "Linear")))
        if "Add" in kinds:
            pattern = f"Add({layer} terms)→BN"
        elif "Concat" in kinds:
            pattern = "Concat→BN (split)"
        else:
            pattern = f"{layer}→BN"
        return ", ".join(into), pattern

    def _plan_output(
        self,
        value: fx.Node,
        reader: fx.Node,
        axis: int,
        s: np.ndarray,
        t: np.ndarray,
        depth: int,
        kinds: set[str],
    ) -> list[Install] | str:
        """Installs making ``value`` carry ``s·value + t`` along ``axis``, or why not."""
        if depth > MAX_DEPTH:
            return "too many ops between the layer and the BN"
        if not isinstance(value, fx.Node):
            return "BN input is a constant"
        users = real_users(value)
        if value in output_nodes(self.gm.graph):
            return f"{describe_node(value, self.gm)} is also a model output"
        if users != [reader]:
            others = [u for u in users if u is not reader]
            what = ", ".join(describe_node(u, self.gm) for u in others[:3]) or "nothing"
            return f"{describe_node(value, self.gm)} is also used by {what}"
        if value.op == "call_module" and layers.layer_kind(self.mod(value)):
            return self._plan_layer(value, axis, s, t, depth, kinds)
        if is_layout(value) or (value.op == "call_module" and type(self.mod(value)) is nn.Flatten):
            return self._plan_layout(value, axis, s, t, depth, kinds)
        if value.op == "call_function" and value.target in CAT:
            return self._plan_concat(value, axis, s, t, depth, kinds)
        if is_add(value):
            return self._plan_add(value, axis, s, t, depth, kinds)
        return (
            f"BN input comes from {describe_node(value, self.gm)}, not a Conv/ConvTranspose/Linear"
        )

    def _plan_layer(
        self, node: fx.Node, axis: int, s: np.ndarray, t: np.ndarray, depth: int, kinds: set[str]
    ) -> list[Install] | str:
        layer = self.mod(node)
        kind = layers.layer_kind(layer)
        assert kind is not None
        if len(node.args) != 1 or node.kwargs:
            return "the layer is called with extra arguments"
        rank = self.ndim(node)
        if rank is None:
            if depth > 0 or kind == "Linear":
                return f"{kind}→BN needs example_inputs to prove which axis BN normalises"
        elif kind == "Linear":
            if axis != rank - 1:
                return f"BN normalises a different axis than the {kind}'s output channels"
        elif rank != layer.weight.dim():
            return f"unbatched {kind} output: BN does not normalise its channel axis"
        elif axis != 1:
            return f"BN normalises a different axis than the {kind}'s output channels"
        new = layers.fold_into_producer(layer, s, t)
        if isinstance(new, str):
            return new
        if layers.overrides_forward(layer):
            shape = self.shape(node.args[0])
            if shape is None or None in shape or not layers.probe_producer(layer, new, shape, s, t):
                return f"{type(layer).__name__} has its own forward and the fold was not proven"
        kinds.add(kind)
        return [(node, new)]

    def _plan_layout(
        self, node: fx.Node, axis: int, s: np.ndarray, t: np.ndarray, depth: int, kinds: set[str]
    ) -> list[Install] | str:
        src = node.args[0]
        if not isinstance(src, fx.Node):
            return "a layout op of a constant"
        out, inp = self.shape(node), self.shape(src)
        where = describe_node(node, self.gm)
        if out is None or inp is None:
            return f"BN follows {where}: needs example_inputs to prove which axis BN normalises"
        module = self.mod(node) if node.op == "call_module" else None
        new_axis = map_axis_back(node, out, inp, axis, len(s), module)
        if new_axis is None:
            return f"the layer's feature axis does not survive {where}"
        return self._plan_output(src, node, new_axis, s, t, depth + 1, kinds)

    def _plan_concat(
        self, cat: fx.Node, axis: int, s: np.ndarray, t: np.ndarray, depth: int, kinds: set[str]
    ) -> list[Install] | str:
        tensors = cat.args[0] if cat.args else cat.kwargs.get("tensors")
        dim = cat.args[1] if len(cat.args) > 1 else cat.kwargs.get("dim", 0)
        rank = self.ndim(cat)
        if not isinstance(tensors, (list, tuple)) or not isinstance(dim, int):
            return "BN follows a Concat of unknown inputs"
        if (dim if dim >= 0 or rank is None else dim + rank) != axis:
            return "BN follows a Concat that is not on the channel axis"
        sizes = []
        for part in tensors:
            if not isinstance(part, fx.Node) or tensors.count(part) != 1:
                return "a Concat input is also used elsewhere"
            dims = self.shape(part)
            size = dims[axis] if dims is not None and len(dims) > axis else None
            if size is None and part.op == "call_module" and layers.layer_kind(self.mod(part)):
                size = layers.out_channels(self.mod(part)) if axis == 1 else None
            if size is None:
                return "a Concat input has an unknown channel count"
            sizes.append(size)
        split = patterns.split_concat(s, t, sizes)
        if isinstance(split, str):
            return split
        plan: list[Install] = []
        for part, (s_i, t_i) in zip(tensors, split, strict=True):
            sub = self._plan_output(part, cat, axis, s_i, t_i, depth + 1, kinds)
            if isinstance(sub, str):
                return f"a Concat input: {sub}"
            plan.extend(sub)
        kinds.add("Concat")
        return plan

    def _plan_add(
        self, add: fx.Node, axis: int, s: np.ndarray, t: np.ndarray, depth: int, kinds: set[str]
    ) -> list[Install] | str:
        out = self.shape(add)
        terms = add.args
        if out is None or not all(isinstance(a, fx.Node) for a in terms) or terms[0] is terms[1]:
            return f"BN follows {describe_node(add, self.gm)} whose terms are not proven layers"
        plan: list[Install] = []
        for term, (s_i, t_i) in zip(terms, patterns.split_sum(s, t, 2), strict=True):
            dims = self.shape(term)
            if dims is None or len(dims) != len(out) or dims[axis] != len(s):
                return "a sum term is broadcast along the channel axis (or its shape is unknown)"
            sub = self._plan_output(term, add, axis, s_i, t_i, depth + 1, kinds)
            if isinstance(sub, str):
                return f"a sum term: {sub}"
            plan.extend(sub)
        kinds.add("Add")
        return plan

    def _identity_branch(self, bn: fx.Node, match: BNMatch) -> tuple[str, str] | str | None:
        return fx_reparam.identity_branch(self, bn, match)

    # -- consumer side ----------------------------------------------------------------
    def _consumer(self, bn: fx.Node, match: BNMatch) -> tuple[str, str] | None:
        return fx_consumer.fold_into_consumer(self, bn, match)

    # -- graph helpers ----------------------------------------------------------------
    def install(self, node: fx.Node, new: nn.Module) -> str:
        """Bind ``new`` to this call site only; returns the full path of the new module."""
        same = [n for n in self.gm.graph.nodes if n.op == "call_module" and n.target == node.target]
        target = node.target
        if len(same) > 1:
            base, k = f"{node.target}_bnfold", 1
            while has_path(self.gm, f"{base}{k}"):
                k += 1
            target = f"{base}{k}"
        self.gm.add_submodule(target, new)
        node.target = target
        return self.full(target)

    def drop_bn(self, bn: fx.Node, remainder: nn.Module | None) -> None:
        if remainder is None:
            bn.replace_all_uses_with(bn.args[0])
            self.gm.graph.erase_node(bn)
        else:
            self.install(bn, remainder)

    def shape(self, node: Any) -> tuple[int | None, ...] | None:
        shapes = self.shapes.get(node) if isinstance(node, fx.Node) else None
        if not shapes or len(shapes) != 1 or None in shapes:
            return None
        return next(iter(shapes))

    def ndim(self, node: Any) -> int | None:
        shapes = self.shapes.get(node) if isinstance(node, fx.Node) else None
        if not shapes or None in shapes:
            return None
        ranks = {len(s) for s in shapes}
        return ranks.pop() if len(ranks) == 1 else None

    def is_bn(self, node: fx.Node) -> bool:
        return node.op == "call_module" and is_batchnorm_like(self.mod(node))

    def _match(self, module: nn.Module) -> BNMatch | None:
        if id(module) not in self._matches:
            self._matches[id(module)] = match_batchnorm(module)
        return self._matches[id(module)]

    def mod(self, node: fx.Node) -> nn.Module:
        return self.gm.get_submodule(node.target)

    def full(self, target: str) -> str:
        return f"{self.scope}.{target}" if self.scope else target
