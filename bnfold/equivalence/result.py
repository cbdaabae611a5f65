"""Verification results: truthy values with per-output metrics, ``describe()`` and ``to_dict()``."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from bnfold.equivalence.compare import Metrics

SCHEMA_VERSION = 2  # 2: "floor" may be null (not measured), "noise_floor" added
FLOOR_NOTES = {  # the report's line on a noise floor that was not measured
    "not needed": "noise floor: not needed (every output within its fixed tolerance)",
    "off": "noise floor: not measured (perturbations=0): fixed tolerances only",
}


@dataclasses.dataclass
class OutputComparison:
    """One output over every input set; the headline metrics are those of its worst set."""

    name: str
    dtype: str
    rtol: float
    atol: float
    runs: list[Metrics]
    label: str = ""  # what reports show; probes read "<output> before <Op>"
    probe: bool = False  # an extra output exposing the input of a squashing op

    def __post_init__(self) -> None:
        self.label = self.label or self.name

    @property
    def worst(self) -> Metrics:
        failing = [m for m in self.runs if not m.passed]
        return max(failing or self.runs, key=lambda m: (m.ratio, m.max_abs))

    @property
    def passed(self) -> bool:
        return all(m.passed for m in self.runs)

    @property
    def failed_seeds(self) -> list[int]:
        return [m.seed for m in self.runs if not m.passed]

    @property
    def exact(self) -> bool:
        return self.worst.exact

    @property
    def max_abs(self) -> float:
        return max(m.max_abs for m in self.runs)

    @property
    def max_rel(self) -> float:
        return max(m.max_rel for m in self.runs)

    @property
    def mean_abs(self) -> float:
        return max(m.mean_abs for m in self.runs)

    @property
    def cosine(self) -> float:
        return min(m.cosine for m in self.runs)

    @property
    def floor(self) -> float | None:
        """The reference's noise floor (pooled over input sets); None when not measured."""
        return self.worst.floor

    @property
    def tolerance(self) -> float:
        """Fixed tolerance ``atol + rtol·max|ref|`` on the worst input set."""
        return self.worst.tolerance

    @property
    def threshold(self) -> float:
        """What the error had to stay under on the worst input set."""
        return self.worst.threshold

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "label": self.label,
            "probe": self.probe,
            "dtype": self.dtype,
            "passed": self.passed,
            "exact": self.exact,
            "max_abs": _num(self.max_abs),
            "max_rel": _num(self.max_rel),
            "mean_abs": _num(self.mean_abs),
            "cosine": _num(self.cosine),
            "floor": _opt(self.floor),
            "tolerance": _num(self.tolerance),
            "threshold": _num(self.threshold),
            "rtol": self.rtol,
            "atol": self.atol,
            "failed_seeds": self.failed_seeds,
            "runs": [_run_dict(m) for m in self.runs],
        }


@dataclasses.dataclass
class VerifyResult:
    """Truthy iff every output passes on every input set."""

    reference: str
    candidate: str
    provider: str
    seeds: list[int]
    floor_factor: float
    inputs: dict[str, str]  # name -> "float32 1x3x224x224 (synthesised)"
    outputs: list[OutputComparison]
    defaulted_dims: dict[str, int] = dataclasses.field(default_factory=dict)
    warnings: list[str] = dataclasses.field(default_factory=list)
    shape_search: dict[str, Any] | None = None  # the attempts, when default shapes failed
    input_shapes: dict[str, tuple[int, ...]] = dataclasses.field(default_factory=dict)
    noise_floor: str = "measured"  # or "not needed" (every output within its fixed
    # tolerance, so no floor could change a verdict) or "off" (perturbations=0)

    def __bool__(self) -> bool:
        return self.passed

    @property
    def passed(self) -> bool:
        return all(o.passed for o in self.outputs)

    @property
    def failures(self) -> list[OutputComparison]:
        return [o for o in self.outputs if not o.passed]

    def summary(self) -> str:
        """One line: the verdict and the worst output."""
        if self.passed:
            return (
                f"equivalent: {len(self.outputs)} output(s) match on {len(self.seeds)} input set(s)"
            )
        parts = []
        for o in self.failures:
            w = o.worst
            what = w.note or f"max_abs {w.max_abs:.3g} > threshold {w.threshold:.3g}"
            parts.append(f"{o.label} ({what}, seed {w.seed})")
        return "NOT equivalent: " + "; ".join(parts)

    def describe(self) -> str:
        """Multi-line report: setup, one row per output, verdict."""
        lines = [
            f"reference: {self.reference}",
            f"candidate: {self.candidate}",
            f"provider {self.provider}, ORT_DISABLE_ALL, input sets (seeds) {self.seeds}, "
            f"pass if max_abs <= max(atol + rtol*max|ref|, {self.floor_factor:g} x floor)",
        ]
        for name, text in self.inputs.items():
            lines.append(f"  input {name}: {text}")
        if self.defaulted_dims:
            dims = ", ".join(f"{k}={v}" for k, v in self.defaulted_dims.items())
            how = "found by search" if self.shape_search else "set by default"
            lines.append(f"  symbolic dims {how}: {dims} (override with shapes)")
        header = (
            f"  {'output':<24} {'max_abs':>10} {'max_rel':>10} {'mean_abs':>10} {'cosine':>10} "
            f"{'floor':>10} {'tolerance':>10} {'threshold':>10}  verdict"
        )
        lines.append(header)
        for o in self.outputs:
            w = o.worst
            verdict = "pass" if o.passed else f"FAIL (seeds {o.failed_seeds})"
            if w.note:
                verdict += f": {w.note}"
            floor = "—" if w.floor is None else f"{w.floor:.3g}"
            lines.append(
                f"  {_short(o.label, 24):<24} {o.max_abs:>10.3g} {o.max_rel:>10.3g} "
                f"{o.mean_abs:>10.3g} {o.cosine:>10.7f} {floor:>10} {w.tolerance:>10.3g} "
                f"{w.threshold:>10.3g}  {verdict}"
            )
        if self.noise_floor in FLOOR_NOTES:
            lines.append(FLOOR_NOTES[self.noise_floor])
        lines.extend(f"warning: {w}" for w in self.warnings)
        lines.append(self.summary())
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form; the schema is documented in docs/ci.md."""
        return {
            "schema_version": SCHEMA_VERSION,
            "equivalent": self.passed,
            "reference": self.reference,
            "candidate": self.candidate,
            "provider": self.provider,
            "seeds": self.seeds,
            "floor_factor": self.floor_factor,
            "noise_floor": self.noise_floor,
            "inputs": self.inputs,
            "defaulted_dims": self.defaulted_dims,
            "input_shapes": {k: list(v) for k, v in self.input_shapes.items()},
            "shape_search": self.shape_search,
            "outputs": [o.to_dict() for o in self.outputs],
            "warnings": self.warnings,
            "summary": self.summary(),
        }


def _run_dict(m: Metrics) -> dict[str, Any]:
    return {
        "seed": m.seed,
        "passed": m.passed,
        "max_abs": _num(m.max_abs),
        "max_rel": _num(m.max_rel),
        "mean_abs": _num(m.mean_abs),
        "cosine": _num(m.cosine),
        "ref_max": _num(m.ref_max),
        "floor": _opt(m.floor),
        "tolerance": _num(m.tolerance),
        "threshold": _num(m.threshold),
        "mismatches": m.mismatches,
        "note": m.note,
    }


def _num(x: float) -> float | str:
    """JSON has no Infinity/NaN: write those as strings."""
    return x if math.isfinite(x) else str(x)


def _opt(x: float | None) -> float | str | None:
    """``_num``, with None (not measured) as null."""
    return None if x is None else _num(x)


def _short(text: str, width: int) -> str:
    return text if len(text) <= width else "…" + text[-(width - 1) :]
