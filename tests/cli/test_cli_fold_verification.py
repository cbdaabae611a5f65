"""The fold command still catches a wrong fold now that verification starts beside the
fold and batch workers share the cores."""

from __future__ import annotations

import concurrent.futures
import json
import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner, Result
from support import verify_models as vm

import bnfold
from bnfold import batch
from bnfold.cli.main import cli
from bnfold.equivalence import threads


def _save(seed: int, path: Path) -> Path:
    onnx.save(vm.conv_bn(np.random.default_rng(seed), c_in=8, c_out=16), path)
    return path


def run(*args: str | Path) -> Result:
    return CliRunner().invoke(cli, [*map(str, args)])


@pytest.fixture
def shifted_bias(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every fold in this process (and in workers forked from it) adds 0.5 to the bias."""
    real = bnfold.foldmath.bn_scale_shift

    def shifted(*args, **kwargs):
        s, t = real(*args, **kwargs)
        return s, t + 0.5

    monkeypatch.setattr(bnfold.foldmath, "bn_scale_shift", shifted)


def test_correct_fold_passes_and_is_written(tmp_path: Path) -> None:
    model = _save(1, tmp_path / "m.onnx")
    result = run(model, "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["verification"]["equivalent"] is True
    assert (tmp_path / "m.folded.onnx").exists()


def test_bias_shift_is_caught_and_nothing_written(tmp_path: Path, shifted_bias: None) -> None:
    model = _save(1, tmp_path / "m.onnx")
    result = run(model, "--json")
    assert result.exit_code == 1, result.output
    assert json.loads(result.stdout)["verification"]["equivalent"] is False
    assert not (tmp_path / "m.folded.onnx").exists()


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_bias_shift_is_caught_in_batch(tmp_path: Path, shifted_bias: None, jobs: str) -> None:
    folder = tmp_path / "zoo"
    folder.mkdir()
    for seed in range(3):
        _save(seed, folder / f"m{seed}.onnx")
    result = run(folder, "-j", jobs, "-o", tmp_path / "out", "--json")
    assert result.exit_code == 1, result.output
    models = json.loads(result.stdout)["models"]
    assert [m["status"] for m in models] == ["not-equivalent"] * 3
    assert not (tmp_path / "out").exists()


def _worker_view() -> tuple[int, str, int]:
    """In a pool worker: its thread budget, OMP_NUM_THREADS and a session's intra-op threads."""
    from bnfold.equivalence.reference import SESSIONS
    from bnfold.equivalence.session import ModelRunner
    from bnfold.equivalence.source import open_model

    plan = threads.plan(SESSIONS)
    with open_model(vm.conv_bn(np.random.default_rng(0)), "m") as src:
        runner = ModelRunner(src, "cpu", plan.intra_op)
    options = runner.session.get_session_options()
    return (
        threads.thread_budget(),
        os.environ.get("OMP_NUM_THREADS", ""),
        options.intra_op_num_threads,
    )


def test_regression_batch_workers_each_ran_onnxruntime_on_every_core(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``-j 2`` on 2 cores ran two workers whose sessions each used both cores (4 busy
    threads on 2 cores); each worker now gets its share: one thread."""
    monkeypatch.setattr(threads, "cpu_count", lambda: 2)
    assert batch.worker_threads(2) == 1
    assert batch.worker_threads(1) == 2
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    with concurrent.futures.ProcessPoolExecutor(
        max_workers=1, initializer=batch._init_worker, initargs=(None, 1)
    ) as pool:
        budget, omp, intra_op = pool.submit(_worker_view).result()
    assert (budget, omp, intra_op) == (1, "1", 1)


def test_measure_floor_flag_measures_what_the_default_leaves_out(tmp_path: Path) -> None:
    """``bnfold MODEL`` measures the noise floor only when a verdict needs it; with
    ``--measure-floor`` the JSON carries the figure."""
    model = _save(1, tmp_path / "m.onnx")
    plain = json.loads(run(model, "--json", "--force").stdout)["verification"]
    forced = json.loads(run(model, "--json", "--force", "--measure-floor").stdout)
    forced = forced["verification"]
    assert plain["equivalent"] is True and forced["equivalent"] is True
    assert [o["floor"] for o in plain["outputs"]] == [None] * len(plain["outputs"])
    assert all(isinstance(o["floor"], float) and o["floor"] > 0 for o in forced["outputs"])
