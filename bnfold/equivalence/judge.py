"""The judge phase of a comparison: outputs of a run → a :class:`VerifyResult`.

Per output and input set: metrics against a fixed tolerance; per output: the reference's
noise floor pooled over every set's perturbed runs, when it was measured (only when some
output fails its fixed tolerance, unless asked for: a floor only loosens the rule); then
the pass/fail rule of :mod:`bnfold.equivalence.compare`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from bnfold.equivalence import compare as cmp
from bnfold.equivalence.result import OutputComparison, VerifyResult
from bnfold.equivalence.run import InputSetRun, PairRun
from bnfold.equivalence.signature import TensorSpec
from bnfold.errors import InputError

ToleranceSpec = tuple[float | None, float | None] | Mapping[str, float]


class Judge:
    """Measures input sets as they come (a :class:`~bnfold.equivalence.run.RunSink`)."""

    def __init__(
        self,
        *,
        rtol: float | None = None,
        atol: float | None = None,
        output_tolerances: Mapping[str, ToleranceSpec] | None = None,
        floor_factor: float | None = None,
    ) -> None:
        self.factor = cmp.DEFAULT_FLOOR_FACTOR if floor_factor is None else float(floor_factor)
        if not self.factor >= 0:
            raise InputError("floor_factor must be non-negative")
        self.rtol, self.atol, self.per_output = rtol, atol, output_tolerances
        self.tolerances: dict[str, cmp.Tolerance] = {}
        self.runs: dict[str, list[cmp.Metrics]] = {}
        self.floors: dict[str, cmp.Floor] = {}
        self._needs_floor = False

    def start(self, outputs: Sequence[TensorSpec]) -> None:
        """Fix each output's tolerance; unknown names in ``output_tolerances`` are refused."""
        self.tolerances = tolerances(outputs, self.rtol, self.atol, self.per_output)
        self.runs = {o.name: [] for o in outputs}
        self.floors = dict.fromkeys(self.runs, cmp.Floor())

    def add(self, run: InputSetRun) -> None:
        """Measure one input set; an output missing from it (a dropped probe) is forgotten."""
        for name in [n for n in self.runs if n not in run.reference or n not in run.candidate]:
            del self.runs[name], self.floors[name]
        for name, metrics in self.runs.items():
            ref, cand = run.reference[name], run.candidate[name]
            measured = cmp.measure(ref, cand, self.tolerances[name], run.seed)
            metrics.append(measured)
            self._needs_floor = self._needs_floor or cmp.fails_without_floor(measured)
        self.add_floor(run.reference, run.perturbed)

    def needs_floor(self) -> bool:
        """True once an output failed without a floor (only then may the floor matter)."""
        return self._needs_floor

    def add_floor(
        self, reference: Mapping[str, np.ndarray], perturbed: Sequence[Mapping[str, np.ndarray]]
    ) -> None:
        """Pool one input set's perturbed reference runs into each output's floor."""
        for moved in perturbed:
            for name, floor in self.floors.items():
                contribution = cmp.floor_contribution(reference[name], moved[name])
                self.floors[name] = floor.merge(contribution)

    def result(self, run: PairRun) -> VerifyResult:
        """Judge every output against its tolerance and, when measured, its floor."""
        warnings = list(run.warnings)
        measured = run.floor_measured
        for name, metrics in self.runs.items():
            cmp.judge(metrics, self.floors[name] if measured else None, self.factor)
            if measured:
                label = run.probe_labels.get(name, name)
                warnings += _blind_warning(label, metrics, self.factor)
        found = run.shape_search
        unmeasured = "off" if self._needs_floor else "not needed"
        noise_floor = "measured" if measured else unmeasured
        return VerifyResult(
            reference=run.reference,
            candidate=run.candidate,
            provider=run.provider,
            seeds=run.seeds,
            floor_factor=self.factor,
            inputs=run.inputs,
            outputs=[
                OutputComparison(
                    o.name,
                    str(o.dtype),
                    self.tolerances[o.name].rtol,
                    self.tolerances[o.name].atol,
                    self.runs[o.name],
                    label=run.probe_labels.get(o.name, o.name),
                    probe=o.name in run.probe_labels,
                )
                for o in run.outputs
                if o.name in self.runs
            ],
            defaulted_dims=run.defaulted_dims,
            warnings=warnings,
            shape_search=found.to_dict() if found.searched else None,
            input_shapes=run.input_shapes,
            noise_floor=noise_floor,
        )


def _blind_warning(label: str, metrics: Sequence[cmp.Metrics], factor: float) -> list[str]:
    """A passing float output whose own noise would let a 0.1 % error through."""
    floats = [m for m in metrics if m.passed and not m.exact and m.ref_max > 0]
    worst = max(floats, key=lambda m: m.threshold / m.ref_max, default=None)
    if worst is None or worst.floor is None or not cmp.blind(worst.floor, worst.ref_max, factor):
        return []
    return [
        f"{label}: the original's own rounding noise (floor {worst.floor:.3g}, max|ref| "
        f"{worst.ref_max:.3g}) lets errors up to {worst.threshold / worst.ref_max:.1%} of the "
        "output pass: this check cannot see small fold errors here"
    ]


def judge(
    run: PairRun,
    *,
    rtol: float | None = None,
    atol: float | None = None,
    output_tolerances: Mapping[str, ToleranceSpec] | None = None,
    floor_factor: float | None = None,
) -> VerifyResult:
    """Turn the kept outputs of ``run_pair`` into a :class:`VerifyResult`."""
    sink = Judge(
        rtol=rtol, atol=atol, output_tolerances=output_tolerances, floor_factor=floor_factor
    )
    sink.start(run.outputs)
    for one in run.sets:
        sink.add(one)
    return sink.result(run)


def tolerances(
    outputs: Sequence[TensorSpec],
    rtol: float | None,
    atol: float | None,
    per_output: Mapping[str, ToleranceSpec] | None,
) -> dict[str, cmp.Tolerance]:
    """Each output's fixed tolerance: per-dtype defaults, then global, then per-output values."""
    names = {o.name for o in outputs}
    unknown = sorted(set(per_output or {}) - names)
    if unknown:
        raise InputError(f"tolerance for unknown output(s) {unknown}; outputs are {sorted(names)}")
    result = {}
    for o in outputs:
        base = cmp.default_tolerance(o.dtype)
        r = base.rtol if rtol is None else rtol
        a = base.atol if atol is None else atol
        spec = (per_output or {}).get(o.name)
        if isinstance(spec, Mapping):
            r, a = spec.get("rtol", r), spec.get("atol", a)
        elif spec is not None:
            r = r if spec[0] is None else spec[0]
            a = a if spec[1] is None else spec[1]
        if not (r >= 0 and a >= 0):
            raise InputError(f"tolerances must be non-negative (output {o.name!r})")
        result[o.name] = cmp.Tolerance(float(r), float(a))
    return result
