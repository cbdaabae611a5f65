"""Per-call-site decisions: shared Convs, outputs used elsewhere, concat, re-param, consumers."""

from __future__ import annotations

import copy

import pytest

torch = pytest.importorskip("torch")

import torch.nn.functional as F  # noqa: E402
from support.torch_helpers import fold_checked, prepared, statuses  # noqa: E402
from torch import nn  # noqa: E402


class _SharedConv(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1, bias=False)
        self.bn_a = nn.BatchNorm2d(4)
        self.bn_b = nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = F.relu(self.bn_a(self.conv(x)))
        return self.bn_b(self.conv(a))


def test_conv_called_twice_gets_one_folded_copy_per_call_site() -> None:
    model = prepared(_SharedConv())
    original = copy.deepcopy(model.state_dict())
    result = fold_checked(model, torch.randn(1, 4, 6, 6))
    assert set(statuses(result).values()) == {"folded"}
    intos = {e.into for e in result.report.batchnorms}
    assert len(intos) == 2  # two distinct folded convs
    for key, value in model.state_dict().items():  # the caller's module is untouched
        assert torch.equal(value, original[key])


def test_fx_fuse_corrupts_the_shared_conv_but_bnfold_does_not() -> None:
    from torch.fx.experimental.optimization import fuse

    model = prepared(_SharedConv())
    x = torch.randn(1, 4, 6, 6)
    with torch.no_grad():
        ref = model(x)
        fused_error = (fuse(model)(x) - ref).abs().max().item()
    assert fused_error > 1e-3  # documents the bug we are protecting against
    fold_checked(model, x)


class _ConvTap(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, bias=False)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return self.bn(y) + y


def test_conv_output_used_elsewhere_keeps_its_bn() -> None:
    result = fold_checked(prepared(_ConvTap()), torch.randn(1, 3, 6, 6))
    entry = result.report.batchnorms[0]
    assert entry.status == "left"
    assert "also used" in entry.reason


class _ConvIsOutput(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y = self.conv(x)
        return self.bn(y), y


def test_conv_output_that_is_a_model_output_keeps_its_bn() -> None:
    result = fold_checked(prepared(_ConvIsOutput()), torch.randn(1, 3, 4, 4))
    assert statuses(result) == {"bn": "left"}


class _MixedConv(nn.Module):
    """MixNet: channel split, one depthwise conv per kernel size, concat, one BN."""

    def __init__(self) -> None:
        super().__init__()
        self.splits = [4, 2, 2]
        self.convs = nn.ModuleList(
            nn.Conv2d(c, c, k, padding=k // 2, groups=c, bias=False)
            for c, k in zip(self.splits, (3, 5, 7), strict=True)
        )
        self.bn = nn.BatchNorm2d(8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = torch.split(x, self.splits, 1)
        return self.bn(torch.cat([self.convs[i](parts[i]) for i in range(3)], 1))


def test_bn_after_channel_concat_is_split_into_each_conv() -> None:
    result = fold_checked(prepared(_MixedConv()), torch.randn(1, 8, 9, 9))
    entry = result.report.batchnorms[0]
    assert entry.status == "folded"
    assert entry.pattern.startswith("Concat→BN")
    assert len(entry.into.split(", ")) == 3


class _RepVGG(nn.Module):
    def __init__(self, c: int = 4, groups: int = 1) -> None:
        super().__init__()
        self.dense = nn.Sequential(
            nn.Conv2d(c, c, 3, padding=1, groups=groups, bias=False), nn.BatchNorm2d(c)
        )
        self.one = nn.Sequential(nn.Conv2d(c, c, 1, groups=groups, bias=False), nn.BatchNorm2d(c))
        self.identity = nn.BatchNorm2d(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.dense(x) + self.one(x) + self.identity(x))


@pytest.mark.parametrize("groups", [1, 2, 4])
def test_repvgg_identity_bn_is_folded_into_a_sibling_conv(groups: int) -> None:
    result = fold_checked(prepared(_RepVGG(groups=groups)), torch.randn(1, 4, 6, 6))
    assert set(statuses(result).values()) == {"folded"}
    identity = next(e for e in result.report.batchnorms if e.name == "identity")
    assert "identity" in identity.pattern


class _BNHead(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.bn = nn.BatchNorm1d(6)
        self.fc = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.conv(x))
        return self.fc(self.bn(self.pool(y).flatten(1)))


def test_bn_before_linear_folds_into_the_consumer() -> None:
    result = fold_checked(prepared(_BNHead()), torch.randn(2, 3, 6, 6))
    entry = result.report.batchnorms[0]
    assert entry.status == "folded"
    assert entry.pattern == "BN→Linear (consumer)"


class _BNBeforeConv(nn.Module):
    def __init__(self, padding: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(4)
        self.conv = nn.Conv2d(4, 5, 3, padding=padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.bn(x))


def test_bn_before_unpadded_conv_folds_but_padded_conv_is_left() -> None:
    x = torch.randn(1, 4, 7, 7)
    unpadded = fold_checked(prepared(_BNBeforeConv(0)), x)
    padded = fold_checked(prepared(_BNBeforeConv(1)), x)
    assert statuses(unpadded) == {"bn": "folded"}
    assert statuses(padded) == {"bn": "left"}


def test_result_is_in_eval_mode_and_original_keeps_its_mode() -> None:
    model = prepared(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Dropout(0.5)))
    model.train()
    import bnfold

    result = bnfold.fold(model, example_inputs=torch.randn(2, 3, 5, 5))
    assert model.training
    assert not any(m.training for m in result.model.modules())
    assert result.verification
