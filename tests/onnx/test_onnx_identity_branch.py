"""RepVGG-style identity branches: ``Conv(x) + BN(x)`` folds into the Conv's aligned tap."""

from __future__ import annotations

import pytest
import torch
from support.fold_checks import assert_equivalent, export_torch, fold, only_bn, ops, randomize_bn
from support.graphs import Builder
from torch import nn


@pytest.mark.parametrize(
    "attrs",
    [
        {"pads": [1, 1, 1, 1]},
        {"pads": [2, 2, 2, 2], "dilations": [2, 2]},
        {"auto_pad": "SAME_UPPER"},
        {"pads": [1, 1, 1, 1], "group": 2},
        {"pads": [1, 1, 1, 1], "group": 4},
    ],
)
def test_identity_bn_folds_into_same_size_conv(attrs: dict) -> None:
    b = Builder(seed=len(str(attrs)))
    group = attrs.get("group", 1)
    conv = b.op("Conv", ["x", b.weight((4, 4 // group, 3, 3)), b.weight((4,))], **attrs)
    one = b.op("Conv", ["x", b.weight((4, 4, 1, 1))])
    s = b.op("Add", [conv, one])
    y = b.op("Add", [s, b.bn("x", 4)])
    z = b.op("Relu", [y])
    model = b.model({"x": (2, 4, 5, 5)}, [z])
    folded, result = fold(model)
    entry = only_bn(result)
    assert entry.status == "folded" and "identity tap" in entry.pattern
    assert ops(folded) == {"Conv": 2, "Add": 1, "Relu": 1}
    assert_equivalent(model, folded)


@pytest.mark.parametrize(
    ("attrs", "exact"),
    [
        ({"pads": [0, 0, 2, 2]}, True),  # one-sided padding: tap 0 reads the aligned pixel
        ({"pads": [1, 1, 3, 3], "dilations": [2, 2]}, False),  # taps read p−1, p+1, p+3
    ],
)
def test_identity_tap_must_read_the_aligned_pixel(attrs: dict, exact: bool) -> None:
    b = Builder(seed=3)
    conv = b.op("Conv", ["x", b.weight((4, 4, 3, 3))], **attrs)
    y = b.op("Add", [conv, b.bn("x", 4)])
    model = b.model({"x": (1, 4, 6, 6)}, [y])
    folded, result = fold(model)
    assert only_bn(result).status == ("folded" if exact else "left")
    assert_equivalent(model, folded)


@pytest.mark.parametrize("shared", ["bn", "conv"])
def test_identity_branch_left_when_a_branch_is_shared(shared: str) -> None:
    b = Builder(seed=4)
    conv = b.op("Conv", ["x", b.weight((4, 4, 3, 3))], pads=[1, 1, 1, 1])
    bn = b.bn("x", 4)
    y = b.op("Add", [conv, bn])
    tap = b.op("Relu", [bn if shared == "bn" else conv])
    model = b.model({"x": (1, 4, 6, 6)}, [y, tap])
    folded, result = fold(model)
    entry = only_bn(result)
    assert entry.status == "left"
    assert entry.reason.startswith("producer: 'x' is a graph input")
    assert_equivalent(model, folded)


class RepBlock(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.dense = nn.Sequential(nn.Conv2d(c, c, 3, 1, 1, bias=False), nn.BatchNorm2d(c))
        self.one = nn.Sequential(nn.Conv2d(c, c, 1, bias=False), nn.BatchNorm2d(c))
        self.identity = nn.BatchNorm2d(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.dense(x) + self.one(x) + self.identity(x))


def test_repvgg_torch_export_folds_every_bn() -> None:
    torch.manual_seed(0)
    module = randomize_bn(nn.Sequential(nn.Conv2d(3, 8, 3), RepBlock(8), RepBlock(8))).eval()
    model = export_torch(module, (torch.randn(1, 3, 10, 10),))
    assert ops(model)["BatchNormalization"] == 6
    folded, result = fold(model)
    assert ops(folded)["BatchNormalization"] == 0
    assert all(e.status == "folded" for e in result.report.batchnorms)
    assert_equivalent(model, folded)
