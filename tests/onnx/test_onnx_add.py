"""BN after a sum: split over the terms' layers; identity terms absorbed into a Conv tap."""

from __future__ import annotations

import numpy as np
import torch
from support.fold_checks import assert_equivalent, export_torch, fold, only_bn, ops, randomize_bn
from support.graphs import Builder
from support.onnx_checks import initializer_array
from torch import nn


def test_bn_after_sum_of_two_layers_folds_into_both() -> None:
    b = Builder(seed=1)
    c1 = b.op("Conv", ["x", b.weight((4, 3, 3, 3)), b.weight((4,))], pads=[1, 1, 1, 1])
    c2 = b.op("Conv", ["x", b.weight((4, 3, 1, 1))])
    y = b.bn(b.op("Add", [c1, c2]), 4)
    model = b.model({"x": (2, 3, 5, 5)}, [y])
    folded, result = fold(model)
    entry = only_bn(result)
    assert entry.status == "folded" and entry.into == f"{c1}, {c2}"
    assert ops(folded) == {"Conv": 2, "Add": 1}
    assert_equivalent(model, folded)


def test_sum_with_a_graph_input_term_is_left_with_the_term_named() -> None:
    b = Builder(seed=2)
    c1 = b.op("Conv", ["x", b.weight((3, 3, 3, 3))], pads=[1, 1, 1, 1], strides=[1, 1])
    r = b.op("Relu", ["x"])
    c2 = b.op("Conv", [r, b.weight((3, 3, 1, 1))])
    y = b.bn(b.op("Add", [c2, "x"]), 3)
    model = b.model({"x": (1, 3, 4, 4)}, [y, c1])
    folded, result = fold(model)
    reason = only_bn(result).reason
    assert "term 1: 'x' is a graph input" in reason
    assert_equivalent(model, folded)


def test_broadcast_term_is_left() -> None:
    b = Builder(seed=3)
    c = b.op("Conv", ["x", b.weight((3, 3, 1, 1))])
    m = b.op("ReduceMean", ["x"], axes=[2, 3], keepdims=1)
    g = b.op("Conv", [m, b.weight((3, 3, 1, 1))])
    y = b.bn(b.op("Add", [c, g]), 3)
    model = b.model({"x": (1, 3, 4, 4)}, [y])
    _, result = fold(model, rewrite_standalone=False)
    assert "term 1" in only_bn(result).reason and "broadcast" in only_bn(result).reason


class RepVggDw(nn.Module):
    """RepViT: ``bn(conv(x) + conv1(x) + x)`` with a depthwise ConvNorm and a plain 1×1."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(c, c, 3, 1, 1, groups=c, bias=False), nn.BatchNorm2d(c))
        self.conv1 = nn.Conv2d(c, c, 1, 1, 0, groups=c)
        self.bn = nn.BatchNorm2d(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x) + self.conv1(x) + x)


def test_repvit_identity_term_is_absorbed_and_bn_split() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), RepVggDw(8), nn.ReLU(), RepVggDw(8))
    module = randomize_bn(net).eval()
    model = export_torch(module, (torch.randn(1, 3, 9, 9),))
    assert ops(model)["BatchNormalization"] == 4
    folded, result = fold(model)
    assert ops(folded)["BatchNormalization"] == 0
    assert all(e.status == "folded" for e in result.report.batchnorms)
    assert ops(folded)["Add"] == 2  # conv + conv1 per block; the identity lives in a tap
    assert_equivalent(model, folded)


def test_identity_term_without_an_aligned_tap_is_not_absorbed() -> None:
    b = Builder(seed=4)
    r = b.op("Relu", ["x"])
    # size-keeping, but the dilated taps read p−1, p+1, p+3: never the aligned pixel
    c = b.op("Conv", [r, b.weight((3, 3, 3, 3))], pads=[1, 1, 3, 3], dilations=[2, 2])
    y = b.bn(b.op("Add", [c, r]), 3)
    model = b.model({"x": (1, 3, 5, 5)}, [y])
    folded, result = fold(model)
    entry = only_bn(result)
    assert entry.status == "left"
    assert f"term 1: Relu '{r}' is not a linear layer" in entry.reason
    assert ops(folded)["Add"] == 1
    assert_equivalent(model, folded)


def test_constant_term_along_width_is_scaled_per_channel() -> None:
    """Conv → Add(c of shape (W,)) → BN: c is no per-channel bias, but s·c + t is exact."""
    b = Builder(seed=5)
    c = b.op("Conv", ["x", b.weight((4, 3, 1, 1))])
    add = b.op("Add", [c, b.const(np.arange(1.0, 5.0, dtype=np.float32))])  # W == C == 4
    y = b.bn(add, 4)
    model = b.model({"x": (1, 3, 4, 4)}, [y])
    folded, result = fold(model)
    assert only_bn(result).status == "folded"
    assert ops(folded) == {"Conv": 1, "Add": 1}
    add_node = next(n for n in folded.graph.node if n.op_type == "Add")
    assert initializer_array(folded, add_node.input[1]).shape == (1, 4, 1, 4)
    assert_equivalent(model, folded)
