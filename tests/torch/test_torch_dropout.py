"""Dropout removal: every module variant, functional calls, and dropout active at inference."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

import torch.nn.functional as F  # noqa: E402
from support.torch_helpers import fold_checked, prepared  # noqa: E402
from torch import nn  # noqa: E402

DROPOUTS = [
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Dropout3d,
    nn.AlphaDropout,
    nn.FeatureAlphaDropout,
]


@pytest.mark.parametrize("cls", DROPOUTS, ids=lambda c: c.__name__)
def test_every_dropout_module_is_removed(cls: type[nn.Module]) -> None:
    model = prepared(nn.Sequential(nn.Conv2d(3, 4, 3), cls(0.3), nn.BatchNorm2d(4)))
    x = torch.randn(2, 3, 6, 6) if cls is not nn.Dropout1d else torch.randn(3, 6, 6)
    if cls is nn.Dropout1d:
        model = prepared(nn.Sequential(nn.Conv1d(3, 4, 3), cls(0.3), nn.BatchNorm1d(4)))
        x = torch.randn(2, 3, 6)
    result = fold_checked(model, x)
    [entry] = result.report.dropouts
    assert entry.status == "removed"
    assert not any(isinstance(m, cls) for m in result.model.modules())
    assert result.report.batchnorms[0].status == "folded"  # Conv→Dropout→BN became adjacent


class _Functional(nn.Module):
    def __init__(self, training_arg: bool | None) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.training_arg = training_arg

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training_arg is None:
            return F.dropout(self.fc(x), 0.2, training=self.training)
        return F.dropout(self.fc(x), 0.2, self.training_arg)


def test_functional_dropout_in_eval_is_removed() -> None:
    result = fold_checked(prepared(_Functional(None)), torch.randn(3, 4))
    [entry] = result.report.dropouts
    assert entry.status == "removed"
    assert "dropout" not in result.model.code


def test_functional_dropout_with_training_true_is_left_and_explained() -> None:
    import bnfold

    result = bnfold.fold(prepared(_Functional(True)))
    [entry] = result.report.dropouts
    assert entry.status == "left"
    assert "training=True" in entry.reason


class DropPath(nn.Module):
    """timm-style stochastic depth: identity in eval mode."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        keep = torch.rand(x.shape[0], *([1] * (x.dim() - 1))) > self.p
        return x * keep / (1 - self.p)


class MCDropout(nn.Dropout):
    """Monte-Carlo dropout: active at inference on purpose."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.dropout(x, self.p, training=True)


def test_drop_path_is_removed_by_probe() -> None:
    model = prepared(nn.Sequential(nn.Conv2d(3, 4, 3), DropPath(0.2), nn.BatchNorm2d(4)))
    result = fold_checked(model, torch.randn(2, 3, 6, 6))
    [entry] = result.report.dropouts
    assert entry.status == "removed"
    assert "Dropout" in entry.kind


def test_dropout_subclass_active_in_eval_is_left() -> None:
    from bnfold.torch import dropout as drop

    entries: list = []
    model = nn.Sequential(nn.Linear(3, 3), MCDropout(0.5)).eval()
    out = drop.strip_dropout_modules(model, entries)
    assert isinstance(out[1], MCDropout)
    assert [e.status for e in entries] == ["left"]
    assert "active at inference" in entries[0].reason
    assert drop.removal_reason(DropPath(0.2).eval()) is None
    assert drop.removal_reason(_AlwaysOn().eval()) is not None


class _AlwaysOn(nn.Module):
    """Named like a dropout but scales its input even in eval mode."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 0.5


_AlwaysOn.__name__ = "AlwaysOnDropout"
