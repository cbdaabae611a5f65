"""BN after a linear layer seen through Reshape/Flatten/Transpose/Squeeze/Unsqueeze."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from support.fold_checks import assert_equivalent, export_torch, fold, only_bn, ops, randomize_bn
from support.graphs import Builder, GraphBuilder
from support.onnx_checks import assert_equivalent as assert_same_outputs
from torch import nn

import bnfold
from bnfold.onnx.plan.layout import map_flat
from bnfold.patterns import axis_after_reduce


def test_axis_after_reduce_renumbers_or_refuses() -> None:
    assert axis_after_reduce(1, {2, 3}, keepdims=True) == 1
    assert axis_after_reduce(1, {2, 3}, keepdims=False) == 1
    assert axis_after_reduce(2, {0, 1}, keepdims=False) == 0  # (B, N, C) mean over B, N
    assert axis_after_reduce(1, {1}, keepdims=True) is None  # a mean over the channels


def test_map_flat_keeps_merges_and_splits() -> None:
    # (B, N, C) → (B·N, C): the channel axis stays, same vector
    [(axis, idx)] = map_flat([None, 5, 8], 2, 8, [None, 8])
    assert axis == 1 and list(idx) == list(range(8))
    # (N, C, H, W) → (N, C·H·W): the vector repeats per pixel
    [(axis, idx)] = map_flat([None, 3, 2, 2], 1, 3, [None, 12])
    assert axis == 1 and list(idx) == [0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2]
    # (N, C·k) split into (N, C, k): BN on C is per feature of the producer, repeated k times
    [(axis, idx)] = map_flat([None, 4, 3], 1, 4, [None, 12])
    assert list(idx) == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    # a merged axis cannot be split back into a per-channel vector
    assert map_flat([None, 12], 1, 12, [None, 3, 4]) == []
    # channels moved to another position by a reshape: no mapping
    assert map_flat([2, 3, 4], 1, 3, [2, 4, 3]) == []
    # symbolic dims after the axis make the layout unknowable
    assert map_flat([2, 3, None], 1, 3, [2, 3, None]) == []


class LinearBN(nn.Module):
    """LeViT's Linear_BN: ``bn(x.flatten(0, 1)).reshape_as(x)``."""

    def __init__(self, cin: int, cout: int, bias: bool = False) -> None:
        super().__init__()
        self.c = nn.Linear(cin, cout, bias=bias)
        self.bn = nn.BatchNorm1d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.c(x)
        return self.bn(x.flatten(0, 1)).reshape_as(x)


@pytest.mark.parametrize("bias", [False, True])
def test_levit_linear_bn_torch_export(bias: bool) -> None:
    torch.manual_seed(0)
    module = randomize_bn(nn.Sequential(LinearBN(8, 12, bias), nn.Hardswish(), LinearBN(12, 8)))
    model = export_torch(module.eval(), (torch.randn(2, 5, 8),))
    assert ops(model)["BatchNormalization"] == 2
    folded, result = fold(model)
    assert ops(folded)["BatchNormalization"] == 0
    assert all(e.status == "folded" for e in result.report.batchnorms)
    assert all("Flatten" in e.pattern or "Reshape" in e.pattern for e in result.report.batchnorms)
    assert_equivalent(model, folded)


def test_levit_linear_bn_with_dynamic_batch() -> None:
    torch.manual_seed(1)
    module = randomize_bn(LinearBN(6, 10)).eval()
    model = export_torch(
        module,
        (torch.randn(2, 5, 6),),
        input_names=["x"],
        dynamic_axes={"x": {0: "batch"}},
    )
    folded, result = fold(model)
    assert only_bn(result).status == "folded"
    assert_equivalent(model, folded)


def test_matmul_3d_then_transpose_then_bn1d() -> None:
    """MatMul on (B, N, C) tokens, Transpose to (B, C, N), BatchNorm1d over C."""
    b = Builder(seed=2)
    m = b.op("MatMul", ["x", b.weight((6, 4))])
    a = b.op("Add", [m, b.weight((4,))])
    t = b.op("Transpose", [a], perm=[0, 2, 1])
    y = b.bn(t, 4)
    model = b.model({"x": (2, 5, 6)}, [y])
    folded, result = fold(model)
    assert ops(folded) == {"MatMul": 1, "Add": 1, "Transpose": 1}
    assert only_bn(result).pattern == "MatMul→Add→Transpose→BN"
    assert_equivalent(model, folded)


def test_gemm_unsqueeze_bn_and_squeeze_back() -> None:
    b = Builder(seed=3)
    g = b.op("Gemm", ["x", b.weight((4, 6)), b.weight((4,))], transB=1)
    u = b.op("Unsqueeze", [g, b.const(np.array([2], np.int64))])
    y = b.bn(u, 4)
    z = b.op("Squeeze", [y, b.const(np.array([2], np.int64))])
    model = b.model({"x": (3, 6)}, [z])
    folded, result = fold(model)
    assert only_bn(result).status == "folded"
    assert ops(folded)["BatchNormalization"] == 0
    assert_equivalent(model, folded)


def test_unsqueeze_axes_attribute_opset11() -> None:
    b = Builder(seed=4)
    g = b.op("Gemm", ["x", b.weight((6, 4))])
    u = b.op("Unsqueeze", [g], axes=[2, 3])
    y = b.bn(u, 4)
    model = b.model({"x": (3, 6)}, [y], opset=11)
    folded, result = fold(model)
    assert only_bn(result).status == "folded"
    assert_equivalent(model, folded)


def test_conv_flatten_split_heads_bn() -> None:
    """Conv (N, 6, H, W) → Reshape (N, 3, 2·H·W) → BN over the 3 groups: repeated vector."""
    b = Builder(seed=5)
    c = b.op("Conv", ["x", b.weight((6, 2, 1, 1))])
    r = b.op("Reshape", [c, b.const(np.array([0, 3, -1], np.int64))])
    y = b.bn(r, 3)
    model = b.model({"x": (2, 2, 3, 3)}, [y])
    folded, result = fold(model)
    assert only_bn(result).status == "folded"
    assert_equivalent(model, folded)


def test_reshape_that_moves_channels_is_left_with_reason() -> None:
    b = Builder(seed=6)
    m = b.op("MatMul", ["x", b.weight((6, 4))])  # (2, 5, 4)
    r = b.op("Reshape", [m, b.const(np.array([2, 4, 5], np.int64))])  # not a transpose!
    y = b.bn(r, 4)
    model = b.model({"x": (2, 5, 6)}, [y])
    folded, result = fold(model)
    entry = only_bn(result)
    assert entry.status == "left"
    assert "does not keep the channel axis" in entry.reason
    assert_equivalent(model, folded)


def test_transpose_to_non_feature_axis_is_left() -> None:
    b = Builder(seed=7)
    m = b.op("MatMul", ["x", b.weight((6, 4))])  # (2, 5, 4): features on axis 2
    y = b.bn(m, 5)  # BN over axis 1 = tokens, not features
    model = b.model({"x": (2, 5, 6)}, [y])
    _, result = fold(model)
    assert "is not the feature axis" in only_bn(result).reason
    b = Builder(seed=8)
    m = b.op("MatMul", ["x", b.weight((6, 4))])
    t = b.op("Transpose", [m], perm=[1, 0, 2])  # (5, 2, 4): axis 1 is batch
    y = b.bn(t, 2)
    model = b.model({"x": (2, 5, 6)}, [y])
    _, result = fold(model)
    assert "through Transpose" in only_bn(result).reason


def test_layout_output_shared_is_left() -> None:
    b = Builder(seed=9)
    m = b.op("MatMul", ["x", b.weight((6, 4))])
    t = b.op("Transpose", [m], perm=[0, 2, 1])
    y = b.bn(t, 4)
    z = b.op("Add", [y, t])
    model = b.model({"x": (2, 5, 6)}, [z])
    folded, result = fold(model)
    assert "has 2 consumers" in only_bn(result).reason
    assert_equivalent(model, folded)


def _dynamic_flatten_levit(opset: int = 13) -> onnx.ModelProto:
    """Legacy-export LeViT at opset 13: Linear → flatten(0, 1) → BN1d → view, with the
    flatten spelt ``Reshape(x, Concat(Slice(Shape(x), 0, 2), [-1]))`` (onnx's shape
    inference cannot see through it, so every later rank is unknown)."""
    b = GraphBuilder(seed=7)
    x = b.input("x", [1, 8, 4, 4])
    shape = b.node("Shape", [x], name="shape")
    lead = b.node(
        "Slice",
        [shape, b.const("s0", np.array([0], np.int64)), b.const("s1", np.array([2], np.int64))],
        name="lead",
    )
    target = b.node("Concat", [lead, b.const("m1", np.array([-1], np.int64))], name="cat", axis=0)
    y = b.node("Reshape", [x, target], name="to_tokens")  # [1, 8, 16]
    y = b.node("Transpose", [y], name="tokens_last", perm=[0, 2, 1])  # [1, 16, 8]
    y = b.node("MatMul", [y, b.weight("fc", [8, 6])], name="fc")  # [1, 16, 6]
    shape2 = b.node("Shape", [y], name="shape2")
    flat = b.node("Flatten", [y], name="flatten", axis=2)  # [16, 6]
    y = b.bn(flat, 6, name="bn")
    b.node("Reshape", [y, shape2], name="view", outputs=["y"])
    b.output("y", 3)
    return b.build(opset=opset)


def test_regression_dynamic_flatten_left_every_later_rank_unknown(monkeypatch) -> None:
    """levit_128s, legacy exporter at opset 11/13: 46 of 52 BN were left ("tensor ranks
    are unknown"); onnxruntime's symbolic shape inference now fills the ranks in."""
    model = _dynamic_flatten_levit()
    result = bnfold.fold(model)
    assert result.report.counts()["batchnorm"]["folded"] == 1, result.report.describe()
    assert_same_outputs(model, result.model)
    from bnfold.onnx.io import symbolic_shapes

    monkeypatch.setattr(symbolic_shapes, "symbolic_value_info", lambda lite: [])
    without = bnfold.fold(model)
    assert without.report.counts()["batchnorm"]["left"] == 1  # the case this test guards
