"""Threaded weight scaling: row runs, identical results and refusals, the caller's errstate."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from bnfold import foldmath
from bnfold.onnx.plan import workers


@pytest.mark.parametrize(
    ("rows", "step", "parts"), [(10, 3, 2), (10, 3, 8), (1, 5, 4), (64, 1, 3), (7, 7, 2)]
)
def test_row_runs_cover_rows_in_whole_blocks(rows: int, step: int, parts: int) -> None:
    runs = foldmath.row_runs(rows, step, parts)
    assert [r for run in runs for r in run] == list(range(rows))
    assert 1 <= len(runs) <= parts
    assert all(len(run) > 0 and run.start % step == 0 for run in runs)


def test_threaded_scaling_matches_one_worker() -> None:
    rng = np.random.default_rng(0)
    w = rng.normal(size=(64, 8, 3, 3)).astype(np.float32)
    s = rng.uniform(0.1, 3.0, 64)
    one, _ = foldmath.scale_output_channels_cast(w, s, np.float32, block_bytes=512)
    four, _ = foldmath.scale_output_channels_cast(w, s, np.float32, block_bytes=512, workers=4)
    assert one is not None and four is not None
    assert one.tobytes() == four.tobytes()
    assert (
        one.tobytes()
        == (w.astype(np.float64) * s[:, None, None, None]).astype(np.float32).tobytes()
    )


def test_threaded_scaling_reports_the_first_refused_block() -> None:
    w = np.ones((32, 4), dtype=np.float16)
    s = np.ones(32)
    s[[5, 27]] = 1e6  # both overflow float16; the reason names the block of channel 5
    with np.errstate(over="ignore"):
        one = foldmath.scale_output_channels_cast(w, s, np.float16, block_bytes=64)
        two = foldmath.scale_output_channels_cast(w, s, np.float16, block_bytes=64, workers=2)
    assert one[0] is None and one[1] is not None
    assert two == one


def test_threaded_scaling_keeps_the_callers_errstate() -> None:
    w = np.full((16, 4), 6e4, dtype=np.float16)
    s = np.full(16, 1e3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with np.errstate(over="ignore", invalid="ignore"):
            _, reason = foldmath.scale_output_channels_cast(
                w, s, np.float16, block_bytes=64, workers=2
            )
    assert reason is not None and "float16" in reason


def test_fold_workers_follow_the_thread_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    from bnfold.equivalence import threads

    monkeypatch.setattr(threads, "_budget", 1)
    assert workers.fold_workers() == 1
    monkeypatch.setattr(threads, "_budget", 64)
    assert workers.fold_workers() == workers.MAX_FOLD_WORKERS
