"""Warm-up, interleaved timed runs, and the statistics reported from them.

Models are run in rounds, each model once per round, so that drift of a shared machine —
frequency scaling, a neighbour's job — hits every model alike, and the speed-up is taken
pair by pair within a round. Two models alternate their order (A B, B A, …). Three or more
run in a fresh seeded random order each round: a fixed rotation (A B C, B C A, C A B) would
always run B right after A, and a model that follows a larger one starts on caches that
model flushed — a bias of a few percent on sub-millisecond models.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

Runner = Callable[[], object]


def run_interleaved(
    runners: Sequence[Runner],
    iters: int,
    warmup: int = 0,
    on_round: Callable[[], None] | None = None,
) -> list[list[float]]:
    """Run ``warmup`` then ``iters`` rounds of every runner in turn; return times in ms.

    Result ``[i][k]`` is runner i's time in round k. ``on_round`` is called after each
    round, warm-up included (for a progress bar). The order within rounds is
    deterministic (see :func:`round_order`).
    """
    samples: list[list[float]] = [[] for _ in runners]
    shuffle = random.Random(0)
    for round_index in range(warmup + iters):
        for i in round_order(len(runners), round_index, shuffle):
            run = runners[i]
            start = time.perf_counter()
            run()
            elapsed_ms = (time.perf_counter() - start) * 1e3
            if round_index >= warmup:
                samples[i].append(elapsed_ms)
        if on_round is not None:
            on_round()
    return samples


def round_order(n: int, round_index: int, shuffle: random.Random) -> list[int]:
    """Runner order of one round: alternating for two, shuffled for three or more."""
    if n <= 2:
        return [(round_index + step) % n for step in range(n)]
    order = list(range(n))
    shuffle.shuffle(order)
    return order


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
