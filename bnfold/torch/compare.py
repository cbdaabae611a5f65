"""Compare a folded module with its original on example inputs: a truthy result with describe().

The rule is the ONNX side's (:mod:`bnfold.equivalence.compare`): per output
``max|Δ| ≤ max(atol + rtol·max|ref|, floor_factor·floor)``, ``floor`` being how far the
original's own output moves when its float inputs move by 1–2 eps and its weights by one eps
(:mod:`bnfold.torch.noise_floor`). Folding rounds weights once (in float64, cast back), so its
error sits at that floor; a wrong fold (a channel off, an output used elsewhere) lands far above.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
from torch import nn

from bnfold.equivalence.compare import (
    DEFAULT_FLOOR_FACTOR,
    Metrics,
    Tolerance,
    blind,
    default_tolerance,
    judge,
    measure,
)
from bnfold.torch import noise_floor
from bnfold.torch.noise_floor import Inputs


@dataclasses.dataclass
class OutputMetric:
    """Error of one output tensor (its worst input set)."""

    index: int
    max_abs_error: float
    ref_max_abs: float
    noise_floor: float
    tolerance: float
    problem: str | None = None

    @property
    def ok(self) -> bool:
        return self.problem is None

    @classmethod
    def failed(cls, problem: str) -> OutputMetric:
        return cls(0, float("inf"), 0.0, 0.0, 0.0, problem)

    @classmethod
    def of(cls, index: int, m: Metrics) -> OutputMetric:
        problem = None if m.passed else (m.note or f"max|Δ|={m.max_abs:.3g} > {m.threshold:.3g}")
        error = m.max_abs if m.comparable and not (m.exact and m.mismatches) else float("inf")
        return cls(index, error, m.ref_max, m.floor, m.threshold, problem)


@dataclasses.dataclass
class TorchComparison:
    """Folded vs original on the example inputs; truthy when every output is within tolerance."""

    outputs: list[OutputMetric]
    floor_factor: float = DEFAULT_FLOOR_FACTOR

    def __bool__(self) -> bool:
        return bool(self.outputs) and all(m.ok for m in self.outputs)

    @property
    def max_error(self) -> float:
        return max((m.max_abs_error for m in self.outputs), default=float("inf"))

    @property
    def blind_outputs(self) -> list[int]:
        """Outputs whose noise floor is too large a share of them to catch a 0.1 % error."""
        return [
            m.index
            for m in self.outputs
            if m.problem is None and blind(m.noise_floor, m.ref_max_abs, self.floor_factor)
        ]

    def describe(self) -> str:
        head = "equivalent" if self else "NOT equivalent"
        lines = [f"torch comparison: {head} (max abs error {self.max_error:.3g})"]
        for m in self.outputs:
            detail = (
                f"max|Δ|={m.max_abs_error:.3g} tol={m.tolerance:.3g} "
                f"max|ref|={m.ref_max_abs:.3g} noise floor={m.noise_floor:.3g}"
            )
            if m.problem and not m.problem.startswith("max|Δ|"):
                detail = m.problem
            lines.append(f"  output {m.index}: {'ok' if m.ok else 'FAIL'} {detail}")
        return "\n".join(lines)


class Reference:
    """Reference outputs of the original module and its noise floor, computed once.

    ``rtol``/``atol`` default to the ONNX side's per-dtype tolerance.
    """

    def __init__(
        self,
        model: nn.Module,
        inputs: tuple[Any, ...],
        *,
        rtol: float | None = None,
        atol: float | None = None,
        floor_factor: float = DEFAULT_FLOOR_FACTOR,
    ) -> None:
        self.inputs = inputs
        self.rtol, self.atol = rtol, atol
        self.floor_factor = floor_factor
        self.sets: list[Inputs] = [(tuple(inputs), {})]
        self.outputs = [noise_floor.run(model, s) for s in self.sets]
        self.floors = noise_floor.noise_floors(model, self.sets, self.outputs)

    def compare(self, model: nn.Module) -> TorchComparison:
        """Run ``model`` on the example inputs and compare every output."""
        try:
            outs = [noise_floor.run(model, s) for s in self.sets]
        except Exception as exc:
            problem = f"the folded model failed to run: {type(exc).__name__}: {exc}"
            return TorchComparison([OutputMetric.failed(problem)])
        if len(outs[0]) != len(self.outputs[0]):
            problem = f"{len(outs[0])} outputs instead of {len(self.outputs[0])}"
            return TorchComparison([OutputMetric.failed(problem)])
        metrics = [self._metric(i, outs) for i in range(len(self.outputs[0]))]
        return TorchComparison(metrics, self.floor_factor)

    def _metric(self, i: int, outs: list[list[np.ndarray]]) -> OutputMetric:
        ref0 = self.outputs[0][i]
        default = default_tolerance(ref0.dtype)
        tol = Tolerance(
            default.rtol if self.rtol is None else self.rtol,
            default.atol if self.atol is None else self.atol,
        )
        runs = [
            measure(ref[i], got[i], tol, seed)
            for seed, (ref, got) in enumerate(zip(self.outputs, outs, strict=True))
        ]
        judge(runs, self.floors[i], self.floor_factor)
        return OutputMetric.of(i, max(runs, key=lambda m: m.ratio))


def run(model: nn.Module, inputs: tuple[Any, ...]) -> Any:
    """``model(*inputs)`` under no_grad, on fresh copies, with a fixed RNG seed."""
    return noise_floor.run_raw(model, (tuple(inputs), {}))
