"""Per-output metrics, the reference's noise floor, and the pass/fail judgement.

Rule (docs/verify.md has the evidence behind the defaults): a float output passes on an
input set when NaN/Inf sit at the same places in both models and

    max|cand − ref| ≤ max(atol + rtol·max|ref|,  floor_factor · floor)

where ``floor`` is the largest change of the *reference* output when its float inputs move
by 1–2 eps and its weights by 1 eps (relative), pooled over every input set. Integer and
bool outputs must match exactly, and NaN/Inf must sit at the same places, except that up
to ``floor_factor`` times the number of elements that flip in the perturbed reference may
differ (near-ties in an ArgMax, values at the edge of overflow).

A floor only ever loosens the rule, so an output that passes with no floor at all
(:func:`fails_without_floor` is False) passes whatever the floor is: the floor is
measured only when some output fails without it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

import numpy as np

DEFAULT_FLOOR_FACTOR = 5.0
INPUT_ULPS = 2  # float inputs are multiplied by 1 ± k·eps, k in 1…2
WEIGHT_ULPS = 1  # weights by 1 ± eps (a correct fold rounds each weight by ≤ ½ ulp)
DEFAULT_PERTURBATIONS = 2  # perturbed reference runs per input set
SMALL_OUTPUT = 64  # outputs with fewer elements get more perturbed runs
SMALL_OUTPUT_PERTURBATIONS = 4


@dataclasses.dataclass(frozen=True)
class Tolerance:
    """Fixed tolerance of one output: ``atol + rtol·max|ref|``."""

    rtol: float
    atol: float

    def bound(self, ref_scale: float) -> float:
        return self.atol + self.rtol * ref_scale


_DEFAULTS: dict[str, Tolerance] = {
    "float64": Tolerance(rtol=1e-14, atol=0.0),
    "float32": Tolerance(rtol=1e-6, atol=0.0),
    "float16": Tolerance(rtol=1e-3, atol=0.0),
}


def default_tolerance(dtype: np.dtype) -> Tolerance:
    """Default fixed tolerance for an output dtype (exact outputs get zero)."""
    return _DEFAULTS.get(np.dtype(dtype).name, Tolerance(rtol=0.0, atol=0.0))


def is_exact(dtype: np.dtype) -> bool:
    """Integer and bool outputs are compared element by element for equality."""
    return not np.issubdtype(np.dtype(dtype), np.floating)


@dataclasses.dataclass
class Metrics:
    """The comparison of one output on one input set (judged once the floor is known)."""

    seed: int
    max_abs: float
    max_rel: float  # max_abs / max|ref|
    mean_abs: float
    cosine: float
    ref_max: float  # max|ref| over finite elements
    tolerance: float  # atol + rtol·max|ref| (0 for exact outputs)
    mismatches: int  # NaN/Inf placement mismatches, or unequal elements of exact outputs
    exact: bool = False  # integer/bool output: mismatches is judged, not max_abs
    comparable: bool = True  # False when the two outputs differ in shape or dtype
    note: str = ""
    floor: float | None = 0.0  # float: Floor.max_abs; exact: Floor.flips; None: not measured
    threshold: float = 0.0  # what max_abs (or mismatches) must not exceed
    passed: bool = False

    @property
    def ratio(self) -> float:
        """Error over threshold (above 1 fails)."""
        err = float(self.mismatches) if self.exact else self.max_abs
        if self.threshold > 0:
            return err / self.threshold
        return 0.0 if err == 0 else float("inf")


@dataclasses.dataclass(frozen=True)
class Floor:
    """The reference's own noise on one output, pooled over perturbed runs.

    ``max_abs``: largest change of a finite element; ``flips``: most elements whose value
    (exact outputs) or NaN/Inf status (float outputs) changed in one run.
    """

    max_abs: float = 0.0
    flips: int = 0

    def merge(self, other: Floor) -> Floor:
        return Floor(max(self.max_abs, other.max_abs), max(self.flips, other.flips))


def floor_contribution(ref: np.ndarray, perturbed: np.ndarray) -> Floor:
    """How far one perturbed run moved ``ref``."""
    if perturbed.shape != ref.shape:
        return Floor()
    if is_exact(ref.dtype):
        return Floor(flips=int(np.count_nonzero(perturbed != ref)))
    finite = np.isfinite(ref)
    both = finite & np.isfinite(perturbed)
    flips = int(np.count_nonzero(~_same_nonfinite(ref, perturbed) & ~both))
    if not np.any(both):
        return Floor(flips=flips)
    diff = np.abs(perturbed[both].astype(np.float64) - ref[both].astype(np.float64))
    return Floor(float(diff.max()), flips)


def _same_nonfinite(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Elementwise: both NaN, or the same infinity."""
    return (np.isnan(a) & np.isnan(b)) | (np.isinf(a) & (a == b))


def measure(ref: np.ndarray, cand: np.ndarray, tolerance: Tolerance, seed: int) -> Metrics:
    """Error metrics of one output on one input set."""
    if ref.shape != cand.shape or ref.dtype != cand.dtype:
        inf = float("inf")
        return Metrics(
            seed=seed,
            max_abs=inf,
            max_rel=inf,
            mean_abs=inf,
            cosine=0.0,
            ref_max=0.0,
            tolerance=0.0,
            mismatches=max(ref.size, cand.size),
            exact=is_exact(ref.dtype),
            comparable=False,
            note=f"reference gives {ref.dtype} {ref.shape}, candidate {cand.dtype} {cand.shape}",
        )
    r = ref.astype(np.float64)
    c = cand.astype(np.float64)
    if is_exact(ref.dtype):
        mismatches = int(np.count_nonzero(ref != cand))
        finite = np.ones(r.shape, dtype=bool)
        note = f"{mismatches} element(s) differ" if mismatches else ""
    else:
        finite = np.isfinite(r) & np.isfinite(c)
        mismatches = int(np.count_nonzero(~finite & ~_same_nonfinite(r, c)))
        note = f"{mismatches} NaN/Inf element(s) differ" if mismatches else ""
    diff = np.abs(c[finite] - r[finite])
    max_abs = float(diff.max()) if diff.size else 0.0
    ref_max = float(np.abs(r[finite]).max()) if diff.size else 0.0
    return Metrics(
        seed=seed,
        max_abs=max_abs,
        max_rel=_ratio(max_abs, ref_max),
        mean_abs=float(diff.mean()) if diff.size else 0.0,
        cosine=cosine(r[finite], c[finite]),
        ref_max=ref_max,
        tolerance=0.0 if is_exact(ref.dtype) else tolerance.bound(ref_max),
        mismatches=mismatches,
        exact=is_exact(ref.dtype),
        note=note,
    )


def judge(runs: Iterable[Metrics], floor: Floor | None, floor_factor: float) -> None:
    """Set floor, threshold and verdict on each run of one output.

    ``floor`` None: not measured; judged as with a zero floor, ``Metrics.floor`` None.
    """
    used = Floor() if floor is None else floor
    factor = 0.0 if floor is None else floor_factor  # no 0·inf
    allowed_flips = factor * used.flips
    for m in runs:
        if not m.comparable:
            m.floor, m.threshold, m.passed = used.max_abs, 0.0, False
        elif m.exact:
            m.floor = float(used.flips)
            m.threshold = allowed_flips
            m.passed = m.mismatches <= allowed_flips
        else:
            m.floor = used.max_abs
            m.threshold = max(m.tolerance, factor * used.max_abs)
            m.passed = m.mismatches <= allowed_flips and m.max_abs <= m.threshold
        if floor is None:
            m.floor = None


def fails_without_floor(m: Metrics) -> bool:
    """True when ``m`` fails the rule with a zero floor: only then can a floor change it."""
    alone = dataclasses.replace(m)
    judge([alone], Floor(), floor_factor=0.0)
    return not alone.passed


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity in float64; 1.0 when both are all zero."""
    na = float(np.linalg.norm(a))
    nb = float(np.linalg.norm(b))
    if na == 0.0 and nb == 0.0:
        return 1.0
    if na == 0.0 or nb == 0.0:
        return 0.0
    return float(np.dot(a.ravel(), b.ravel()) / (na * nb))


def _ratio(num: float, den: float) -> float:
    if den > 0:
        return num / den
    return 0.0 if num == 0 else float("inf")


BLIND_SHARE = 1e-3  # a noise allowance this share of max|ref| could hide a 0.1 % error


def blind(floor: float, ref_max: float, floor_factor: float) -> bool:
    """True when the model's own noise would let an error of ``BLIND_SHARE·max|ref|`` pass.

    A chaotic model (random BN statistics, deep attention) moves by a large share of its
    output under a one-ulp nudge; a check in float64 then says more than one in float32.
    """
    return ref_max > 0 and floor_factor * floor > BLIND_SHARE * ref_max
