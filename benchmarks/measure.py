"""What the comparison measures on a tool's output: BN left, max error, latency."""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

RTOL = 1e-4  # equivalent when max |cand - ref| <= RTOL * max(1, max |ref|)


def op_counts(path: str) -> Counter[str]:
    """Node counts by op type over the main graph, its subgraphs and local functions."""
    import onnx

    model = onnx.load(path, load_external_data=False)
    counts: Counter[str] = Counter()
    graphs = [model.graph, *model.functions]
    while graphs:
        graph = graphs.pop()
        for node in graph.node:
            counts[node.op_type] += 1
            for attr in node.attribute:
                if attr.HasField("g"):
                    graphs.append(attr.g)
                graphs.extend(attr.graphs)
    return counts


@dataclass
class ErrorCheck:
    """Largest absolute difference from the reference over all outputs and seeds."""

    max_abs: float
    ref_scale: float
    problem: str | None = None  # set when the outputs cannot be compared at all

    @property
    def equivalent(self) -> bool:
        return self.problem is None and self.max_abs <= RTOL * max(1.0, self.ref_scale)

    def cell(self) -> str:
        if self.problem:
            return f"✗ {self.problem}"
        return f"{self.max_abs:.1e}" + ("" if self.equivalent else " ✗")


def reference_outputs(path: str, seeds: tuple[int, ...] = (0, 1)) -> list[tuple[dict, list]]:
    """Feeds and outputs of the original model at ORT_DISABLE_ALL, per seed."""
    from bnfold.latency.inputs import make_feeds

    session = _session(path)
    runs = []
    for seed in seeds:
        feeds = make_feeds(session, seed=seed)
        runs.append((feeds, session.run(None, feeds)))
    return runs


def max_error(candidate: str, reference: list[tuple[dict, list]]) -> ErrorCheck:
    """Compare a tool's output with the reference runs, outputs matched by position."""
    try:
        session = _session(candidate)
        worst, scale = 0.0, 0.0
        for feeds, ref_outs in reference:
            outs = session.run(None, feeds)
            if len(outs) != len(ref_outs):
                return ErrorCheck(np.inf, 0.0, f"{len(outs)} outputs, expected {len(ref_outs)}")
            for got, want in zip(outs, ref_outs, strict=True):
                got, want = np.asarray(got), np.asarray(want)
                if got.shape != want.shape:
                    return ErrorCheck(np.inf, 0.0, f"shape {got.shape} != {want.shape}")
                got, want = got.astype(np.float64), want.astype(np.float64)
                if (np.isnan(got) != np.isnan(want)).any():
                    return ErrorCheck(np.inf, 0.0, "NaN where the reference has none")
                finite = ~np.isnan(want)
                if finite.any():
                    worst = max(worst, float(np.abs(got - want)[finite].max()))
                    scale = max(scale, float(np.abs(want[finite]).max()))
        return ErrorCheck(worst, scale)
    except Exception as err:
        return ErrorCheck(np.inf, 0.0, f"does not run: {type(err).__name__}")


def latency(
    variants: dict[str, str], levels: tuple[str, ...], threads: int | None, target_s: float
) -> Any:
    """Interleaved latency of every variant (the first is the baseline) at each level."""
    from bnfold.latency.api import bench_models

    return bench_models(
        list(variants.items()),
        levels=levels,
        threads=threads,
        warmup=3,
        target_s=target_s,
        progress=False,
    )


def _session(path: str) -> Any:
    from bnfold.latency.sessions import create_session

    return create_session(path, "disable").session
