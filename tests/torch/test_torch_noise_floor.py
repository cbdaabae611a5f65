"""The module path judges folds with the ONNX side's noise-floor rule (weights and inputs moved)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from support.torch_helpers import prepared  # noqa: E402
from torch import nn  # noqa: E402

import bnfold  # noqa: E402
from bnfold.equivalence.compare import DEFAULT_FLOOR_FACTOR  # noqa: E402
from bnfold.torch.compare import Reference  # noqa: E402


class _Chaotic(nn.Module):
    """Conv → BN, then sin(1e5·y): a one-ulp change of y moves the output by percents."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.bn = nn.BatchNorm2d(8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sin(1e5 * self.bn(self.conv(x)))


def test_regression_chaotic_model_had_its_correct_folds_rolled_back() -> None:
    """A 1e-3·max|ref| cap on the noise allowance undid correct folds of chaotic models."""
    model = prepared(_Chaotic())
    x = torch.randn(2, 3, 8, 8)
    result = bnfold.fold(model, example_inputs=(x,))
    assert result.report.counts()["batchnorm"]["folded"] == 1
    assert result.verification
    assert any("rounding noise is a large share" in w for w in result.report.warnings)


def test_chaotic_model_folds_exactly_in_float64() -> None:
    model = prepared(_Chaotic()).double()
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    result = bnfold.fold(model, example_inputs=(x,))
    with torch.no_grad():
        err = (result.model(x) - model(x)).abs().max().item()
    assert result.report.counts()["batchnorm"]["folded"] == 1
    assert err < 1e-6  # float32 rounding alone would move sin(1e5·y) by ~1e-2
    assert not any("rounding noise" in w for w in result.report.warnings)


def test_threshold_is_the_shared_rule() -> None:
    """threshold = max(rtol·max|ref|, floor_factor·floor) with float32's default rtol of 1e-6."""
    model = prepared(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)))
    x = torch.randn(1, 3, 6, 6)
    ref = Reference(model, (x,))
    metric = ref.compare(model).outputs[0]
    assert metric.noise_floor > 0  # weights and inputs moved by an ulp move the output
    assert metric.tolerance == pytest.approx(
        max(1e-6 * metric.ref_max_abs, DEFAULT_FLOOR_FACTOR * metric.noise_floor)
    )
    assert metric.max_abs_error == 0.0


def test_a_wrong_channel_is_caught_above_the_floor() -> None:
    model = prepared(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)))
    x = torch.randn(1, 3, 6, 6)
    ref = Reference(model, (x,))
    folded = bnfold.fold(model, example_inputs=(x,)).model
    conv = next(m for m in folded.modules() if isinstance(m, nn.Conv2d))
    with torch.no_grad():
        conv.bias[1] += 1e-4 * conv.bias.abs().max()
    assert not ref.compare(folded)
