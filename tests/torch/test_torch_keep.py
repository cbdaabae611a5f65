"""Keep-lists on nn.Modules: ``keep_dropout`` and ``keep=[glob]`` on qualified names.

Monte-Carlo dropout needs Dropout kept (and switchable to train mode) while BN still folds;
a named BN may be kept for fine-tuning. Kept modules are reported as "kept by request" on
every path: fx call sites, the adjacency fallback and functional dropout in fx graphs.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
from support.torch_helpers import modules_of, prepared  # noqa: E402
from torch import nn  # noqa: E402
from torch.nn import functional as F  # noqa: E402

import bnfold  # noqa: E402


class Net(nn.Module):
    """conv1 → bn1 → relu → drop → conv2 → bn2, then an F.dropout(training=False)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(4)
        self.drop = nn.Dropout(0.3)
        self.conv2 = nn.Conv2d(4, 5, 1)
        self.bn2 = nn.BatchNorm2d(5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.drop(torch.relu(self.bn1(self.conv1(x))))
        return F.dropout(self.bn2(self.conv2(x)), 0.2, training=False)


class Untraceable(Net):
    """Data-dependent control flow: torch.fx cannot trace it, so adjacency folds it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.drop(torch.relu(self.bn1(self.conv1(x))))
        if float(y.sum()) > 1e9:  # never true; breaks symbolic tracing
            y = y * 2
        return self.bn2(self.conv2(y))


def entries(result) -> dict[str, tuple[str, str | None]]:
    return {e.name: (e.status, e.reason) for e in result.report.entries}


def test_keep_dropout_keeps_dropout_modules_and_calls_and_folds_bn() -> None:
    model, x = prepared(Net()), torch.randn(2, 3, 6, 6)
    result = bnfold.fold(model, example_inputs=(x,), keep_dropout=True)
    assert len(modules_of(result.model, nn.Dropout)) == 1
    assert modules_of(result.model, nn.BatchNorm2d) == []
    got = entries(result)
    assert got["drop"] == ("kept", "kept by request")
    assert [v for k, v in got.items() if "dropout" in k] == [("kept", "kept by request")]
    assert result.verification
    result.model.drop.train()  # Monte-Carlo dropout: sampling is back on
    assert not torch.equal(result.model(x), result.model(x))


def test_keep_glob_keeps_the_named_bn_module() -> None:
    model, x = prepared(Net()), torch.randn(2, 3, 6, 6)
    result = bnfold.fold(model, example_inputs=(x,), keep=["bn2"])
    kept = modules_of(result.model, nn.BatchNorm2d)
    assert len(kept) == 1 and torch.equal(kept[0].running_mean, model.bn2.running_mean)
    got = entries(result)
    assert got["bn2"] == ("kept", "kept by request") and got["bn1"][0] == "folded"
    assert got["drop"][0] == "removed"
    assert not any("_bnfold_kept" in vars(m) for m in result.model.modules())
    assert result.verification


def test_keep_on_the_adjacency_path() -> None:
    model, x = prepared(Untraceable()), torch.randn(2, 3, 6, 6)
    assert bnfold.fold(model, example_inputs=(x,)).report.counts()["batchnorm"]["folded"] == 2
    result = bnfold.fold(model, example_inputs=(x,), keep=["bn*"], keep_dropout=True)
    assert len(modules_of(result.model, nn.BatchNorm2d)) == 2
    assert result.report.counts()["batchnorm"]["kept"] == 2
    assert result.report.counts()["dropout"]["kept"] == 1
    assert result.verification


def test_keep_pattern_matching_nothing_warns() -> None:
    result = bnfold.fold(prepared(Net()), example_inputs=(torch.randn(1, 3, 6, 6),), keep=["bx"])
    assert "keep pattern 'bx' matched no BatchNorm or Dropout" in result.report.warnings
