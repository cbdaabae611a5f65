"""The noise floor is measured only when a verdict depends on it (issue 18).

A floor only loosens the rule, so when every output passes its fixed tolerance on every
input set the perturbed runs and the jittered reference are skipped; once one output
fails without a floor, every set's floor runs are made (the earlier sets' too) and the
result is the one ``measure_floor=True`` gives.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from support import verify_inject as inject
from support import verify_models as vm

from bnfold.equivalence import reference, verify
from bnfold.equivalence.pending import PendingVerification
from bnfold.equivalence.session import ModelRunner

SEEDS = 3


@dataclass
class Calls:
    """What verification ran: onnxruntime runs, jittered sessions, floor runs per set."""

    runs: int = 0
    jittered: int = 0
    floor_sets: list[np.ndarray] = field(default_factory=list)  # each set's first input
    perturbed_runs: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def count(self, what: str, n: int = 1) -> None:
        with self.lock:  # runs come from the pool's threads
            setattr(self, what, getattr(self, what) + n)


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> Iterator[Calls]:
    """Count by wrapping ``ModelRunner.run``, ``_floor_runner`` and ``perturbed_feeds``."""
    seen = Calls()
    real_run, real_floor, real_feeds = (
        ModelRunner.run,
        reference._floor_runner,
        reference.perturbed_feeds,
    )

    def run(self: ModelRunner, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        seen.count("runs")
        return real_run(self, feeds)

    def floor_runner(*args: Any) -> Any:
        seen.count("jittered")
        return real_floor(*args)

    def perturbed_feeds(jittered: bool, feeds: Mapping[str, np.ndarray], *args: Any) -> Any:
        moved = real_feeds(jittered, feeds, *args)
        with seen.lock:
            seen.floor_sets.append(next(iter(feeds.values())))
        seen.count("perturbed_runs", len(moved))
        return moved

    monkeypatch.setattr(ModelRunner, "run", run)
    monkeypatch.setattr(reference, "_floor_runner", floor_runner)
    monkeypatch.setattr(reference, "perturbed_feeds", perturbed_feeds)
    yield seen


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


@pytest.fixture(scope="module")
def plain() -> tuple[onnx.ModelProto, onnx.ModelProto]:
    """Conv → BN and its correct fold: within the fixed tolerance on every set."""
    model = vm.conv_bn(_rng(31))
    return model, inject.fold_batchnorms(model)


@pytest.fixture(scope="module")
def ill() -> tuple[onnx.ModelProto, onnx.ModelProto]:
    """Conv bias and BN mean of 1e4 cancel: a correct fold passes only thanks to the floor."""
    model = vm.conv_bn(_rng(11), activation="Sigmoid", beta_offset=-10.0, cancel_offset=1e4)
    return model, inject.fold_batchnorms(model)


def test_fold_within_tolerance_makes_no_floor_runs(plain, calls: Calls) -> None:
    model, folded = plain
    result = verify(model, folded, seeds=SEEDS)
    assert result, result.describe()
    assert calls.jittered == 0 and calls.perturbed_runs == 0 and not calls.floor_sets
    assert calls.runs == 2 * SEEDS  # one reference and one candidate run per set
    assert result.noise_floor == "not needed"
    assert all(m.floor is None for o in result.outputs for m in o.runs)
    data = json.loads(json.dumps(result.to_dict()))
    assert data["noise_floor"] == "not needed"
    assert [o["floor"] for o in data["outputs"]] == [None] * len(result.outputs)
    assert all(r["floor"] is None for o in data["outputs"] for r in o["runs"])
    text = result.describe()
    assert "noise floor: not needed (every output within its fixed tolerance)" in text
    assert "—" in text


def test_measure_floor_always_measures_it(plain, calls: Calls) -> None:
    model, folded = plain
    lazy = verify(model, folded, seeds=SEEDS)
    runs_without = calls.runs
    result = verify(model, folded, seeds=SEEDS, measure_floor=True)
    assert calls.jittered == 1 and len(calls.floor_sets) == SEEDS
    assert calls.runs == 2 * runs_without + calls.perturbed_runs
    assert result.noise_floor == "measured"
    assert all(o.floor is not None and o.floor > 0 for o in result.outputs)
    assert "noise floor:" not in result.describe()
    assert bool(result) == bool(lazy)
    assert [o.passed for o in result.outputs] == [o.passed for o in lazy.outputs]


def test_floor_that_decides_is_measured_on_every_set(ill, calls: Calls) -> None:
    """Set 0 (zero input) passes on its tolerance, set 1 does not: set 0's floor runs are
    made then too, and the result is the one an always-measured floor gives."""
    model, folded = ill
    x = _rng(0).normal(size=(1, 3, 12, 12)).astype(np.float32)
    sets = [{"x": np.zeros_like(x)}, {"x": x}]
    result = verify(model, folded, inputs=sets, probes=False)
    y = result.outputs[0]
    assert y.runs[0].max_abs <= y.runs[0].tolerance < y.runs[1].max_abs  # the premise
    assert result, result.describe()  # thanks to the floor
    assert calls.jittered == 1
    assert len(calls.floor_sets) == len(sets)
    assert sorted(bool(np.any(f)) for f in calls.floor_sets) == [False, True]
    assert result.noise_floor == "measured"
    always = verify(model, folded, inputs=sets, probes=False, measure_floor=True)
    assert result.to_dict() == always.to_dict()
    assert result.warnings == always.warnings


def test_floor_that_decides_with_probes_and_seeds(ill) -> None:
    model, folded = ill
    result = verify(model, folded, seeds=SEEDS)
    assert result, result.describe()
    assert result.noise_floor == "measured"
    assert result.to_dict() == verify(model, folded, seeds=SEEDS, measure_floor=True).to_dict()


@pytest.mark.parametrize("bug", ["eps_ignored", "channel_off", "scale_twice"])
def test_injected_bug_is_still_caught(plain, bug: str) -> None:
    model, _ = plain
    broken = inject.fold_batchnorms(model, bug=bug, channel=1)
    result = verify(model, broken, seeds=SEEDS)
    assert not result, result.describe()
    assert result.noise_floor == "measured"  # it fails without a floor, so it was measured
    assert all(o.floor is not None for o in result.outputs)
    assert result.to_dict() == verify(model, broken, seeds=SEEDS, measure_floor=True).to_dict()


def test_no_perturbations_means_no_floor(ill, plain, calls: Calls) -> None:
    model, folded = ill
    result = verify(model, folded, seeds=SEEDS, perturbations=0)
    assert not result  # tolerances only: the ill-conditioned fold fails
    assert result.noise_floor == "off"
    assert "noise floor: not measured (perturbations=0)" in result.describe()
    assert all(m.floor is None for o in result.outputs for m in o.runs)
    passing = verify(*plain, seeds=SEEDS, perturbations=0, measure_floor=True)
    assert passing and passing.noise_floor == "not needed"
    assert calls.jittered == 0 and calls.perturbed_runs == 0


def test_pending_verification_builds_no_jittered_reference_unless_needed(
    plain, ill, calls: Calls, tmp_path: Path
) -> None:
    for name, (model, folded) in {"plain": plain, "ill": ill}.items():
        path = tmp_path / f"{name}.onnx"
        onnx.save(model, path)
        with PendingVerification(path, seeds=2) as pending:
            got = pending.verify(folded)
        want = verify(path, folded, seeds=2, measure_floor=name == "ill")
        assert got.to_dict() == want.to_dict()
        assert calls.jittered == (0 if name == "plain" else 2)
    path = tmp_path / "plain.onnx"
    with PendingVerification(path, seeds=2, measure_floor=True) as pending:
        got = pending.verify(plain[1])
    assert got.noise_floor == "measured"
    assert got.to_dict() == verify(path, plain[1], seeds=2, measure_floor=True).to_dict()
