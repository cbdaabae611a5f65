"""The reference's half of a comparison, which needs no candidate.

Open the reference (with every probe it offers; the candidate later keeps those it
shares), choose the input sets (shape search) and run the reference on each set. Kept
apart from the candidate so that it can run while the candidate is still being made:
``fold_file`` starts it before folding (:mod:`bnfold.equivalence.pending`).

The noise floor (a jittered copy of the reference and perturbed runs of every set) is a
separate step, :meth:`ReferenceRuns.floor_runs`: a verdict needs it only when some
output fails its fixed tolerance, so the jittered copy is built on first use, unless
``measure_floor`` asks for it up front (it then builds beside the first runs, and the
perturbed runs of a set follow its reference run, ahead of the candidate too).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import threading
from collections.abc import Iterator, Mapping, Sequence

import numpy as np

from bnfold.equivalence import compare as cmp
from bnfold.equivalence import inputs as inp
from bnfold.equivalence import shape_search, threads
from bnfold.equivalence.feeder import Feeder, FirstRun, InputSets, describe_inputs, given_sets
from bnfold.equivalence.jitter import open_jittered
from bnfold.equivalence.probes import Probe, find_probes, with_probes
from bnfold.equivalence.session import ModelRunner
from bnfold.equivalence.signature import TensorSpec
from bnfold.equivalence.skeleton import Skeleton
from bnfold.equivalence.source import (
    IN_MEMORY_LIMIT,
    ModelLike,
    ModelSource,
    open_model,
    open_skeleton,
)
from bnfold.errors import ModelLoadError, VerificationError

SESSIONS = 3  # reference, candidate, jittered reference
ON_DEMAND_SESSIONS = 2  # reference, candidate; the jittered one runs only when needed
LARGE_WARNING = (
    "model over 1 GiB: output probes and weight jitter skipped (they need whole-model "
    "copies); noise floor from input perturbation only"
)
Outputs = dict[str, np.ndarray]


@dataclasses.dataclass
class OpenReference:
    """The reference opened in onnxruntime, its probes, and the pool that runs sessions."""

    src: ModelSource  # as given, without probes
    runner: ModelRunner  # with every probe in ``probes``
    probes: dict[str, Probe]  # probe output name -> probe
    provider: str
    plan: threads.Plan
    pool: concurrent.futures.Executor
    large: bool
    warnings: list[str] = dataclasses.field(default_factory=list)
    jitter_src: ModelSource | None = None  # what the jittered copy is made of; None: no jitter
    _noisy: concurrent.futures.Future[tuple[ModelRunner | None, str | None]] | None = None
    _noisy_seen: bool = False
    _lock: threading.Lock = dataclasses.field(default_factory=threading.Lock, repr=False)

    def start_jitter(self) -> None:
        """Start building the jittered reference in the pool (once; nothing without jitter)."""
        with self._lock:
            if self._noisy is None and self.jitter_src is not None:
                self._noisy = self.pool.submit(
                    _floor_runner, self.jitter_src, self.provider, self.plan.intra_op
                )

    def jittered(self) -> ModelRunner | None:
        """The reference with jittered weights (noise floor), or None; builds it on first
        call and waits for it."""
        self.start_jitter()
        if self._noisy is None:
            return None
        runner, warning = self._noisy.result()
        with self._lock:
            if warning is not None and not self._noisy_seen:
                self.warnings.append(warning)
            self._noisy_seen = True
        return runner


def open_reference(
    stack: contextlib.ExitStack,
    reference: ModelLike,
    *,
    provider: str,
    probes: bool,
    perturbations: int | None,
    measure_floor: bool = False,
) -> OpenReference:
    """Open the reference (ORT_DISABLE_ALL); with ``measure_floor`` its jittered copy
    starts building in the pool now, otherwise on first use."""
    src = stack.enter_context(open_model(reference, "reference"))
    large = src.approx_bytes() > IN_MEMORY_LIMIT
    offered = {} if large or not probes else find_probes(src.graph_proto())
    named = {p.name: p for p in offered.values()}
    probed = stack.enter_context(probed_source(src, list(named.values())))
    plan = threads.plan(SESSIONS if measure_floor else ON_DEMAND_SESSIONS)
    # Entered after the sources: closing the stack waits for the pool before removing them.
    pool = stack.enter_context(threads.worker_pool(plan.workers))
    jitter_src = probed if not large and perturbations != 0 else None
    noisy = None
    if measure_floor and jitter_src is not None:  # builds beside the reference's session
        noisy = pool.submit(_floor_runner, jitter_src, provider, plan.intra_op)
    runner = ModelRunner(probed, provider, plan.intra_op)
    warnings = [LARGE_WARNING] if large else []
    return OpenReference(
        src, runner, named, provider, plan, pool, large, warnings, jitter_src, noisy
    )


@contextlib.contextmanager
def probed_source(source: ModelSource, probes: list[Probe]) -> Iterator[ModelSource]:
    """The model with probe outputs; only its structure is copied, never its weights."""
    if not probes:
        yield source
        return
    skeleton = source.skeleton()
    probed = Skeleton(with_probes(skeleton.proto, probes), skeleton.arrays)
    with open_skeleton(probed, source.label) as opened:
        yield opened


def _floor_runner(
    src: ModelSource, provider: str, intra_op: int | None
) -> tuple[ModelRunner | None, str | None]:
    """The reference with jittered weights, or None and why (floor from inputs only)."""
    rng = np.random.default_rng(0x6B6E)
    try:
        with open_jittered(src, rng, cmp.WEIGHT_ULPS) as jittered:
            return ModelRunner(jittered, provider, intra_op), None
    except (ModelLoadError, OSError, ValueError, MemoryError) as err:
        return None, f"weight jitter unavailable ({err}); floor from input perturbation only"


@dataclasses.dataclass
class ReferenceSet:
    """One input set on the reference side; ``outputs`` is None until it has run."""

    seed: int
    feeds: dict[str, np.ndarray]
    defaulted: dict[str, int]
    rng: np.random.Generator  # after drawing the feeds: draws the perturbations
    outputs: Outputs | None = None
    perturbed: list[Outputs] = dataclasses.field(default_factory=list)

    def nbytes(self) -> int:
        held = [self.outputs or {}, *self.perturbed]
        return sum(a.nbytes for out in held for a in out.values())


@dataclasses.dataclass
class InputPlan:
    """The input sets of a comparison, chosen on the reference alone."""

    specs: list[TensorSpec]
    sets: list[ReferenceSet]
    found: shape_search.ShapeSearch
    described: dict[str, str]
    first_shapes: dict[str, tuple[int, ...]]
    defaulted: dict[str, int]  # of the last set


def plan_inputs(
    ref: OpenReference,
    specs: Sequence[TensorSpec],
    inputs: InputSets | None,
    seeds: list[int],
    shapes: Mapping[str, Sequence[int]],
) -> InputPlan:
    """Coerce the user's inputs, find sizes the reference accepts, synthesise every set."""
    given = given_sets(inputs, specs)
    partials = given or [{} for _ in seeds]
    used_seeds = list(range(len(partials))) if given else seeds
    bounds = inp.index_bounds(ref.src.graph_proto(), [s.name for s in specs])
    feeder = Feeder(specs, shapes, bounds)
    first = FirstRun(ref.runner, feeder, partials[0], used_seeds[0])
    found = shape_search.search(
        specs, feeder.fixed(partials[0]), first.try_shapes, model=ref.src.graph_proto()
    )
    sets: list[ReferenceSet] = []
    described: dict[str, str] = {}
    first_shapes: dict[str, tuple[int, ...]] = {}
    defaulted: dict[str, int] = {}
    for seed, partial in zip(used_seeds, partials, strict=True):
        rng = np.random.default_rng(seed)
        resolved, defaulted = inp.resolve_shapes(specs, feeder.fixed(partial), found.sizes)
        described = described or describe_inputs(specs, resolved, partial, found)
        first_shapes = first_shapes or dict(resolved)
        feeds = feeder.feeds(partial, resolved, rng)
        sets.append(ReferenceSet(seed, feeds, defaulted, rng, first.reuse(feeds)))
    return InputPlan(list(specs), sets, found, described, first_shapes, defaulted)


def run_reference_set(ref: OpenReference, one: ReferenceSet) -> None:
    """Run the reference on ``one`` unless the shape search did."""
    if one.outputs is None:
        one.outputs = ref.pool.submit(run_noted, ref.runner, one.feeds, one.defaulted).result()


def run_floor_set(ref: OpenReference, one: ReferenceSet, perturbations: int | None) -> None:
    """The perturbed runs of ``one`` (after its reference run), on the jittered reference
    when there is one; they draw from ``one.rng``, so they are the same whenever they run."""
    assert one.outputs is not None
    noisy = ref.jittered()
    runner = noisy or ref.runner
    moved = perturbed_feeds(noisy is not None, one.feeds, one.outputs, perturbations, one.rng)
    futures = [ref.pool.submit(runner.run, feeds) for feeds in moved]
    one.perturbed = [f.result() for f in futures]


def perturbed_feeds(
    jittered: bool,
    feeds: Mapping[str, np.ndarray],
    ref_out: Mapping[str, np.ndarray],
    perturbations: int | None,
    rng: np.random.Generator,
) -> list[Mapping[str, np.ndarray]]:
    """Inputs of the perturbed reference runs: ulp-level moves (with ``jittered``, the
    weights move too: those runs use the jittered reference)."""
    count = perturbations
    if count is None:
        smallest = min((v.size for v in ref_out.values()), default=0)
        small = smallest < cmp.SMALL_OUTPUT
        count = cmp.SMALL_OUTPUT_PERTURBATIONS if small else cmp.DEFAULT_PERTURBATIONS
    out: list[Mapping[str, np.ndarray]] = []
    for _ in range(count):
        moved = inp.perturb(feeds, rng, cmp.INPUT_ULPS)
        if moved is None and not jittered:
            break  # nothing to perturb
        out.append(feeds if moved is None else moved)
        if moved is None:
            break  # the jittered model on the same inputs gives the same answer every time
    return out


def run_noted(
    runner: ModelRunner, feeds: Mapping[str, np.ndarray], defaulted: Mapping[str, int]
) -> Outputs:
    """``runner.run``; a failure names the symbolic dims that were set by default."""
    try:
        return runner.run(feeds)
    except VerificationError as err:
        if defaulted:
            dims = ", ".join(f"{k}={v}" for k, v in defaulted.items())
            raise VerificationError(
                f"{err} (symbolic dims were set by default: {dims}; give shapes explicitly)"
            ) from err
        raise


class ReferenceRuns:
    """The reference side of every input set, each computed once, by whoever needs it first.

    ``run_ahead`` (in a background thread, while the candidate is being made) computes
    the sets in order until ``stop()`` or until the outputs it holds pass a budget;
    ``get(i)`` takes set ``i``'s reference outputs and ``floor_runs(i)`` its perturbed
    runs, each computed in the calling thread when nobody has claimed it yet. With
    ``measure_floor`` a set's perturbed runs follow its reference run (ahead too);
    otherwise they wait for ``floor_runs``.
    """

    def __init__(
        self,
        ref: OpenReference,
        plan: InputPlan,
        perturbations: int | None,
        *,
        measure_floor: bool = False,
    ) -> None:
        self.ref, self.plan, self.perturbations = ref, plan, perturbations
        self.measure_floor = measure_floor
        self._done = [concurrent.futures.Future[ReferenceSet]() for _ in plan.sets]
        self._floors = [concurrent.futures.Future[ReferenceSet]() for _ in plan.sets]
        self._claimed = [False] * len(plan.sets)
        self._floor_claimed = [False] * len(plan.sets)
        self._lock = threading.Lock()
        self._stop = threading.Event()

    def stop(self) -> None:
        """Make ``run_ahead`` return after the set in flight."""
        self._stop.set()

    def get(self, index: int) -> ReferenceSet:
        """Set ``index`` with its reference outputs."""
        if self._claim(self._claimed, index):
            self._compute(index)
        return self._done[index].result()

    def floor_runs(self, index: int) -> list[Outputs]:
        """The perturbed reference runs of set ``index`` (the noise floor's share of it)."""
        self.get(index)
        if self._claim(self._floor_claimed, index):
            self._compute_floor(index)
        return self._floors[index].result().perturbed

    def _claim(self, claimed: list[bool], index: int) -> bool:
        with self._lock:
            if claimed[index]:
                return False
            claimed[index] = True
            return True

    def _compute(self, index: int) -> bool:
        one = self.plan.sets[index]
        try:
            run_reference_set(self.ref, one)
        except BaseException as err:  # re-raised by get() in the caller's thread
            self._done[index].set_exception(err)
            return False
        self._done[index].set_result(one)
        if self.measure_floor and self._claim(self._floor_claimed, index):
            return self._compute_floor(index)
        return True

    def _compute_floor(self, index: int) -> bool:
        one = self.plan.sets[index]
        try:
            run_floor_set(self.ref, one, self.perturbations)
        except BaseException as err:  # re-raised by floor_runs() in the caller's thread
            self._floors[index].set_exception(err)
            return False
        self._floors[index].set_result(one)
        return True

    def run_ahead(self, budget_bytes: int) -> None:
        """Compute sets in order until stopped, a set fails or ``budget_bytes`` are held."""
        held = 0
        for index, one in enumerate(self.plan.sets):
            if self._stop.is_set() or held > budget_bytes:
                return
            if self._claim(self._claimed, index):
                if not self._compute(index):
                    return
                held += one.nbytes()
