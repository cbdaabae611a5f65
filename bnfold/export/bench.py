"""``--bench`` for ``.pt2`` programs: eager latency of the original and folded ``ep.module()``.

Both run in torch on the same inputs, interleaved round by round (A B, B A, …) as
:mod:`bnfold.latency.timing` does for onnxruntime, so machine drift hits both alike; the
speed-up is the median of the per-round ratios.
"""

from __future__ import annotations

import copy
import dataclasses
import time
import warnings
from typing import Any

import torch
from torch.export import ExportedProgram

from bnfold.latency.timing import Latency, Speedup, auto_iters, run_interleaved
from bnfold.torch.noise_floor import Inputs

WARMUP = 3
TARGET_S = 2.0


@dataclasses.dataclass
class ProgramBench:
    """Latency of the original and the folded program (torch eager, CPU threads as set)."""

    labels: tuple[str, str]
    original: Latency
    folded: Latency
    speedup: Speedup
    threads: int
    inputs: dict[str, str]

    def describe(self) -> str:
        lines = [f"latency (torch eager, {self.threads} thread(s), {self.original.runs} rounds):"]
        for label, lat in zip(self.labels, (self.original, self.folded), strict=True):
            lines.append(f"  {label:<32} median {lat.median_ms:8.3f} ms  p90 {lat.p90_ms:8.3f} ms")
        s = self.speedup
        lines.append(f"  speed-up {s.median:.2f}× (p10 {s.p10:.2f}×, p90 {s.p90:.2f}×)")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "runtime": "torch eager",
            "threads": self.threads,
            "inputs": self.inputs,
            "runs": [
                {"label": label, **dataclasses.asdict(lat)}
                for label, lat in zip(self.labels, (self.original, self.folded), strict=True)
            ],
            "speedup": dataclasses.asdict(self.speedup),
        }


def bench_programs(
    original: ExportedProgram,
    folded: ExportedProgram,
    inputs: Inputs,
    labels: tuple[str, str] = ("original", "folded"),
    iters: int | None = None,
) -> ProgramBench:
    """Time both programs' modules on ``inputs`` (about two seconds unless ``iters``)."""
    with warnings.catch_warnings():  # torch's own pytree deprecation note, once per module()
        warnings.filterwarnings("ignore", message=".*LeafSpec.*", category=FutureWarning)
        modules = [copy.deepcopy(ep.module()) for ep in (original, folded)]
    args, kwargs = inputs

    def runner(module: torch.nn.Module) -> Any:
        def run() -> Any:
            with torch.no_grad():
                return module(*args, **kwargs)

        return run

    runners = [runner(m) for m in modules]
    start = time.perf_counter()
    run_interleaved(runners, iters=1, warmup=WARMUP - 1)
    per_round_ms = (time.perf_counter() - start) * 1e3 / WARMUP
    rounds = iters or auto_iters(per_round_ms, TARGET_S, lo=10, hi=300)
    samples = run_interleaved(runners, iters=rounds)
    described = {
        f"input {i}": f"{str(t.dtype).replace('torch.', '')} {'x'.join(map(str, t.shape))}"
        for i, t in enumerate(x for x in args if isinstance(x, torch.Tensor))
    }
    return ProgramBench(
        labels=labels,
        original=Latency.from_samples(samples[0]),
        folded=Latency.from_samples(samples[1]),
        speedup=Speedup.from_pairs(samples[0], samples[1]),
        threads=torch.get_num_threads(),
        inputs=described,
    )
