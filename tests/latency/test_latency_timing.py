"""Interleaving order, sample bookkeeping and the statistics of bnfold.latency.timing."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from bnfold.latency.timing import Latency, Speedup, auto_iters, quantile, run_interleaved


def test_runs_interleave_with_rotating_start_and_warmup_is_not_sampled():
    calls: list[str] = []
    rounds: list[int] = []
    runners = [lambda: calls.append("A"), lambda: calls.append("B")]
    samples = run_interleaved(runners, iters=3, warmup=2, on_round=lambda: rounds.append(1))
    assert "".join(calls) == "AB|BA|AB|BA|AB".replace("|", "")  # rounds rotate the start
    assert len(rounds) == 5
    assert [len(s) for s in samples] == [3, 3]
    assert all(t >= 0 for s in samples for t in s)


def test_three_models_run_once_per_round_in_a_repeatable_order():
    calls: list[str] = []
    runners = [lambda k=k: calls.append(k) for k in "ABC"]
    run_interleaved(runners, iters=30)
    rounds = ["".join(calls[i : i + 3]) for i in range(0, len(calls), 3)]
    assert all(sorted(r) == ["A", "B", "C"] for r in rounds)
    again: list[str] = []
    run_interleaved([lambda k=k: again.append(k) for k in "ABC"], iters=30)
    assert again == calls


def test_regression_fixed_predecessor_bias_in_interleaved_timing():
    """With 3+ models a rotation always ran B right after A (the compare_tools A/A control
    showed bnfold, always timed after the larger original, 2–4 % slower than itself)."""
    calls: list[str] = []
    runners = [lambda k=k: calls.append(k) for k in "ABCD"]
    run_interleaved(runners, iters=200)
    before_b = Counter(calls[i - 1] for i in range(1, len(calls)) if calls[i] == "B")
    assert set(before_b) == {"A", "B", "C", "D"}  # B also follows B across a round boundary
    assert max(before_b.values()) < 2 * min(before_b[k] for k in "ACD")
    first = Counter(calls[i] for i in range(0, len(calls), 4))
    assert min(first.values()) > 30  # every model starts rounds, none always


@pytest.mark.parametrize("q", [0.0, 0.1, 0.5, 0.9, 1.0])
def test_quantile_matches_numpy(q):
    values = [5.0, 1.0, 4.0, 2.0, 3.0, 10.0]
    assert quantile(values, q) == pytest.approx(np.quantile(values, q))


def test_latency_summary():
    lat = Latency.from_samples([3.0, 1.0, 2.0, 4.0, 100.0])
    assert lat.median_ms == 3.0
    assert lat.min_ms == 1.0
    assert lat.runs == 5
    assert lat.p90_ms == pytest.approx(np.quantile([1, 2, 3, 4, 100], 0.9))


def test_speedup_is_taken_pair_by_pair():
    # Drift doubles both times in the second half; the pairwise ratio stays 2.
    baseline = [2.0, 2.0, 4.0, 4.0]
    candidate = [1.0, 1.0, 2.0, 2.0]
    s = Speedup.from_pairs(baseline, candidate)
    assert (s.median, s.p10, s.p90, s.pairs) == (2.0, 2.0, 2.0, 4)


def test_speedup_needs_equal_lengths():
    with pytest.raises(ValueError):
        Speedup.from_pairs([1.0, 2.0], [1.0])


def test_auto_iters_clamps():
    assert auto_iters(1.0, 2.0) == 500
    assert auto_iters(100.0, 2.0) == 20
    assert auto_iters(1000.0, 2.0) == 10
    assert auto_iters(0.0, 2.0) == 500
