"""The run phase of a comparison: run both models on the same inputs, collect the outputs.

``run_pair`` opens the reference (:mod:`bnfold.equivalence.reference`: probes, jittered
copy, input sizes it accepts, synthesised inputs), then the candidate, and returns a
:class:`PairRun`: per input set the reference, candidate and perturbed-reference outputs.
The reference half can also start before the candidate exists
(:mod:`bnfold.equivalence.pending`); both halves run their sessions side by side.
Judging the outputs is :mod:`bnfold.equivalence.judge`'s job; nothing here decides pass
or fail.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Mapping, Sequence
from typing import Protocol

import numpy as np

from bnfold.equivalence import shape_search
from bnfold.equivalence.feeder import InputSets, seed_list
from bnfold.equivalence.pair import mismatched_probes, open_pair
from bnfold.equivalence.reference import (
    OpenReference,
    ReferenceRuns,
    open_reference,
    plan_inputs,
    run_noted,
)
from bnfold.equivalence.signature import TensorSpec, merge_input_specs
from bnfold.equivalence.source import ModelLike


@dataclasses.dataclass
class InputSetRun:
    """The outputs of one input set, keyed by output name (probes included)."""

    seed: int
    reference: dict[str, np.ndarray]
    candidate: dict[str, np.ndarray]
    perturbed: list[dict[str, np.ndarray]]  # the reference under ulp-level perturbation


@dataclasses.dataclass
class PairRun:
    """What running both models produced; ``sets`` is empty when a sink took them."""

    reference: str
    candidate: str
    provider: str
    outputs: list[TensorSpec]  # the outputs to compare (probes included), reference order
    probe_labels: dict[str, str]  # probe output name -> "<output> before <Op>"
    seeds: list[int]
    inputs: dict[str, str]  # name -> "float32 1x3x224x224 (synthesised)"
    input_shapes: dict[str, tuple[int, ...]]  # of the first input set
    defaulted_dims: dict[str, int]
    shape_search: shape_search.ShapeSearch
    warnings: list[str]
    sets: list[InputSetRun] = dataclasses.field(default_factory=list)


class RunSink(Protocol):
    """Takes input sets as they are run, so their arrays need not be kept."""

    def start(self, outputs: Sequence[TensorSpec]) -> None:
        """Called once both models are open, before anything runs (may raise)."""

    def add(self, run: InputSetRun) -> None:
        """Called once per input set."""


def run_pair(
    reference: ModelLike,
    candidate: ModelLike,
    *,
    inputs: InputSets | None = None,
    shapes: Mapping[str, Sequence[int]] | None = None,
    seeds: int | Sequence[int] = 3,
    provider: str = "cpu",
    perturbations: int | None = None,
    probes: bool = True,
    sink: RunSink | None = None,
) -> PairRun:
    """Run both models (ORT_DISABLE_ALL) on the same input sets; see ``verify`` for the args.

    Without ``sink`` every input set's outputs are kept in ``PairRun.sets``; with one, each
    set goes to ``sink.add`` instead (a large model's outputs are not held three times).
    """
    used = seed_list(seeds)
    with contextlib.ExitStack() as stack:
        ref = open_reference(
            stack, reference, provider=provider, probes=probes, perturbations=perturbations
        )
        return run_candidate(
            stack,
            ref,
            candidate,
            inputs=inputs,
            shapes=shapes or {},
            seeds=used,
            perturbations=perturbations,
            sink=sink,
        )


def run_candidate(
    stack: contextlib.ExitStack,
    ref: OpenReference,
    candidate: ModelLike,
    *,
    inputs: InputSets | None,
    shapes: Mapping[str, Sequence[int]],
    seeds: list[int],
    perturbations: int | None,
    sink: RunSink | None,
    ahead: ReferenceRuns | None = None,
) -> PairRun:
    """The candidate half: open it beside ``ref`` and run it on the reference's input sets.

    ``ahead``: reference runs already started; used when the candidate's inputs match the
    specs they were planned with (otherwise the sets are planned again on merged specs).
    """
    pair = open_pair(stack, ref, candidate)
    specs = merge_input_specs(pair.ref.inputs, pair.cand.inputs)
    if sink is not None:
        sink.start(pair.ref.outputs)
    if ahead is not None and ahead.plan.specs == specs:
        runs = ahead
    else:
        if ahead is not None:
            ahead.stop()
        runs = ReferenceRuns(ref, plan_inputs(ref, specs, inputs, seeds, shapes), perturbations)
    if not any(s.is_float for s in specs) and perturbations != 0 and pair.noisy is None:
        pair.warnings.append("no noise floor (no float inputs, no weight jitter): tolerances only")
    plan = runs.plan
    kept: list[InputSetRun] = []
    for index, planned in enumerate(plan.sets):
        cand_f = pair.pool.submit(run_noted, pair.cand, planned.feeds, planned.defaulted)
        done = runs.get(index)  # the reference side, beside the candidate run
        cand_out = cand_f.result()
        names = {o.name for o in pair.ref.outputs}
        ref_out = _only(done.outputs or {}, names)
        moved = [_only(out, names) for out in done.perturbed]
        dropped = mismatched_probes(pair, ref_out, cand_out)
        for out in (ref_out, cand_out, *moved):
            for name in dropped:
                out.pop(name, None)
        one = InputSetRun(done.seed, ref_out, cand_out, moved)
        if sink is None:
            kept.append(one)
        else:
            sink.add(one)
    return PairRun(
        reference=ref.src.label,
        candidate=pair.cand_label,
        provider=ref.provider,
        outputs=list(pair.ref.outputs),
        probe_labels=dict(pair.labels),
        seeds=[s.seed for s in plan.sets],
        inputs=plan.described,
        input_shapes=plan.first_shapes,
        defaulted_dims=plan.defaulted,
        shape_search=plan.found,
        warnings=pair.warnings,
        sets=kept,
    )


def _only(outputs: Mapping[str, np.ndarray], names: set[str]) -> dict[str, np.ndarray]:
    return {k: v for k, v in outputs.items() if k in names}
