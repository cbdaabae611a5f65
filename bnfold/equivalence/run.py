"""The run phase of a comparison: run both models on the same inputs, collect the outputs.

``run_pair`` opens the reference (:mod:`bnfold.equivalence.reference`: probes, input
sizes it accepts, synthesised inputs), then the candidate, and returns a :class:`PairRun`:
per input set the reference and candidate outputs, and the perturbed-reference outputs
of the noise floor when it was measured. The reference half can also start before the
candidate exists (:mod:`bnfold.equivalence.pending`); both halves run their sessions side
by side. Judging the outputs is :mod:`bnfold.equivalence.judge`'s job; nothing here
decides pass or fail.

The noise floor only loosens the rule, so it is measured only when the sink says a
verdict depends on it (``RunSink.needs_floor``, asked after each set); from then on
every set's perturbed runs go to the sink, the earlier sets' too, since the floor is
pooled over all of them. ``measure_floor`` (and a run without a sink, whose sets are
kept for a judge later) measures it always.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Mapping, Sequence
from typing import Protocol

import numpy as np

from bnfold.equivalence import shape_search
from bnfold.equivalence.feeder import InputSets, seed_list
from bnfold.equivalence.pair import OpenPair, mismatched_probes, open_pair
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
    # (empty when a sink takes the set: its perturbed runs go to ``RunSink.add_floor``)


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
    floor_measured: bool = False  # every set's perturbed runs were made (kept or sunk)


class RunSink(Protocol):
    """Takes input sets as they are run, so their arrays need not be kept."""

    def start(self, outputs: Sequence[TensorSpec]) -> None:
        """Called once both models are open, before anything runs (may raise)."""

    def add(self, run: InputSetRun) -> None:
        """Called once per input set (``run.perturbed`` empty)."""

    def needs_floor(self) -> bool:
        """Whether a verdict may depend on the noise floor (asked after each ``add``)."""

    def add_floor(
        self, reference: Mapping[str, np.ndarray], perturbed: Sequence[Mapping[str, np.ndarray]]
    ) -> None:
        """One set's perturbed runs and its reference outputs: once per set, once the floor
        is needed (for sets added before that too)."""


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
    measure_floor: bool = False,
    sink: RunSink | None = None,
) -> PairRun:
    """Run both models (ORT_DISABLE_ALL) on the same input sets; see ``verify`` for the args.

    Without ``sink`` every input set's outputs are kept in ``PairRun.sets``, with the noise
    floor's runs; with one, each set goes to ``sink.add`` instead (a large model's outputs
    are not held three times), and its floor runs to ``sink.add_floor`` when needed.
    """
    used = seed_list(seeds)
    measure_floor = measure_floor or sink is None
    with contextlib.ExitStack() as stack:
        ref = open_reference(
            stack,
            reference,
            provider=provider,
            probes=probes,
            perturbations=perturbations,
            measure_floor=measure_floor,
        )
        return run_candidate(
            stack,
            ref,
            candidate,
            inputs=inputs,
            shapes=shapes or {},
            seeds=used,
            perturbations=perturbations,
            measure_floor=measure_floor,
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
    measure_floor: bool = False,
) -> PairRun:
    """The candidate half: open it beside ``ref`` and run it on the reference's input sets.

    ``ahead``: reference runs already started; used when the candidate's inputs match the
    specs they were planned with (otherwise the sets are planned again on merged specs).
    ``measure_floor``: make every set's perturbed runs whether or not a verdict needs them
    (always so without ``sink``); ``perturbations=0`` makes none.
    """
    measure_floor = measure_floor or sink is None
    pair = open_pair(stack, ref, candidate)
    specs = merge_input_specs(pair.ref.inputs, pair.cand.inputs)
    if sink is not None:
        sink.start(pair.ref.outputs)
    if ahead is not None and ahead.plan.specs == specs:
        runs = ahead
    else:
        if ahead is not None:
            ahead.stop()
        planned_sets = plan_inputs(ref, specs, inputs, seeds, shapes)
        runs = ReferenceRuns(ref, planned_sets, perturbations, measure_floor=measure_floor)
    floor = _FloorFeed(pair, runs, any(s.is_float for s in specs), perturbations != 0)
    plan = runs.plan
    kept: list[InputSetRun] = []
    for index, planned in enumerate(plan.sets):
        cand_f = pair.pool.submit(run_noted, pair.cand, planned.feeds, planned.defaulted)
        done = runs.get(index)  # the reference side, beside the candidate run
        cand_out = cand_f.result()
        names = {o.name for o in pair.ref.outputs}
        ref_out = _only(done.outputs or {}, names)
        dropped = mismatched_probes(pair, ref_out, cand_out)
        for out in (ref_out, cand_out):
            for name in dropped:
                out.pop(name, None)
        one = InputSetRun(done.seed, ref_out, cand_out, [])
        if sink is None:
            one.perturbed = floor.perturbed(index)
            kept.append(one)
            continue
        sink.add(one)
        if measure_floor or floor.started or sink.needs_floor():
            floor.send_upto(index, sink)
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
        floor_measured=floor.started,
    )


class _FloorFeed:
    """Hands out each set's perturbed runs (restricted to the outputs still compared)."""

    def __init__(self, pair: OpenPair, runs: ReferenceRuns, float_inputs: bool, on: bool):
        self.pair, self.runs, self.float_inputs, self.on = pair, runs, float_inputs, on
        self.started = False  # the floor is being measured
        self.sent = 0  # sets whose perturbed runs went to the sink

    def perturbed(self, index: int) -> list[dict[str, np.ndarray]]:
        """Set ``index``'s perturbed runs; none with ``perturbations=0``."""
        if not self.on:
            return []
        if not self.started:
            self.started = True
            if not self.float_inputs and self.pair.reference.jittered() is None:
                self.pair.warnings.append(
                    "no noise floor (no float inputs, no weight jitter): tolerances only"
                )
        names = {o.name for o in self.pair.ref.outputs}
        return [_only(out, names) for out in self.runs.floor_runs(index)]

    def send_upto(self, index: int, sink: RunSink) -> None:
        """Give ``sink`` the perturbed runs of every set up to ``index`` not yet sent."""
        while self.on and self.sent <= index:
            moved = self.perturbed(self.sent)
            names = {o.name for o in self.pair.ref.outputs}
            reference = _only(self.runs.get(self.sent).outputs or {}, names)
            sink.add_floor(reference, moved)
            self.sent += 1


def _only(outputs: Mapping[str, np.ndarray], names: set[str]) -> dict[str, np.ndarray]:
    return {k: v for k, v in outputs.items() if k in names}
