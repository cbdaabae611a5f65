"""The judgement rule: calm on ill-conditioned, tiny, saturated, integer and NaN outputs,
strict on everything else."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from support import verify_inject as inject
from support import verify_models as vm

from bnfold.equivalence import verify
from bnfold.equivalence.compare import Floor, Tolerance, floor_contribution, judge, measure

SEEDS = 5


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def _ill_conditioned() -> onnx.ModelProto:
    """Conv bias and BN mean of 1e4 cancel to a logit near −10: the reference is noisy."""
    return vm.conv_bn(_rng(11), activation="Sigmoid", beta_offset=-10.0, cancel_offset=1e4)


def test_ill_conditioned_correct_fold_passes_because_of_the_floor() -> None:
    model = _ill_conditioned()
    folded = inject.fold_batchnorms(model)
    result = verify(model, folded, seeds=SEEDS)
    assert result, result.describe()
    worst = max((o.worst for o in result.outputs), key=lambda m: m.max_abs / m.tolerance)
    assert worst.max_abs > worst.tolerance  # the fixed tolerance alone would fail it
    assert worst.max_abs <= worst.threshold
    without_floor = verify(model, folded, seeds=SEEDS, perturbations=0)
    assert not without_floor


def test_tiny_sigmoid_outputs_pass_and_bugs_still_fail() -> None:
    """Sigmoid outputs near 5e-5: ORT's own Sigmoid noise hides a 1e-3 channel error in
    the output, the probe on its input does not."""
    model = vm.conv_bn(_rng(12), activation="Sigmoid", beta_offset=-10.0, gamma_scale=0.1)
    result = verify(model, inject.fold_batchnorms(model), seeds=SEEDS)
    assert result, result.describe()
    y = next(o for o in result.outputs if o.name == "y")
    assert max(m.ref_max for m in y.runs) < 2e-3  # really tiny
    broken = inject.fold_batchnorms(model, bug="channel_off", channel=2)
    result = verify(model, broken, seeds=SEEDS)
    assert not result
    assert "y before Sigmoid" in [o.label for o in result.failures]


def test_saturated_outputs_pass() -> None:
    model = vm.conv_bn(_rng(13), activation="Sigmoid", gamma_scale=1000.0)
    result = verify(model, inject.fold_batchnorms(model), seeds=SEEDS)
    assert result, result.describe()


def test_saturation_hides_no_bug_thanks_to_the_probe() -> None:
    """Every output is exactly 1.0, so only the Sigmoid's input shows the bug."""
    model = vm.conv_bn(_rng(12), activation="Sigmoid", gamma_scale=0.5, beta_offset=40.0)
    broken = inject.fold_batchnorms(model, bug="channel_off", channel=2)
    result = verify(model, broken, seeds=SEEDS)
    assert not result
    assert [o.label for o in result.failures] == ["y before Sigmoid"]
    assert result.outputs[0].max_abs == 0.0
    assert verify(model, broken, seeds=SEEDS, probes=False)  # the plain output cannot tell


def test_integer_only_inputs_use_the_weight_floor() -> None:
    model = vm.embedding_gemm_bn(_rng(14), vocab=10)
    shapes = {"ids": (32,)}
    folded = inject.fold_batchnorms(model)
    result = verify(model, folded, seeds=SEEDS, shapes=shapes, measure_floor=True)
    assert result, result.describe()
    floor = result.outputs[0].floor
    assert floor is not None and floor > 0
    assert not result.warnings
    broken = inject.fold_batchnorms(model, bug="eps_ignored")
    assert not verify(model, broken, seeds=SEEDS, shapes=shapes)


@pytest.mark.parametrize("tail", ["ArgMax", "IsPositive"])
def test_exact_outputs(tail: str) -> None:
    model = vm.conv_bn(_rng(15), activation=tail)
    result = verify(model, inject.fold_batchnorms(model), seeds=SEEDS)
    assert result, result.describe()
    exact = next(o for o in result.outputs if not o.probe)
    assert exact.exact and exact.dtype in ("int64", "bool")
    broken = verify(model, inject.fold_batchnorms(model, bug="mean_sign"), seeds=SEEDS)
    assert not broken
    assert any(m.mismatches > 0 for m in next(o for o in broken.outputs if not o.probe).runs)


def test_nan_at_the_same_places_is_fine_elsewhere_it_fails() -> None:
    model = vm.conv_bn(_rng(16), activation="Sqrt")  # NaN wherever the BN output is < 0
    result = verify(model, inject.fold_batchnorms(model), seeds=SEEDS)
    assert result, result.describe()
    broken = verify(model, inject.fold_batchnorms(model, bug="mean_sign"), seeds=SEEDS)
    assert not broken
    assert "NaN/Inf" in broken.describe()


def test_float16_model() -> None:
    model = vm.conv_bn(_rng(17), dtype=np.float16)
    result = verify(model, inject.fold_batchnorms(model), seeds=SEEDS)
    assert result, result.describe()
    assert result.outputs[0].rtol == pytest.approx(1e-3)
    assert not verify(model, inject.fold_batchnorms(model, bug="scale_twice"), seeds=SEEDS)


def test_measure_and_judge_float() -> None:
    ref = np.array([1.0, -2.0, np.nan, 4.0], np.float32)
    cand = ref + np.array([0.0, 1e-3, 0.0, 0.0], np.float32)
    m = measure(ref, cand, Tolerance(rtol=1e-6, atol=0.0), seed=0)
    assert m.max_abs == pytest.approx(1e-3, rel=1e-3)
    assert m.max_rel == pytest.approx(1e-3 / 4, rel=1e-3)
    assert m.mismatches == 0
    judge([m], Floor(1e-3), floor_factor=5.0)
    assert m.passed and m.threshold == pytest.approx(5e-3)
    judge([m], Floor(1e-5), floor_factor=5.0)
    assert not m.passed


def test_measure_nan_placement_and_shape() -> None:
    ref = np.array([1.0, np.nan], np.float32)
    m = measure(ref, np.array([1.0, 2.0], np.float32), Tolerance(1e-6, 0.0), seed=0)
    judge([m], Floor(1.0), floor_factor=5.0)
    assert m.mismatches == 1 and not m.passed
    s = measure(ref, np.ones(3, np.float32), Tolerance(1e-6, 0.0), seed=0)
    judge([s], Floor(1.0), floor_factor=5.0)
    assert not s.comparable and not s.passed and "candidate" in s.note


def test_exact_mismatches_allowed_up_to_the_flip_floor() -> None:
    ref = np.array([0, 1, 2, 3, 4, 5], np.int64)
    cand = ref.copy()
    cand[:2] = 9
    m = measure(ref, cand, Tolerance(0.0, 0.0), seed=0)
    judge([m], Floor(), floor_factor=5.0)
    assert m.exact and m.mismatches == 2 and not m.passed
    judge([m], Floor(flips=1), floor_factor=5.0)  # the reference flips one element
    assert m.passed


def test_overflow_at_the_edge_is_judged_by_flips() -> None:
    """An element the perturbed reference itself pushes to Inf may differ in the candidate."""
    ref = np.array([1.0, np.inf, 3.0], np.float32)
    floor = floor_contribution(ref, np.array([1.0, 6e4, 3.0], np.float32))
    assert floor == Floor(0.0, 1)
    m = measure(ref, np.array([1.0, 6.5e4, 3.0], np.float32), Tolerance(1e-6, 0.0), seed=0)
    judge([m], floor, floor_factor=5.0)
    assert m.mismatches == 1 and m.passed
    judge([m], Floor(), floor_factor=5.0)
    assert not m.passed


def test_cosine_reported() -> None:
    ref = np.ones(4, np.float32)
    m = measure(ref, -ref, Tolerance(0.0, 0.0), seed=0)
    assert m.cosine == pytest.approx(-1.0)
