"""Decomposed BN and affine chains: per-channel constant Mul/Add/Sub/Div after a linear layer."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from support.fold_checks import assert_equivalent, export_torch, fold, ops
from support.graphs import Builder
from torch import nn

from bnfold.onnx.plan.channel_affine import per_channel_vector


def test_decomposed_bn_mul_add_after_conv_folds() -> None:
    b = Builder(seed=1)
    c = b.op("Conv", ["x", b.weight((4, 3, 3, 3))], pads=[1, 1, 1, 1])
    scale = b.rng.uniform(-2, 2, (1, 4, 1, 1)).astype(np.float32)
    shift = b.rng.normal(0, 1, (4, 1, 1)).astype(np.float32)
    m = b.op("Mul", [c, b.const(scale)])
    a = b.op("Add", [b.const(shift), m])
    model = b.model({"x": (1, 3, 6, 6)}, [a])
    folded, _ = fold(model)
    assert ops(folded) == {"Conv": 1}
    assert_equivalent(model, folded)


@pytest.mark.parametrize(
    ("op", "const_first"), [("Sub", False), ("Sub", True), ("Div", False), ("Mul", True)]
)
def test_sub_div_both_operand_orders(op: str, const_first: bool) -> None:
    b = Builder(seed=2)
    g = b.op("Gemm", ["x", b.weight((5, 4)), b.weight((4,))])
    vec = b.const(b.rng.uniform(0.5, 2.0, (4,)).astype(np.float32))
    y = b.op(op, [vec, g] if const_first else [g, vec])
    model = b.model({"x": (3, 5)}, [y])
    folded, _ = fold(model)
    assert ops(folded) == {"Gemm": 1}
    assert_equivalent(model, folded)


def test_div_constant_by_activation_is_not_affine() -> None:
    b = Builder(seed=3)
    g = b.op("Gemm", ["x", b.weight((5, 4))])
    y = b.op("Div", [b.const(np.full((4,), 2.0, np.float32)), g])
    model = b.model({"x": (3, 5)}, [y])
    folded, _ = fold(model)
    assert ops(folded) == {"Gemm": 1, "Div": 1}
    assert_equivalent(model, folded)


def test_1d_constant_broadcasts_over_last_axis_not_channels() -> None:
    """A length-C vector after a 4-D Conv scales the *width* axis (W == C here), not channels."""
    b = Builder(seed=4)
    c = b.op("Conv", ["x", b.weight((4, 3, 1, 1))])  # (1, 4, 4, 4)
    m = b.op("Mul", [c, b.const(np.array([1.0, -2.0, 3.0, 0.5], np.float32))])
    model = b.model({"x": (1, 3, 4, 4)}, [m])
    folded, _ = fold(model)
    assert ops(folded) == {"Conv": 1, "Mul": 1}  # left alone: folding it would be wrong
    assert_equivalent(model, folded)
    assert isinstance(per_channel_vector(np.ones(4), 4, 1, 4), str)
    assert not isinstance(per_channel_vector(np.ones((4, 1, 1)), 4, 1, 4), str)


def test_per_channel_vector_shapes() -> None:
    v = per_channel_vector(np.arange(3.0).reshape(1, 3, 1), 3, 1, 3)
    assert list(v) == [0.0, 1.0, 2.0]
    assert list(per_channel_vector(np.float32(2.0), 4, 1, 3)) == [2.0, 2.0, 2.0]
    assert isinstance(per_channel_vector(np.ones((2, 3, 1, 1)), 4, 1, 3), str)  # batch varies
    assert isinstance(per_channel_vector(np.ones((1, 1, 3, 1, 1)), 4, 1, 3), str)  # too deep
    assert list(per_channel_vector(np.arange(3.0), 2, 1, 3)) == [0.0, 1.0, 2.0]  # 2-D: last=C


def test_affine_chain_mul_add_mul_then_bn() -> None:
    b = Builder(seed=5)
    c = b.op("Conv", ["x", b.weight((4, 2, 1, 1)), b.weight((4,))])
    x1 = b.op("Mul", [c, b.const(b.rng.normal(0, 1, (4, 1, 1)).astype(np.float32))])
    x2 = b.op("Add", [x1, b.const(b.rng.normal(0, 1, (1, 4, 1, 1)).astype(np.float32))])
    x3 = b.op("Sub", [x2, b.const(np.float32(0.3))])
    y = b.bn(x3, 4)
    model = b.model({"x": (2, 2, 3, 3)}, [y])
    folded, result = fold(model)
    assert ops(folded) == {"Conv": 1}
    assert result.report.batchnorms[0].status == "folded"
    assert_equivalent(model, folded)


class FrozenBatchNorm2d(nn.Module):
    """torchvision's FrozenBatchNorm2d: buffers only, exported as Mul/Add arithmetic."""

    def __init__(self, n: int, seed: int) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.register_buffer("weight", torch.randn(n, generator=g))
        self.register_buffer("bias", torch.randn(n, generator=g))
        self.register_buffer("running_mean", torch.randn(n, generator=g))
        self.register_buffer("running_var", torch.rand(n, generator=g) + 0.2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.weight * (self.running_var + 1e-5).rsqrt()
        bias = self.bias - self.running_mean * scale
        return x * scale.reshape(1, -1, 1, 1) + bias.reshape(1, -1, 1, 1)


def test_frozen_batchnorm_torch_export_folds_completely() -> None:
    torch.manual_seed(0)
    module = nn.Sequential(
        nn.Conv2d(3, 6, 3, bias=False), FrozenBatchNorm2d(6, 1), nn.ReLU(),
        nn.Conv2d(6, 4, 1), FrozenBatchNorm2d(4, 2),
    ).eval()  # fmt: skip
    model = export_torch(module, (torch.randn(1, 3, 8, 8),))
    assert ops(model)["Mul"] >= 2
    folded, _ = fold(model)
    assert ops(folded) == {"Conv": 2, "Relu": 1}
    assert_equivalent(model, folded)
