"""Fold BN modules by proven adjacency, where no fx trace covers them.

From one recorded forward pass, a Conv/ConvTranspose/Linear call P and a BN call B are proven
adjacent when: each module is called exactly once; B's input tensor *is* P's output tensor;
every op that read that tensor ran inside B; and it is not a model output. The same holds for a
channel Concat of several such layer outputs (MixNet), each read only by the Concat. P is then
replaced (at every attribute path) by a folded copy and B by what remains of it (its
activation, or ``nn.Identity``). Callers verify numerically and roll back what does not match.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import torch
from torch import nn

from bnfold import patterns
from bnfold.report import ReportEntry
from bnfold.torch import layers
from bnfold.torch.recording import ModuleCall, Recording
from bnfold.torch.registry import BNMatch, match_batchnorm

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class Swap:
    """A module and the replacement bound at all of its attribute paths."""

    old: nn.Module
    new: nn.Module
    paths: list[str]


@dataclasses.dataclass
class AdjacencyFold:
    """One proven fold of a BN into one or more layers, ready to apply or undo."""

    bn: nn.Module
    swaps: list[Swap]
    entry: ReportEntry

    def apply(self, root: nn.Module) -> None:
        for swap in self.swaps:
            for path in swap.paths:
                set_module(root, path, swap.new)

    def undo(self, root: nn.Module) -> None:
        for swap in self.swaps:
            for path in swap.paths:
                set_module(root, path, swap.old)


def set_module(root: nn.Module, path: str, module: nn.Module) -> None:
    """Bind ``module`` at dotted ``path`` under ``root``."""
    parent_path, _, name = path.rpartition(".")
    parent = root.get_submodule(parent_path) if parent_path else root
    setattr(parent, name, module)


def plan_adjacency_folds(
    model: nn.Module, rec: Recording, bn_modules: list[nn.Module]
) -> tuple[list[AdjacencyFold], list[tuple[nn.Module, ReportEntry]]]:
    """Proven folds for ``bn_modules``, and a 'left' entry (with reason) for each other one."""
    planner = _Planner(model, rec)
    folds: list[AdjacencyFold] = []
    left: list[tuple[nn.Module, ReportEntry]] = []
    for bn in bn_modules:
        bn_paths = planner.paths.get(id(bn), [])
        name = bn_paths[0] if bn_paths else f"<unregistered {type(bn).__name__}>"
        try:
            plan = planner.plan(bn, name)
        except Exception as exc:  # never let one odd module abort the whole fold
            logger.warning("bnfold: adjacency planning failed on %s: %s", name, exc)
            plan = f"internal error while matching ({type(exc).__name__}: {exc})"
        if isinstance(plan, str):
            left.append((bn, ReportEntry(name, type(bn).__name__, "left", reason=plan)))
        else:
            planner.claimed.update(id(s.old) for s in plan.swaps)
            folds.append(plan)
    return folds, left


class _Planner:
    def __init__(self, model: nn.Module, rec: Recording) -> None:
        self.rec = rec
        self.paths = _paths(model)
        self.claimed: set[int] = set()

    def plan(self, bn: nn.Module, name: str) -> AdjacencyFold | str:
        match = match_batchnorm(bn)
        if match is None or not match.foldable or match.params is None:
            return match.reason if match and match.reason else "not recognised as BatchNorm"
        calls = self.rec.calls_of(bn)
        if not calls:
            return "not executed on the example inputs and not in code torch.fx can trace"
        if len(calls) > 1:
            return f"the BN module is called {len(calls)} times (no trace to tell call sites apart)"
        call = calls[0]
        x = call.first_input
        if x is None or len(call.args) != 1:
            return "BN is called with extra or non-tensor arguments"
        if not self._only_inside(x, call):
            return "the BN input is also used outside the BN"
        if not self.paths.get(id(bn)):
            return "the BN is not reachable by an attribute path"
        if id(x) in self.rec.cat_inputs:
            return self._plan_concat(bn, name, match, x)
        found = self._layer_output(x)
        if isinstance(found, str):
            return found
        s, t = match.params.scale_shift()
        swap = self._fold(found, x, s, t)
        if isinstance(swap, str):
            return swap
        kind = layers.layer_kind(swap.old)
        entry = ReportEntry(
            name, type(bn).__name__, "folded", swap.paths[0], f"{kind}→BN (adjacency)"
        )
        return AdjacencyFold(bn, [swap, self._bn_swap(bn, match)], entry)

    def _plan_concat(
        self, bn: nn.Module, name: str, match: BNMatch, x: torch.Tensor
    ) -> AdjacencyFold | str:
        tensors, dim = self.rec.cat_inputs[id(x)]
        if dim % max(x.dim(), 1) != 1 or x.dim() < 2:
            return "BN follows a Concat that is not on the channel axis"
        assert match.params is not None
        s, t = match.params.scale_shift()
        split = patterns.split_concat(s, t, [int(p.shape[1]) for p in tensors])
        if isinstance(split, str):
            return split
        swaps = []
        for part, (s_i, t_i) in zip(tensors, split, strict=True):
            uses = self.rec.uses.get(id(part), [])
            if len(uses) != 1 or id(part) in self.rec.output_ids:
                return "a Concat input is also used elsewhere"
            found = self._layer_output(part)
            if isinstance(found, str):
                return "a Concat input: " + found
            swap = self._fold(found, part, s_i, t_i)
            if isinstance(swap, str):
                return swap
            swaps.append(swap)
        into = ", ".join(sw.paths[0] for sw in swaps)
        entry = ReportEntry(name, type(bn).__name__, "folded", into, "Concat→BN (split, adjacency)")
        return AdjacencyFold(bn, [*swaps, self._bn_swap(bn, match)], entry)

    def _layer_output(self, x: torch.Tensor) -> ModuleCall | str:
        where = self.rec.produced_in.get(id(x))
        producer = self.rec.calls[where] if where is not None else None
        if producer is None or layers.layer_kind(producer.module) is None:
            return "BN input is not produced by a Conv/ConvTranspose/Linear module call"
        kind = layers.layer_kind(producer.module)
        if len(self.rec.calls_of(producer.module)) != 1 or id(producer.module) in self.claimed:
            return f"the {kind} is called more than once (no trace to tell call sites apart)"
        if len(producer.outputs) != 1 or producer.outputs[0] is not x:
            return f"BN input is not the {kind}'s output tensor"
        return producer

    def _fold(
        self, producer: ModuleCall, x: torch.Tensor, s: np.ndarray, t: np.ndarray
    ) -> Swap | str:
        layer = producer.module
        kind = layers.layer_kind(layer)
        want = 2 if kind == "Linear" else layer.weight.dim()
        if x.dim() != want:
            return f"BN normalises a different axis than the {kind}'s output channels"
        new = layers.fold_into_producer(layer, s, t)
        if isinstance(new, str):
            return new
        if not self.paths.get(id(layer)):
            return f"the {kind} is not reachable by an attribute path"
        return Swap(layer, new, self.paths[id(layer)])

    def _only_inside(self, x: torch.Tensor, call: ModuleCall) -> bool:
        uses = self.rec.uses.get(id(x), [])
        return id(x) not in self.rec.output_ids and all(call.index in u.stack for u in uses)

    def _bn_swap(self, bn: nn.Module, match: BNMatch) -> Swap:
        new = match.remainder if match.remainder is not None else nn.Identity()
        return Swap(bn, new, self.paths[id(bn)])


def _paths(model: nn.Module) -> dict[int, list[str]]:
    out: dict[int, list[str]] = {}
    for path, module in model.named_modules(remove_duplicate=False):
        if path:
            out.setdefault(id(module), []).append(path)
    return out
