"""Compare a folded module with its original on example inputs: a truthy result with describe().

Tolerance per output: ``max(atol, rtol·max|ref|, min(noise_factor·floor, 1e-3·max|ref|))``.
``floor`` is the model's own numerical noise: how much the reference output moves when every
input is nudged by one ulp. Folding rounds weights once (in float64, cast back), so its error
sits at that floor; a wrong fold (a channel off, an output used elsewhere) lands far above it.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import nn
from torch.utils._pytree import tree_leaves


@dataclasses.dataclass
class OutputMetric:
    """Error of one output tensor."""

    index: int
    max_abs_error: float
    ref_max_abs: float
    noise_floor: float
    tolerance: float
    problem: str | None = None

    @property
    def ok(self) -> bool:
        return self.problem is None and self.max_abs_error <= self.tolerance


@dataclasses.dataclass
class TorchComparison:
    """Folded vs original on the example inputs; truthy when every output is within tolerance."""

    outputs: list[OutputMetric]

    def __bool__(self) -> bool:
        return bool(self.outputs) and all(m.ok for m in self.outputs)

    @property
    def max_error(self) -> float:
        return max((m.max_abs_error for m in self.outputs), default=float("inf"))

    def describe(self) -> str:
        head = "equivalent" if self else "NOT equivalent"
        lines = [f"torch comparison: {head} (max abs error {self.max_error:.3g})"]
        for m in self.outputs:
            detail = m.problem or (
                f"max|Δ|={m.max_abs_error:.3g} tol={m.tolerance:.3g} "
                f"max|ref|={m.ref_max_abs:.3g} noise floor={m.noise_floor:.3g}"
            )
            lines.append(f"  output {m.index}: {'ok' if m.ok else 'FAIL'} {detail}")
        return "\n".join(lines)


class Reference:
    """Reference outputs of the original module and its noise floor, computed once."""

    def __init__(
        self, model: nn.Module, inputs: tuple[Any, ...], *, rtol: float = 1e-4, atol: float = 1e-6
    ) -> None:
        self.inputs = inputs
        self.rtol, self.atol = rtol, atol
        self.noise_factor = 16.0
        self.outputs = _leaves(run(model, inputs))
        self.floors = self._noise_floor(model)

    def _noise_floor(self, model: nn.Module) -> list[float]:
        floors = [0.0] * len(self.outputs)
        for seed in (1, 2):
            gen = torch.Generator().manual_seed(seed)
            nudged = tuple(_nudge(x, gen) for x in self.inputs)
            try:
                outs = _leaves(run(model, nudged))
            except Exception:  # the model rejects nudged inputs (e.g. integer masks): no floor
                return floors
            for i, (a, b) in enumerate(zip(self.outputs, outs, strict=False)):
                if a.is_floating_point() and a.shape == b.shape:
                    floors[i] = max(floors[i], _max_abs(a.double() - b.double()))
        return floors

    def compare(self, model: nn.Module) -> TorchComparison:
        """Run ``model`` on the example inputs and compare every output."""
        try:
            outs = _leaves(run(model, self.inputs))
        except Exception as exc:
            problem = f"the folded model failed to run: {type(exc).__name__}: {exc}"
            return TorchComparison([OutputMetric(0, float("inf"), 0.0, 0.0, 0.0, problem)])
        if len(outs) != len(self.outputs):
            problem = f"{len(outs)} outputs instead of {len(self.outputs)}"
            return TorchComparison([OutputMetric(0, float("inf"), 0.0, 0.0, 0.0, problem)])
        return TorchComparison(
            [self._metric(i, r, c) for i, (r, c) in enumerate(zip(self.outputs, outs, strict=True))]
        )

    def _metric(self, i: int, ref: torch.Tensor, cand: torch.Tensor) -> OutputMetric:
        floor = self.floors[i]
        scale = _max_abs(ref.double()) if ref.numel() else 0.0
        noise = min(self.noise_factor * floor, 1e-3 * scale)  # a chaotic model must not excuse all
        tol = max(self.atol, self.rtol * scale, noise)
        if ref.shape != cand.shape or ref.dtype != cand.dtype:
            problem = (
                f"shape/dtype {tuple(cand.shape)}/{cand.dtype} != {tuple(ref.shape)}/{ref.dtype}"
            )
            return OutputMetric(i, float("inf"), scale, floor, tol, problem)
        if not ref.is_floating_point():
            err = 0.0 if torch.equal(ref, cand) else float("inf")
        else:
            err = _error(ref.double(), cand.double())
        return OutputMetric(i, err, scale, floor, tol)


def run(model: nn.Module, inputs: tuple[Any, ...]) -> Any:
    """``model(*inputs)`` under no_grad, on fresh copies of the inputs, with a fixed RNG seed.

    Copies: a model may modify its inputs in place. Seed: a model may draw random numbers
    (Monte-Carlo dropout); both runs then draw the same ones.
    """
    fresh = tuple(x.clone() if isinstance(x, torch.Tensor) else x for x in inputs)
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.no_grad(), torch.random.fork_rng(devices=devices):
        torch.manual_seed(0)
        return model(*fresh)


def _leaves(out: Any) -> list[torch.Tensor]:
    return [t.detach() for t in tree_leaves(out) if isinstance(t, torch.Tensor)]


def _error(ref: torch.Tensor, cand: torch.Tensor) -> float:
    finite = torch.isfinite(ref)
    if not torch.equal(finite, torch.isfinite(cand)):
        return float("inf")
    same_special = torch.equal(ref[~finite].nan_to_num(0.0), cand[~finite].nan_to_num(0.0))
    if not same_special or not torch.equal(torch.isnan(ref), torch.isnan(cand)):
        return float("inf")
    return _max_abs(ref[finite] - cand[finite])


def _max_abs(t: torch.Tensor) -> float:
    finite = t[torch.isfinite(t)]
    return float(finite.abs().max()) if finite.numel() else 0.0


def _nudge(x: Any, gen: torch.Generator) -> Any:
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        return x
    eps = torch.finfo(x.dtype).eps
    sign = torch.randint(0, 2, x.shape, generator=gen).to(x.dtype) * 2 - 1
    return x + x * (eps * sign).to(x.device)
