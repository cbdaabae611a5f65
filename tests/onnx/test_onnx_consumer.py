"""BN before a linear layer (consumer fold): Conv without padding, Gemm, MatMul, via layout ops."""

from __future__ import annotations

import numpy as np
import pytest
from support.fold_checks import assert_equivalent, fold, only_bn, ops
from support.graphs import Builder

from bnfold import foldmath


@pytest.mark.parametrize(
    ("c_in", "c_out", "group", "kernel"),
    [(4, 6, 1, 3), (4, 6, 2, 3), (6, 6, 6, 3), (4, 8, 1, 1), (6, 4, 2, (1, 3))],
)
def test_bn_on_input_folds_into_unpadded_conv(c_in, c_out, group, kernel) -> None:
    k = (kernel, kernel) if isinstance(kernel, int) else kernel
    b = Builder(seed=c_in * 10 + group)
    y = b.bn("x", c_in)
    w = b.weight((c_out, c_in // group, *k))
    bias = b.weight((c_out,))
    z = b.op("Conv", [y, w, bias], group=group)
    model = b.model({"x": (2, c_in, 9, 9)}, [z])
    folded, result = fold(model)
    assert ops(folded) == {"Conv": 1}
    entry = only_bn(result)
    assert entry.status == "folded" and "consumer" in entry.pattern
    assert_equivalent(model, folded)


def test_bn_into_1d_and_3d_conv_without_bias() -> None:
    b = Builder(seed=3)
    y = b.bn("x", 4)
    z = b.op("Conv", [y, b.weight((5, 4, 3))], strides=[2])
    model = b.model({"x": (1, 4, 11)}, [z])
    folded, _ = fold(model)
    assert ops(folded) == {"Conv": 1}
    assert_equivalent(model, folded)
    b = Builder(seed=4)
    y = b.bn("x", 2)
    z = b.op("Conv", [y, b.weight((3, 2, 1, 2, 2))], auto_pad="VALID", dilations=[1, 2, 1])
    model = b.model({"x": (1, 2, 3, 6, 5)}, [z])
    folded, _ = fold(model)
    assert ops(folded) == {"Conv": 1}
    assert_equivalent(model, folded)


@pytest.mark.parametrize("pads", [[1, 1, 1, 1], [0, 0, 0, 1]])
def test_padded_conv_is_left_with_padding_reason(pads) -> None:
    b = Builder(seed=5)
    y = b.bn("x", 3)
    z = b.op("Conv", [y, b.weight((4, 3, 3, 3))], pads=pads)
    model = b.model({"x": (1, 3, 8, 8)}, [z])
    folded, result = fold(model)
    assert ops(folded)["BatchNormalization"] == 1
    entry = only_bn(result)
    assert entry.status == "left"
    assert f"has padding {pads}" in entry.reason
    assert entry.reason.startswith("producer: 'x' is a graph input")
    assert_equivalent(model, folded)


def test_same_padding_left_but_1x1_same_folds() -> None:
    b = Builder(seed=6)
    y = b.bn("x", 3)
    z = b.op("Conv", [y, b.weight((4, 3, 3, 3))], auto_pad="SAME_UPPER")
    model = b.model({"x": (1, 3, 8, 8)}, [z])
    _, result = fold(model)
    assert "auto_pad=SAME_UPPER" in only_bn(result).reason
    b = Builder(seed=7)
    y = b.bn("x", 3)
    z = b.op("Conv", [y, b.weight((4, 3, 1, 1))], auto_pad="SAME_UPPER", strides=[2, 2])
    model = b.model({"x": (1, 3, 7, 7)}, [z])
    folded, result = fold(model)
    assert only_bn(result).status == "folded"
    assert_equivalent(model, folded)


@pytest.mark.parametrize("trans_a", [0, 1])
@pytest.mark.parametrize("trans_b", [0, 1])
@pytest.mark.parametrize("with_c", [False, True])
def test_bn_into_gemm(trans_a, trans_b, with_c) -> None:
    b = Builder(seed=trans_a * 4 + trans_b * 2 + with_c)
    k, n = 6, 5
    if trans_a:
        # BN runs on a (batch, K) tensor; a Transpose gives Gemm its (K, batch) A
        y = b.bn("x", k)
        a = b.op("Transpose", [y], perm=[1, 0])
    else:
        a = b.bn("x", k)
    w = b.weight((n, k) if trans_b else (k, n))
    inputs = [a, w] + ([b.weight((n,))] if with_c else [])
    z = b.op("Gemm", inputs, transA=trans_a, transB=trans_b, alpha=0.7, beta=1.3)
    model = b.model({"x": (3, k)}, [z])
    folded, result = fold(model)
    assert ops(folded)["BatchNormalization"] == 0
    assert only_bn(result).status == "folded"
    assert_equivalent(model, folded)


def test_bn_into_matmul_2d_with_and_without_bias_add() -> None:
    b = Builder(seed=11)
    y = b.bn("x", 6)
    z = b.op("MatMul", [y, b.weight((6, 4))])
    model = b.model({"x": (5, 6)}, [z])
    folded, _ = fold(model)
    assert ops(folded) == {"MatMul": 1, "Add": 1}
    assert_equivalent(model, folded)
    b = Builder(seed=12)
    y = b.bn("x", 6)
    m = b.op("MatMul", [y, b.weight((6, 4))])
    z = b.op("Add", [b.weight((4,)), m])
    model = b.model({"x": (5, 6)}, [z])
    folded, _ = fold(model)
    assert ops(folded) == {"MatMul": 1, "Add": 1}  # the bias Add absorbed t·B
    assert_equivalent(model, folded)


def test_bn_matmul_output_is_graph_output_keeps_its_name() -> None:
    b = Builder(seed=13)
    y = b.bn("x", 6)
    z = b.op("MatMul", [y, b.weight((6, 4))])
    model = b.model({"x": (5, 6)}, [z])
    folded, _ = fold(model)
    assert [o.name for o in folded.graph.output] == [z]
    assert_equivalent(model, folded)


def test_bn_on_3d_input_is_not_a_matmul_contraction() -> None:
    b = Builder(seed=14)
    y = b.bn("x", 4)  # channels on axis 1 of (2, 4, 6); MatMul contracts axis 2
    z = b.op("MatMul", [y, b.weight((6, 3))])
    model = b.model({"x": (2, 4, 6)}, [z])
    _, result = fold(model)
    assert "not its contraction axis 2" in only_bn(result).reason


def test_bn1d_through_transpose_into_matmul() -> None:
    """(B, C, L) → BN1d → Transpose → MatMul over C: the tokens pattern, consumer side."""
    b = Builder(seed=15)
    y = b.bn("x", 4)
    t = b.op("Transpose", [y], perm=[0, 2, 1])
    z = b.op("MatMul", [t, b.weight((4, 3))])
    model = b.model({"x": (2, 4, 6)}, [z])
    folded, result = fold(model)
    assert only_bn(result).status == "folded"
    assert ops(folded)["BatchNormalization"] == 0
    assert_equivalent(model, folded)


def test_bn2d_flatten_gemm_head_repeats_scale_per_pixel() -> None:
    b = Builder(seed=16)
    y = b.bn("x", 3)
    f = b.op("Flatten", [y], axis=1)
    z = b.op("Gemm", [f, b.weight((5, 12)), b.weight((5,))], transB=1)
    model = b.model({"x": (2, 3, 2, 2)}, [z])
    folded, result = fold(model)
    assert only_bn(result).status == "folded"
    assert ops(folded) == {"Flatten": 1, "Gemm": 1}
    assert_equivalent(model, folded)


def test_bn_feeding_two_layers_folds_into_both() -> None:
    b = Builder(seed=17)
    y = b.bn("x", 3)
    w = b.weight((4, 3, 1, 1))
    z1 = b.op("Conv", [y, w])
    z2 = b.op("Conv", [y, w])  # the same weight tensor: each Conv gets its own copy
    model = b.model({"x": (1, 3, 4, 4)}, [z1, z2])
    folded, result = fold(model)
    entry = only_bn(result)
    assert entry.status == "folded" and entry.into == f"{z1}, {z2}"
    assert ops(folded) == {"Conv": 2}
    assert_equivalent(model, folded)


def test_bn_before_q_k_v_projections_on_tokens() -> None:
    """(B, C, N) → BN1d → Transpose → three MatMuls: attention input projections."""
    b = Builder(seed=20)
    y = b.bn("x", 8)
    t = b.op("Transpose", [y], perm=[0, 2, 1])
    outs = [b.op("MatMul", [t, b.weight((8, 4))]) for _ in range(3)]
    model = b.model({"x": (2, 8, 5)}, outs)
    folded, result = fold(model)
    assert only_bn(result).status == "folded"
    assert ops(folded)["BatchNormalization"] == 0
    assert_equivalent(model, folded)


def test_bn_feeding_a_layer_and_a_relu_is_left() -> None:
    b = Builder(seed=21)
    y = b.bn("x", 3)
    z1 = b.op("Conv", [y, b.weight((4, 3, 1, 1))])
    z2 = b.op("Relu", [y])
    model = b.model({"x": (1, 3, 4, 4)}, [z1, z2])
    folded, result = fold(model)
    reason = only_bn(result).reason
    assert f"feeds 2 nodes (Conv, Relu); Relu '{z2}' is not a linear layer" in reason
    assert {t.name for t in folded.graph.initializer} == {t.name for t in model.graph.initializer}
    assert_equivalent(model, folded)


def test_relu_between_bn_and_conv_names_both_sides() -> None:
    b = Builder(seed=18)
    c = b.op("Conv", ["x", b.weight((3, 3, 3, 3))], pads=[1, 1, 1, 1])
    r = b.op("Relu", [c])
    a = b.op("Add", [c, r])
    y = b.bn(r, 3)
    y2 = b.op("Relu", [y])
    z = b.op("Conv", [y2, b.weight((4, 3, 3, 3))], pads=[1, 1, 1, 1])
    model = b.model({"x": (1, 3, 6, 6)}, [z, a])
    _, result = fold(model)
    reason = only_bn(result).reason
    assert reason.startswith(f"producer: Relu '{r}' is not a linear layer")
    assert f"consumer: Relu '{y2}' is not a linear layer" in reason


def test_producer_output_shared_names_other_consumer() -> None:
    b = Builder(seed=19)
    c = b.op("Conv", ["x", b.weight((3, 3, 1, 1))])
    y = b.bn(c, 3)
    z = b.op("Add", [c, y])
    model = b.model({"x": (1, 3, 4, 4)}, [z])
    _, result = fold(model)
    reason = only_bn(result).reason
    assert "has 2 consumers (Add, BatchNormalization)" in reason
    assert f"consumer: Add '{z}' is not a linear layer" in reason


def test_fold_conv_input_affine_matches_direct_convolution() -> None:
    """foldmath: Conv(s·x + t) == Conv'(x) for a grouped unpadded conv (numpy reference)."""
    rng = np.random.default_rng(0)
    g, c_in, c_out = 2, 4, 6
    w = rng.normal(size=(c_out, c_in // g, 2, 2))
    b = rng.normal(size=c_out)
    s, t = rng.normal(size=c_in), rng.normal(size=c_in)
    x = rng.normal(size=(c_in, 3, 3))

    def conv(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
        out = np.zeros((c_out, 2, 2))
        for o in range(c_out):
            gi = o // (c_out // g)
            xs = x[gi * (c_in // g) : (gi + 1) * (c_in // g)]
            for i in range(2):
                for j in range(2):
                    out[o, i, j] = np.sum(xs[:, i : i + 2, j : j + 2] * w[o]) + b[o]
        return out

    w2, b2 = foldmath.fold_conv_input_affine(w, b, s, t, g)
    expected = conv(s[:, None, None] * x + t[:, None, None], w, b)
    np.testing.assert_allclose(conv(x, w2, b2), expected, rtol=1e-12, atol=1e-12)


def test_fold_matrix_input_affine_both_layouts() -> None:
    rng = np.random.default_rng(1)
    w = rng.normal(size=(5, 3))  # (in, out)
    s, t, x = rng.normal(size=5), rng.normal(size=5), rng.normal(size=(4, 5))
    for in_axis, weight in ((0, w), (1, w.T)):
        w2, b2 = foldmath.fold_matrix_input_affine(weight, None, s, t, in_axis)
        w2_kn = w2 if in_axis == 0 else w2.T
        np.testing.assert_allclose(x @ w2_kn + b2, (x * s + t) @ w, rtol=1e-12)
