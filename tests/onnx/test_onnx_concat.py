"""BN after a channel Concat: split s and t per input and fold each slice into its layer."""

from __future__ import annotations

import numpy as np
import torch
from support.fold_checks import assert_equivalent, export_torch, fold, only_bn, ops, randomize_bn
from support.graphs import Builder
from torch import nn


def _mixed_kernel_block(b: Builder, axis: int = 1) -> tuple[str, list[str]]:
    c1 = b.op("Conv", ["x", b.weight((2, 4, 1, 1))])
    c2 = b.op("Conv", ["x", b.weight((3, 4, 3, 3)), b.weight((3,))], pads=[1, 1, 1, 1])
    c3 = b.op("ConvTranspose", ["x", b.weight((4, 1, 1, 1))], group=4)
    return b.op("Concat", [c1, c2, c3], axis=axis), [c1, c2, c3]


def test_concat_of_three_layers_splits_the_bn() -> None:
    b = Builder(seed=1)
    cat, layers = _mixed_kernel_block(b)
    y = b.bn(cat, 9)
    model = b.model({"x": (2, 4, 5, 5)}, [y])
    folded, result = fold(model)
    assert ops(folded) == {"Conv": 2, "ConvTranspose": 1, "Concat": 1}
    entry = only_bn(result)
    assert entry.status == "folded" and entry.pattern.startswith("Concat")
    assert entry.into.split(", ") == layers
    assert_equivalent(model, folded)


def test_negative_concat_axis_is_the_channel_axis() -> None:
    b = Builder(seed=2)
    y = b.bn(_mixed_kernel_block(b, axis=-3)[0], 9)
    model = b.model({"x": (2, 4, 5, 5)}, [y])
    folded, result = fold(model)
    assert only_bn(result).status == "folded"
    assert_equivalent(model, folded)


def test_one_shared_input_leaves_everything_unchanged() -> None:
    b = Builder(seed=3)
    c1 = b.op("Conv", ["x", b.weight((2, 4, 1, 1))])
    c2 = b.op("Conv", ["x", b.weight((3, 4, 1, 1))])
    cat = b.op("Concat", [c1, c2], axis=1)
    y = b.bn(cat, 5)
    r = b.op("Relu", [c2])  # c2 also feeds a Relu: its slice cannot fold
    model = b.model({"x": (1, 4, 3, 3)}, [y, r])
    folded, result = fold(model)
    entry = only_bn(result)
    assert entry.status == "left"
    assert "Concat" in entry.reason and "input 1" in entry.reason
    # all-or-nothing: the first Conv's weights were not touched
    assert {t.name for t in folded.graph.initializer} == {t.name for t in model.graph.initializer}
    assert_equivalent(model, folded)


def test_graph_input_in_concat_is_left() -> None:
    b = Builder(seed=4)
    c1 = b.op("Conv", ["x", b.weight((2, 4, 1, 1))])
    cat = b.op("Concat", [c1, "x"], axis=1)
    y = b.bn(cat, 6)
    model = b.model({"x": (1, 4, 3, 3)}, [y])
    _, result = fold(model)
    assert "input 1: 'x' is a graph input" in only_bn(result).reason


def test_concat_on_spatial_axis_is_left() -> None:
    b = Builder(seed=5)
    c1 = b.op("Conv", ["x", b.weight((3, 4, 1, 1))])
    c2 = b.op("Conv", ["x", b.weight((3, 4, 1, 1))])
    y = b.bn(b.op("Concat", [c1, c2], axis=2), 3)
    model = b.model({"x": (1, 4, 3, 3)}, [y])
    _, result = fold(model)
    assert "joins axis 2, not the channel axis 1" in only_bn(result).reason


def test_nested_concat_and_gemm_inputs() -> None:
    b = Builder(seed=6)
    g1 = b.op("Gemm", ["x", b.weight((4, 2))])
    g2 = b.op("Gemm", ["x", b.weight((4, 3)), b.weight((3,))])
    m3 = b.op("MatMul", ["x", b.weight((4, 2))])
    inner = b.op("Concat", [g1, g2], axis=1)
    cat = b.op("Concat", [inner, m3], axis=-1)
    y = b.bn(cat, 7)
    model = b.model({"x": (3, 4)}, [y])
    folded, result = fold(model)
    assert only_bn(result).status == "folded"
    assert ops(folded)["BatchNormalization"] == 0
    assert_equivalent(model, folded)


class MixedConv(nn.Module):
    """MixNet: split channels, depthwise conv each with its own kernel, concat, one BN."""

    def __init__(self, c: int = 6) -> None:
        super().__init__()
        self.splits = [2, 2, 2]
        self.convs = nn.ModuleList(
            nn.Conv2d(2, 2, k, 1, k // 2, groups=2, bias=False) for k in (3, 5, 7)
        )
        self.bn = nn.BatchNorm2d(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = torch.split(x, self.splits, 1)
        out = torch.cat([conv(p) for conv, p in zip(self.convs, parts, strict=True)], 1)
        return torch.relu(self.bn(out))


def test_mixnet_torch_export() -> None:
    torch.manual_seed(0)
    module = randomize_bn(MixedConv()).eval()
    model = export_torch(module, (torch.randn(1, 6, 8, 8),))
    folded, result = fold(model)
    assert only_bn(result).status == "folded"
    assert ops(folded)["BatchNormalization"] == 0
    assert_equivalent(model, folded)


def test_concat_slices_go_to_the_right_layer() -> None:
    """Distinct per-channel scales: a slice off by one would be caught numerically."""
    b = Builder(seed=7)
    c1 = b.op("Conv", ["x", b.const(np.ones((1, 1, 1, 1), np.float32))])
    c2 = b.op("Conv", ["x", b.const(np.ones((2, 1, 1, 1), np.float32))])
    y = b.bn(b.op("Concat", [c1, c2], axis=1), 3)
    model = b.model({"x": (1, 1, 2, 2)}, [y])
    folded, _ = fold(model)
    assert_equivalent(model, folded, rtol=1e-6)
