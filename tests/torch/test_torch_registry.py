"""BN variants: torch classes, BN+activation subclasses, frozen BN, untracked stats, registry."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

import torch.nn.functional as F  # noqa: E402
from support.torch_helpers import fold_checked, prepared, statuses  # noqa: E402
from torch import nn  # noqa: E402

import bnfold  # noqa: E402
from bnfold.testing.zoo import BatchNormAct2d, FrozenBatchNorm2d  # noqa: E402
from bnfold.torch import BNParams, register_batchnorm, unregister_batchnorm  # noqa: E402
from bnfold.torch.registry import match_batchnorm  # noqa: E402


def _conv_then(norm: nn.Module) -> nn.Module:
    return prepared(nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), norm))


@pytest.mark.parametrize(
    "norm",
    [nn.BatchNorm2d(4), nn.SyncBatchNorm(4), FrozenBatchNorm2d(4), nn.BatchNorm2d(4, affine=False)],
    ids=["bn2d", "syncbn", "frozen", "no-affine"],
)
def test_bn_variants_fold(norm: nn.Module) -> None:
    result = fold_checked(_conv_then(norm), torch.randn(1, 3, 6, 6))
    assert statuses(result) == {"1": "folded"}
    assert not any("Norm" in type(m).__name__ for m in result.model.modules())


def test_initialised_lazy_bn_folds_and_uninitialised_is_explained() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.LazyBatchNorm2d())
    lazy = match_batchnorm(model[1].eval())
    assert lazy is not None and "lazy" in lazy.reason
    with torch.no_grad():
        model.eval()(torch.randn(1, 3, 5, 5))
    result = fold_checked(prepared(model), torch.randn(1, 3, 5, 5))
    assert statuses(result) == {"1": "folded"}


@pytest.mark.parametrize("act", [nn.ReLU, nn.SiLU, nn.Hardswish])
def test_bn_act_subclass_keeps_the_activation(act: type[nn.Module]) -> None:
    result = fold_checked(_conv_then(BatchNormAct2d(4, act)), torch.randn(1, 3, 6, 6))
    assert statuses(result) == {"1": "folded"}
    assert any(isinstance(m, act) for m in result.model.modules())


def test_untracked_statistics_are_never_folded() -> None:
    model = _conv_then(nn.BatchNorm2d(4, track_running_stats=False))
    result = fold_checked(model, torch.randn(2, 3, 6, 6))
    entry = result.report.batchnorms[0]
    assert entry.status == "left"
    assert "track_running_stats=False" in entry.reason


class _Mystery(nn.BatchNorm2d):
    """A BN subclass whose forward is not BN followed by its children."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) * 2 + x


def test_unknown_bn_subclass_is_left_with_a_registry_hint() -> None:
    result = fold_checked(_conv_then(_Mystery(4)), torch.randn(1, 3, 6, 6))
    entry = result.report.batchnorms[0]
    assert entry.status == "left"
    assert "register_batchnorm" in entry.reason


class _ScaledNorm(nn.Module):
    """A user norm with its own parameter names: y = a·x + b per channel."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.a = nn.Parameter(torch.rand(c) + 0.5)
        self.b = nn.Parameter(torch.randn(c))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x * self.a.view(1, -1, 1, 1) + self.b.view(1, -1, 1, 1))


def test_registered_custom_norm_with_params_and_remainder() -> None:
    import numpy as np

    def params(m: _ScaledNorm) -> BNParams:
        a, b = (p.detach().double().numpy() for p in (m.a, m.b))
        return BNParams(a, b, np.zeros_like(a), np.ones_like(a), 0.0, m.a.dtype)

    register_batchnorm(_ScaledNorm, params=params, remainder=lambda m: nn.ReLU())
    try:
        result = fold_checked(_conv_then(_ScaledNorm(4)), torch.randn(1, 3, 6, 6))
    finally:
        unregister_batchnorm(_ScaledNorm)
    assert statuses(result) == {"1": "folded"}
    assert bnfold.fold(_conv_then(_ScaledNorm(4))).report.batchnorms == []
