"""Run an original and a folded ExportedProgram and judge them with the ONNX side's rule.

Input sets: the program's recorded example inputs, then random float values of the same
shapes, then (with dynamic dims) a set synthesised at other sizes inside
``ep.range_constraints``. The judgement is ``bnfold.equivalence.compare``'s: per output
``max|Δ| ≤ max(atol + rtol·max|ref|, floor_factor·floor)``, the floor being the reference's
own change when float inputs move by 1–2 eps and its float weights by 1 eps.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch.export import ExportedProgram
from torch.utils._pytree import tree_flatten, tree_leaves, tree_unflatten

from bnfold.equivalence.compare import (
    DEFAULT_FLOOR_FACTOR,
    default_tolerance,
    judge,
    measure,
)
from bnfold.equivalence.result import OutputComparison, VerifyResult
from bnfold.torch.noise_floor import Inputs, noise_floors, run


class ProgramVerifyResult(VerifyResult):
    """A VerifyResult whose runs were in torch (``ep.module()``), not onnxruntime."""

    def describe(self) -> str:
        return super().describe().replace(", ORT_DISABLE_ALL", "")


class ProgramReference:
    """The original program's outputs on every input set, and its noise floor (computed once)."""

    def __init__(
        self,
        ep: ExportedProgram,
        *,
        seeds: int = 3,
        floor_factor: float = DEFAULT_FLOOR_FACTOR,
        arrays: Sequence[Mapping[str, np.ndarray]] = (),
        shapes: Mapping[str, Sequence[int]] | None = None,
    ) -> None:
        self.ep = ep
        self.floor_factor = floor_factor
        self.sets = input_sets(ep, seeds, arrays, shapes)
        module = copy.deepcopy(ep.module())  # copies: buffer updates never reach the caller
        self.outputs = [run(module, s) for s in self.sets]
        self.floors = noise_floors(module, self.sets, self.outputs)

    def compare(self, candidate: ExportedProgram, label: str = "folded") -> ProgramVerifyResult:
        module = copy.deepcopy(candidate.module())
        per_output: list[list[Any]] = [[] for _ in self.outputs[0]]
        for seed, (inputs, ref_outs) in enumerate(zip(self.sets, self.outputs, strict=True)):
            outs = run(module, inputs)
            for j, ref in enumerate(ref_outs):
                cand = outs[j] if j < len(outs) else np.zeros(0, dtype=ref.dtype)
                per_output[j].append(measure(ref, cand, default_tolerance(ref.dtype), seed))
        comparisons = []
        for j, runs in enumerate(per_output):
            judge(runs, self.floors[j], self.floor_factor)
            tol = default_tolerance(self.outputs[0][j].dtype)
            dtype = str(self.outputs[0][j].dtype)
            comparisons.append(OutputComparison(f"output {j}", dtype, tol.rtol, tol.atol, runs))
        return ProgramVerifyResult(
            reference="original program",
            candidate=label,
            provider="torch (ExportedProgram.module())",
            seeds=list(range(len(self.sets))),
            floor_factor=self.floor_factor,
            inputs=_describe_inputs(self.sets[0]),
            outputs=comparisons,
        )


def input_sets(
    ep: ExportedProgram,
    seeds: int,
    arrays: Sequence[Mapping[str, np.ndarray]] = (),
    shapes: Mapping[str, Sequence[int]] | None = None,
) -> list[Inputs]:
    """Example inputs (or synthesised ones) first, then random values; see the module doc.

    ``arrays`` (real data by user-input name, one set each) and ``shapes`` (sizes for
    synthesised inputs) replace the example inputs as the first sets.
    """
    if arrays:
        sets = [given_inputs(ep, a, shapes, seed=i) for i, a in enumerate(arrays)]
        return sets + [_random_like(sets[0], seed) for seed in range(1, seeds)]
    first = ep.example_inputs
    if first is None or shapes:
        first = synthesise(ep, seed=0, prefer_hint=True, shapes=shapes)
    sets: list[Inputs] = [(tuple(first[0]), dict(first[1]))]
    for seed in range(1, seeds):
        sets.append(_random_like(sets[0], seed))
    if _has_dynamic_dims(ep):
        with contextlib.suppress(Exception):  # an input or a dim it cannot size: skip the set
            sets.append(synthesise(ep, seed=seeds, prefer_hint=False))
    return sets


def synthesise(
    ep: ExportedProgram,
    seed: int,
    prefer_hint: bool,
    shapes: Mapping[str, Sequence[int]] | None = None,
) -> Inputs:
    """Inputs from the user-input placeholders' shapes, symbolic dims inside their ranges
    (or as ``shapes`` gives them, by input name)."""
    return given_inputs(ep, {}, shapes, seed=seed, prefer_hint=prefer_hint)


def given_inputs(
    ep: ExportedProgram,
    arrays: Mapping[str, np.ndarray],
    shapes: Mapping[str, Sequence[int]] | None,
    seed: int,
    prefer_hint: bool = True,
) -> Inputs:
    """One input set: ``arrays`` by user-input name, every other input synthesised."""
    gen = torch.Generator().manual_seed(seed)
    leaves = []
    for node in user_input_nodes(ep):
        val = node.meta.get("val")
        if not isinstance(val, torch.Tensor):
            raise ValueError(f"input {node.name} is not a tensor")
        if node.name in arrays:
            leaves.append(torch.from_numpy(np.ascontiguousarray(arrays[node.name])).to(val.dtype))
            continue
        wanted = (shapes or {}).get(node.name)
        shape = list(wanted) if wanted else [_dim(d, ep, prefer_hint) for d in val.shape]
        leaves.append(_tensor(shape, val.dtype, gen))
    args, kwargs = tree_unflatten(leaves, ep.call_spec.in_spec)
    return tuple(args), dict(kwargs)


def user_input_nodes(ep: ExportedProgram) -> list[torch.fx.Node]:
    """The placeholders of the program's user inputs, in call order."""
    names = set(ep.graph_signature.user_inputs)
    return [n for n in ep.graph_module.graph.nodes if n.op == "placeholder" and n.name in names]


def _dim(d: Any, ep: ExportedProgram, prefer_hint: bool) -> int:
    if isinstance(d, int):
        return d
    hint = getattr(d.node, "hint", None)
    if prefer_hint and isinstance(hint, int):
        return hint
    rng = ep.range_constraints.get(d.node.expr)
    if rng is None:
        if isinstance(hint, int):
            return hint
        raise ValueError(f"no range for dim {d}")
    lo, choice = int(rng.lower), 3 if hint != 3 else 5
    try:
        top = int(rng.upper)
    except (TypeError, ValueError, OverflowError, AttributeError):  # unbounded (int_oo)
        top = choice
    return max(lo, min(top, choice))


def _tensor(shape: list[int], dtype: torch.dtype, gen: torch.Generator) -> torch.Tensor:
    if dtype.is_floating_point:
        return torch.randn(shape, generator=gen).to(dtype)
    if dtype == torch.bool:
        return torch.ones(shape, dtype=dtype)
    return torch.zeros(shape, dtype=dtype)


def _random_like(inputs: Inputs, seed: int) -> Inputs:
    gen = torch.Generator().manual_seed(seed)
    leaves, spec = tree_flatten(inputs)
    new = [
        torch.randn(x.shape, generator=gen).to(x.dtype)
        if isinstance(x, torch.Tensor) and x.dtype.is_floating_point
        else x
        for x in leaves
    ]
    args, kwargs = tree_unflatten(new, spec)
    return tuple(args), dict(kwargs)


def _has_dynamic_dims(ep: ExportedProgram) -> bool:
    return bool(ep.range_constraints)


def _describe_inputs(inputs: Inputs) -> dict[str, str]:
    out = {}
    for i, leaf in enumerate(tree_leaves(inputs)):
        if isinstance(leaf, torch.Tensor):
            dims = "x".join(str(d) for d in leaf.shape)
            out[f"input {i}"] = f"{str(leaf.dtype).replace('torch.', '')} {dims}"
    return out
