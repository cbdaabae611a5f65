"""The run phase of a comparison: run both models on the same inputs, collect the outputs.

``run_pair`` opens both models, finds input shapes the reference accepts
(:mod:`bnfold.equivalence.shape_search`), synthesises the missing inputs and returns a
:class:`PairRun`: per input set the reference, candidate and perturbed-reference outputs.
Judging them is :mod:`bnfold.equivalence.judge`'s job; nothing here decides pass or fail.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Mapping, Sequence
from typing import Protocol

import numpy as np

from bnfold.equivalence import compare as cmp
from bnfold.equivalence import inputs as inp
from bnfold.equivalence import shape_search
from bnfold.equivalence.feeder import (
    Feeder,
    FirstRun,
    InputSets,
    describe_inputs,
    given_sets,
    seed_list,
)
from bnfold.equivalence.pair import OpenPair, mismatched_probes, open_pair
from bnfold.equivalence.session import ModelRunner
from bnfold.equivalence.signature import TensorSpec, merge_input_specs
from bnfold.equivalence.source import ModelLike
from bnfold.errors import VerificationError


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
        pair = open_pair(
            stack,
            reference,
            candidate,
            provider=provider,
            probes=probes,
            perturbations=perturbations,
        )
        specs = merge_input_specs(pair.ref.inputs, pair.cand.inputs)
        given = given_sets(inputs, specs)
        if sink is not None:
            sink.start(pair.ref.outputs)
        if pair.noisy is None and not any(s.is_float for s in specs) and perturbations != 0:
            pair.warnings.append(
                "no noise floor (no float inputs, no weight jitter): tolerances only"
            )
        return _run_sets(pair, specs, given, used, shapes or {}, provider, perturbations, sink)


def _run_sets(
    pair: OpenPair,
    specs: Sequence[TensorSpec],
    given: list[dict[str, np.ndarray]],
    seeds: list[int],
    shapes: Mapping[str, Sequence[int]],
    provider: str,
    perturbations: int | None,
    sink: RunSink | None,
) -> PairRun:
    sets = given or [{} for _ in seeds]
    used_seeds = list(range(len(sets))) if given else seeds
    bounds = inp.index_bounds(pair.ref_src.graph_proto(), [s.name for s in specs])
    feeder = Feeder(specs, shapes, bounds)
    first = FirstRun(pair.ref, feeder, sets[0], used_seeds[0])
    found = shape_search.search(
        specs,
        feeder.fixed(sets[0]),
        first.try_shapes,
        model=pair.ref_src.graph_proto(),
    )
    kept: list[InputSetRun] = []
    described: dict[str, str] = {}
    first_shapes: dict[str, tuple[int, ...]] = {}
    defaulted: dict[str, int] = {}
    for seed, partial in zip(used_seeds, sets, strict=True):
        rng = np.random.default_rng(seed)
        resolved, defaulted = inp.resolve_shapes(specs, feeder.fixed(partial), found.sizes)
        described = described or describe_inputs(specs, resolved, partial, found)
        first_shapes = first_shapes or dict(resolved)
        feeds = feeder.feeds(partial, resolved, rng)
        ref_out = first.reuse(feeds) or _run(pair.ref, feeds, defaulted)
        cand_out = _run(pair.cand, feeds, defaulted)
        dropped = mismatched_probes(pair, ref_out, cand_out)
        moved = _perturbed_outputs(pair.noisy, pair.ref, feeds, ref_out, perturbations, rng)
        for out in (ref_out, cand_out, *moved):
            for name in dropped:
                out.pop(name, None)
        one = InputSetRun(seed, ref_out, cand_out, moved)
        if sink is None:
            kept.append(one)
        else:
            sink.add(one)
    return PairRun(
        reference=pair.ref_src.label,
        candidate=pair.cand_label,
        provider=provider,
        outputs=list(pair.ref.outputs),
        probe_labels=dict(pair.labels),
        seeds=used_seeds,
        inputs=described,
        input_shapes=first_shapes,
        defaulted_dims=defaulted,
        shape_search=found,
        warnings=pair.warnings,
        sets=kept,
    )


def _perturbed_outputs(
    noisy: ModelRunner | None,
    ref: ModelRunner,
    feeds: Mapping[str, np.ndarray],
    ref_out: Mapping[str, np.ndarray],
    perturbations: int | None,
    rng: np.random.Generator,
) -> list[dict[str, np.ndarray]]:
    """Reference outputs under ulp-level perturbation of inputs (and weights, via ``noisy``)."""
    count = perturbations
    if count is None:
        smallest = min((v.size for v in ref_out.values()), default=0)
        small = smallest < cmp.SMALL_OUTPUT
        count = cmp.SMALL_OUTPUT_PERTURBATIONS if small else cmp.DEFAULT_PERTURBATIONS
    outs = []
    for _ in range(count):
        moved = inp.perturb(feeds, rng, cmp.INPUT_ULPS)
        if moved is None and noisy is None:
            break  # nothing to perturb
        outs.append((noisy or ref).run(feeds if moved is None else moved))
        if moved is None:
            break  # the jittered model on the same inputs gives the same answer every time
    return outs


def _run(
    runner: ModelRunner, feeds: Mapping[str, np.ndarray], defaulted: Mapping[str, int]
) -> dict[str, np.ndarray]:
    try:
        return runner.run(feeds)
    except VerificationError as err:
        if defaulted:
            dims = ", ".join(f"{k}={v}" for k, v in defaulted.items())
            raise VerificationError(
                f"{err} (symbolic dims were set by default: {dims}; give shapes explicitly)"
            ) from err
        raise
