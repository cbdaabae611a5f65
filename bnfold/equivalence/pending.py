"""``verify`` in two halves: start the reference now, give the candidate later.

The reference's half of a comparison (open it, find input sizes, run every input set;
with ``measure_floor`` also build its jittered copy and make the noise-floor runs, which
are otherwise made only once a verdict needs them) needs no candidate. ``fold_file`` starts it
in a background thread before folding, so it runs on the core the fold leaves free;
``verify(candidate)`` then only adds the candidate's session and runs. The verdict is the
one ``bnfold.verify(reference, candidate)`` gives: the same inputs, runs and rule.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Mapping, Sequence
from typing import Any

from bnfold.equivalence.feeder import InputSets, seed_list
from bnfold.equivalence.inputs import load_npz
from bnfold.equivalence.judge import Judge, ToleranceSpec
from bnfold.equivalence.reference import (
    OpenReference,
    ReferenceRuns,
    open_reference,
    plan_inputs,
)
from bnfold.equivalence.result import VerifyResult
from bnfold.equivalence.run import run_candidate
from bnfold.equivalence.source import ModelLike

RUN_AHEAD_BYTES = 256 * 2**20  # outputs the reference may hold before the candidate comes


class PendingVerification:
    """The reference side of ``verify``, started in a background thread.

    Args are ``verify``'s run arguments. With ``only_matching_inputs``, ``shapes`` and
    ``inputs`` (``.npz`` paths or dicts) are limited to the reference's input names (batch
    mode: one set of options for many models). Call ``verify(candidate)`` once, or
    ``close()`` to abandon it; it is also a context manager.
    """

    def __init__(
        self,
        reference: ModelLike,
        *,
        inputs: InputSets | None = None,
        shapes: Mapping[str, Sequence[int]] | None = None,
        seeds: int | Sequence[int] = 3,
        provider: str = "cpu",
        perturbations: int | None = None,
        probes: bool = True,
        measure_floor: bool = False,
        only_matching_inputs: bool = False,
    ) -> None:
        self._args: dict[str, Any] = {
            "provider": provider,
            "perturbations": perturbations,
            "probes": probes,
            "measure_floor": measure_floor,
        }
        self._inputs, self._shapes = inputs, dict(shapes or {})
        self._seeds = seed_list(seeds)
        self._only_matching = only_matching_inputs
        self._stack = contextlib.ExitStack()
        self._ref: OpenReference | None = None
        self._runs: ReferenceRuns | None = None
        self._error: BaseException | None = None
        self._ready = threading.Event()
        self._closed = False
        self._thread = threading.Thread(
            target=self._prepare, args=(reference,), name="bnfold-reference", daemon=True
        )
        self._thread.start()

    def verify(
        self,
        candidate: ModelLike,
        *,
        rtol: float | None = None,
        atol: float | None = None,
        output_tolerances: Mapping[str, ToleranceSpec] | None = None,
        floor_factor: float | None = None,
    ) -> VerifyResult:
        """Compare ``candidate`` with the reference; see ``bnfold.verify``."""
        if self._closed:
            raise RuntimeError("this PendingVerification is closed")
        judge = Judge(
            rtol=rtol, atol=atol, output_tolerances=output_tolerances, floor_factor=floor_factor
        )
        try:
            self._ready.wait()
            if self._error is not None:
                raise self._error
            assert self._ref is not None and self._runs is not None
            run = run_candidate(
                self._stack,
                self._ref,
                candidate,
                inputs=self._inputs,
                shapes=self._shapes,
                seeds=self._seeds,
                perturbations=self._args["perturbations"],
                sink=judge,
                ahead=self._runs,
                measure_floor=self._args["measure_floor"],
            )
            return judge.result(run)
        finally:
            self.close()

    def close(self) -> None:
        """Stop the background work and release the sessions (idempotent)."""
        if self._closed:
            return
        self._closed = True  # before reading _runs: _prepare sets _runs, then reads _closed
        if self._runs is not None:
            self._runs.stop()
        self._thread.join()
        self._stack.close()

    def __enter__(self) -> PendingVerification:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _prepare(self, reference: ModelLike) -> None:
        try:
            self._ref = open_reference(self._stack, reference, **self._args)
            specs = list(self._ref.runner.inputs)
            if self._only_matching:
                self._limit_to({s.name for s in specs})
            plan = plan_inputs(self._ref, specs, self._inputs, self._seeds, self._shapes)
            self._runs = ReferenceRuns(
                self._ref,
                plan,
                self._args["perturbations"],
                measure_floor=self._args["measure_floor"],
            )
        except BaseException as err:  # re-raised by verify() in the caller's thread
            self._error = err
            return
        finally:
            self._ready.set()
        if not self._closed:
            self._runs.run_ahead(RUN_AHEAD_BYTES)

    def _limit_to(self, names: set[str]) -> None:
        """Shapes and input arrays of inputs this model has (batch mode)."""
        self._shapes = {k: v for k, v in self._shapes.items() if k in names}
        if self._inputs is None:
            return
        single = isinstance(self._inputs, (str, os.PathLike, Mapping))
        items = [self._inputs] if single else list(self._inputs)
        sets = [load_npz(i) if isinstance(i, (str, os.PathLike)) else i for i in items]
        sets = [s for s in ({k: v for k, v in s.items() if k in names} for s in sets) if s]
        self._inputs = sets or None
