"""Producer folds in traced graphs: every Conv/ConvTranspose rank and group layout, Linear."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from support.torch_helpers import fold_checked, modules_of, prepared, statuses  # noqa: E402
from torch import nn  # noqa: E402


def _pair(layer: nn.Module, bn: nn.Module) -> nn.Module:
    return prepared(nn.Sequential(layer, bn))


@pytest.mark.parametrize(
    ("conv", "bn", "shape"),
    [
        (nn.Conv1d(4, 6, 3, padding=1), nn.BatchNorm1d(6), (2, 4, 9)),
        (nn.Conv2d(4, 6, 3, groups=2, bias=False), nn.BatchNorm2d(6), (2, 4, 7, 7)),
        (nn.Conv2d(6, 6, 3, groups=6), nn.BatchNorm2d(6), (1, 6, 5, 5)),
        (nn.Conv3d(2, 4, 2, bias=False), nn.BatchNorm3d(4), (1, 2, 4, 4, 4)),
    ],
    ids=["conv1d", "conv2d-g2", "conv2d-depthwise", "conv3d"],
)
def test_conv_bn_folds_exactly(conv: nn.Module, bn: nn.Module, shape: tuple[int, ...]) -> None:
    model = _pair(conv, bn)
    result = fold_checked(model, torch.randn(shape))
    assert set(statuses(result).values()) == {"folded"}
    assert not modules_of(result.model, nn.modules.batchnorm._BatchNorm)


@pytest.mark.parametrize("groups", [1, 2, 4])
@pytest.mark.parametrize("dims", [1, 2, 3])
def test_conv_transpose_groups_with_unequal_channels(groups: int, dims: int) -> None:
    """C_in ≠ C_out with groups: the output channel is gi·(C_out/g) + j (a classic bug)."""
    conv_t = {1: nn.ConvTranspose1d, 2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}[dims]
    bn = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}[dims]
    c_in, c_out = 4, 8
    model = _pair(conv_t(c_in, c_out, 2, stride=2, groups=groups, bias=groups == 2), bn(c_out))
    result = fold_checked(model, torch.randn((1, c_in) + (3,) * dims))
    assert set(statuses(result).values()) == {"folded"}


def test_depthwise_conv_transpose() -> None:
    model = _pair(nn.ConvTranspose2d(6, 6, 3, padding=1, groups=6, bias=False), nn.BatchNorm2d(6))
    result = fold_checked(model, torch.randn(1, 6, 5, 5))
    assert statuses(result) == {"1": "folded"}


def test_linear_bn1d_on_two_dimensional_input() -> None:
    model = prepared(nn.Sequential(nn.Linear(5, 7), nn.BatchNorm1d(7), nn.ReLU()))
    result = fold_checked(model, torch.randn(4, 5))
    assert statuses(result) == {"1": "folded"}
    assert result.report.batchnorms[0].pattern == "Linear→BN"


class _TokenLinearBN(nn.Module):
    """LeViT's Linear_BN: ``bn(x.flatten(0, 1)).reshape_as(x)`` over (B, N, C) tokens."""

    def __init__(self) -> None:
        super().__init__()
        self.c = nn.Linear(6, 8, bias=False)
        self.bn = nn.BatchNorm1d(8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.c(x)
        return self.bn(x.flatten(0, 1)).reshape_as(x)


def test_linear_bn_over_tokens_levit_style() -> None:
    result = fold_checked(prepared(_TokenLinearBN()), torch.randn(2, 5, 6))
    assert statuses(result) == {"bn": "folded"}


class _TransposedLinearBN(nn.Module):
    """Linear on (B, L, C), then BatchNorm1d over C after a transpose to (B, C, L)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 8)
        self.bn = nn.BatchNorm1d(8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.fc(x).transpose(1, 2))


def test_linear_then_transpose_then_bn() -> None:
    result = fold_checked(prepared(_TransposedLinearBN()), torch.randn(2, 5, 6))
    assert statuses(result) == {"bn": "folded"}


def test_linear_on_tokens_with_bn_on_the_wrong_axis_is_left() -> None:
    """Linear(8→8) on (B, 8, 8) then BN1d(8): BN normalises the token axis, not the features."""
    model = prepared(nn.Sequential(nn.Linear(8, 8), nn.BatchNorm1d(8)))
    result = fold_checked(model, torch.randn(2, 8, 8))
    entry = result.report.batchnorms[0]
    assert entry.status == "left"
    assert "axis" in entry.reason


def test_linear_bn_needs_example_inputs() -> None:
    model = prepared(nn.Sequential(nn.Linear(5, 7), nn.BatchNorm1d(7)))
    import bnfold

    result = bnfold.fold(model)
    entry = result.report.batchnorms[0]
    assert entry.status == "left"
    assert "example_inputs" in entry.reason
    assert result.verification is None


def test_conv_bn_without_example_inputs_still_folds() -> None:
    import bnfold

    model = _pair(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    x = torch.randn(1, 3, 6, 6)
    result = bnfold.fold(model)
    assert statuses(result) == {"1": "folded"}
    with torch.no_grad():
        torch.testing.assert_close(result.model(x), model(x), rtol=1e-4, atol=1e-5)


def test_fp16_folds_in_float64_and_casts_back() -> None:
    model = _pair(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)).double()
    x = torch.randn(1, 3, 6, 6, dtype=torch.float64)
    result = fold_checked(model, x)
    assert result.model.get_submodule("0").weight.dtype == torch.float64


def test_overflowing_fp16_fold_is_refused() -> None:
    model = _pair(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)).half()
    with torch.no_grad():
        model[1].running_var.fill_(1e-7)
        model[1].eps = 1e-7
        model[0].weight.fill_(100.0)
    import bnfold

    result = bnfold.fold(model)
    entry = result.report.batchnorms[0]
    assert entry.status == "left"
    assert "float16" in entry.reason


def _bf16_conv_bn(gamma: float, tiny: float | None = None, channel: int | None = None) -> nn.Module:
    """bf16 Conv→BN: |γ| = ``gamma`` (only on ``channel`` when given); w[:, :, 0, 0] = ``tiny``."""
    model = _pair(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    with torch.no_grad():
        conv, bn = model[0], model[1]
        conv.weight.uniform_(0.5, 1.0)
        if tiny is not None:
            conv.weight[:, :, 0, 0] = tiny
        rows = slice(None) if channel is None else slice(channel, channel + 1)
        bn.weight[rows] = torch.sign(bn.weight[rows]) * gamma
        if channel is not None:
            bn.running_var[rows] = 1e4
    return model.to(torch.bfloat16)


def test_regression_bf16_negligible_underflow_does_not_block_fold() -> None:
    """1e-38 · s ≈ 1e-42 flushes in bf16 (its subnormals stop near 9e-41), but those 12
    weights are nothing next to each channel's L1 norm: the shared foldmath rule folds."""
    import bnfold

    model = _bf16_conv_bn(gamma=1e-4, tiny=1e-38)
    x = torch.randn(1, 3, 6, 6).to(torch.bfloat16)
    result = bnfold.fold(model)
    assert statuses(result) == {"1": "folded"}, result.report.describe()
    conv = result.model.get_submodule("0")
    assert conv.weight.dtype == torch.bfloat16
    assert bool((conv.weight[:, :, 0, 0] == 0).all())  # flushed, and harmless
    with torch.no_grad():
        ref, got = model(x).double(), result.model(x).double()
    torch.testing.assert_close(got, ref, rtol=2e-2, atol=2e-2 * float(ref.abs().max()))


def test_regression_bf16_channel_that_vanishes_is_refused() -> None:
    """Channel 1: s ≈ 1e-40/100 makes all its weights flush to zero in bf16: refused."""
    import bnfold

    result = bnfold.fold(_bf16_conv_bn(gamma=1e-40, channel=1))
    entry = result.report.batchnorms[0]
    assert entry.status == "left"
    assert "output channel 1" in entry.reason and "underflow to zero in bfloat16" in entry.reason


class _StdConv2d(nn.Conv2d):
    """Weight-standardised conv (BiT/NFNet): rescaling its weight does not rescale its output."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        w = (w - w.mean((1, 2, 3), keepdim=True)) / (w.std((1, 2, 3), keepdim=True) + 1e-5)
        return self._conv_forward(x, w, self.bias)


class _PaddedSame(nn.Conv2d):
    """TF-'same'-padding conv: a custom forward that is still linear in weight and bias."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(nn.functional.pad(x, (1, 1, 1, 1)), self.weight, self.bias)


def test_conv_subclass_with_own_forward_is_folded_only_when_proven() -> None:
    x = torch.randn(1, 3, 6, 6)
    std = fold_checked(_pair(_StdConv2d(3, 4, 3), nn.BatchNorm2d(4)), x)
    same = fold_checked(_pair(_PaddedSame(3, 4, 3), nn.BatchNorm2d(4)), x)
    assert std.report.batchnorms[0].status == "left"
    assert "not proven" in std.report.batchnorms[0].reason
    assert same.report.batchnorms[0].status == "folded"


def test_weight_norm_parametrized_conv_is_left_with_reason() -> None:
    conv = nn.utils.parametrizations.weight_norm(nn.Conv2d(3, 4, 3))
    result = fold_checked(_pair(conv, nn.BatchNorm2d(4)), torch.randn(1, 3, 6, 6))
    entry = result.report.batchnorms[0]
    assert entry.status == "left"
    assert "parametrized" in entry.reason


def test_folded_weights_are_torch_allocated_and_aligned() -> None:
    """Regression: weights built on numpy memory were misaligned, slowing oneDNN convs."""
    model = _pair(nn.Conv2d(3, 5, 3), nn.BatchNorm2d(5))
    result = fold_checked(model, torch.randn(1, 3, 6, 6))
    conv = result.model.get_submodule("0")
    assert conv.weight.data_ptr() % 64 == 0
    assert conv.bias.data_ptr() % 64 == 0
