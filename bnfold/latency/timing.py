"""Warm-up, interleaved timed runs, and the statistics reported from them.

Models are run round-robin (A B, B A, A B … or A B C, B C A, C A B …) so that drift of
a shared machine — frequency scaling, a neighbour's job — hits every model alike, and the
speed-up is taken pair by pair within a round. Each round starts one model later than
the previous one, so no model always runs first (or right after another's cache churn).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

logger = logging.getLogger(__name__)

Runner = Callable[[], object]


def run_interleaved(
    runners: Sequence[Runner],
    iters: int,
    warmup: int = 0,
    on_round: Callable[[], None] | None = None,
) -> list[list[float]]:
    """Run ``warmup`` then ``iters`` rounds of every runner in turn; return times in ms.

    Result ``[i][k]`` is runner i's time in round k. ``on_round`` is called after each
    round, warm-up included (for a progress bar).
    """
    samples: list[list[float]] = [[] for _ in runners]
    n = len(runners)
    for round_index in range(warmup + iters):
        for step in range(n):
            i = (round_index + step) % n
            run = runners[i]
            start = time.perf_counter()
            run()
            elapsed_ms = (time.perf_counter() - start) * 1e3
            if round_index >= warmup:
                samples[i].append(elapsed_ms)
        if on_round is not None:
            on_round()
    return samples


def quantile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated quantile (numpy's default method), without numpy."""
    if not values:
        return math.nan
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


@dataclass(frozen=True)
class Latency:
    """Summary of one model's timed runs, in milliseconds."""

    median_ms: float
    p90_ms: float
    min_ms: float
    mean_ms: float
    runs: int

    @classmethod
    def from_samples(cls, samples: Sequence[float]) -> Latency:
        return cls(
            median_ms=quantile(samples, 0.5),
            p90_ms=quantile(samples, 0.9),
            min_ms=min(samples) if samples else math.nan,
            mean_ms=sum(samples) / len(samples) if samples else math.nan,
            runs=len(samples),
        )


@dataclass(frozen=True)
class Speedup:
    """Pairwise ratios baseline_time / candidate_time per round (> 1: candidate faster)."""

    median: float
    p10: float
    p90: float
    pairs: int

    @classmethod
    def from_pairs(cls, baseline: Sequence[float], candidate: Sequence[float]) -> Speedup:
        ratios = [b / c for b, c in zip(baseline, candidate, strict=True) if c > 0]
        return cls(
            median=quantile(ratios, 0.5),
            p10=quantile(ratios, 0.1),
            p90=quantile(ratios, 0.9),
            pairs=len(ratios),
        )


def auto_iters(per_round_ms: float, target_s: float, lo: int = 10, hi: int = 500) -> int:
    """Rounds that fill about ``target_s`` seconds, clamped to [lo, hi]."""
    if per_round_ms <= 0 or math.isnan(per_round_ms):
        return hi
    return max(lo, min(hi, int(target_s * 1e3 / per_round_ms)))
