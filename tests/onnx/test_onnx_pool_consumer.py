"""BN → pooling → linear layer: the BN moves through the pooling and folds into the layer.

Averages (GlobalAveragePool, ReduceMean off the channel axis, unpadded AveragePool) commute
with any per-channel affine map; maxima (GlobalMaxPool, MaxPool) only when every BN scale is
positive. Every refusal comes back as a reason in the report and leaves the graph as it was.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest
from support.fold_checks import assert_equivalent, fold, only_bn, ops
from support.graphs import Builder, bn_params

from bnfold.onnx.plan.pooling import window_reason


def positive_bn(b: Builder, x: str, c: int, negative: int = 0) -> str:
    """A BN with random statistics and γ > 0, except ``negative`` channels with γ < 0."""
    p = bn_params(b.rng, c)
    p["scale"] = np.abs(p["scale"])
    p["scale"][:negative] *= -1
    names = [b.const(p[k], f"bn_{k}") for k in ("scale", "bias", "mean", "var")]
    return b.op("BatchNormalization", [x, *names], epsilon=1e-5)


def assert_folded(model, expected_ops: dict[str, int], path: str) -> None:
    """The BN folds into the consumer through ``path``; ops as expected; numerics match."""
    folded, result = fold(model)
    entry = only_bn(result)
    assert entry.status == "folded", entry.reason
    assert entry.pattern == f"BN→{path} (consumer)"
    assert ops(folded) == expected_ops
    assert_equivalent(model, folded)


def assert_left(model, *fragments: str) -> str:
    """The BN stays with a consumer-side reason holding every fragment; graph unchanged."""
    folded, result = fold(model)
    entry = only_bn(result)
    assert entry.status == "left"
    consumer = entry.reason.split("consumer: ", 1)[1]
    for fragment in fragments:
        assert fragment in consumer, entry.reason
    assert ops(folded) == ops(model)
    assert {t.name for t in folded.graph.initializer} == {t.name for t in model.graph.initializer}
    assert_equivalent(model, folded)
    return consumer


# -- averages ------------------------------------------------------------------------------
@pytest.mark.parametrize("trans_b", [0, 1])
def test_global_average_pool_flatten_gemm(trans_b: int) -> None:
    b = Builder(seed=trans_b)
    r = b.op("Relu", ["x"])
    y = b.bn(r, 6)
    p = b.op("GlobalAveragePool", [y])
    f = b.op("Flatten", [p], axis=1)
    w = b.weight((5, 6) if trans_b else (6, 5))
    z = b.op("Gemm", [f, w, b.weight((5,))], transB=trans_b, alpha=0.8, beta=1.2)
    model = b.model({"x": ("N", 6, 5, 4)}, [z])
    expected = {"Relu": 1, "GlobalAveragePool": 1, "Flatten": 1, "Gemm": 1}
    assert_folded(model, expected, "GlobalAveragePool→Flatten→Gemm")


def test_global_average_pool_reshape_gemm_without_bias() -> None:
    b = Builder(seed=2)
    y = b.bn("x", 4)
    p = b.op("GlobalAveragePool", [y])
    f = b.op("Reshape", [p, b.const(np.array([-1, 4], np.int64), "shape")])
    z = b.op("Gemm", [f, b.weight((3, 4))], transB=1)
    model = b.model({"x": (2, 4, 3, 3)}, [z])
    assert_folded(
        model, {"GlobalAveragePool": 1, "Reshape": 1, "Gemm": 1}, "GlobalAveragePool→Reshape→Gemm"
    )


@pytest.mark.parametrize("opset", [17, 18])
def test_reduce_mean_keepdims_0_matmul_add(opset: int) -> None:
    """SwiftFormer's head: BN → x.mean((2, 3)) → Linear (MatMul + Add)."""
    b = Builder(seed=opset)
    y = b.bn("x", 6)
    if opset >= 18:
        m = b.op("ReduceMean", [y, b.const(np.array([2, 3], np.int64), "axes")], keepdims=0)
    else:
        m = b.op("ReduceMean", [y], axes=[2, 3], keepdims=0)
    mm = b.op("MatMul", [m, b.weight((6, 5))])
    z = b.op("Add", [mm, b.weight((5,))])
    model = b.model({"x": ("N", 6, 4, 4)}, [z], opset=opset)
    assert_folded(model, {"ReduceMean": 1, "MatMul": 1, "Add": 1}, "ReduceMean→MatMul→Add")


def test_reduce_mean_negative_axes_keepdims_flatten_gemm() -> None:
    b = Builder(seed=3)
    y = b.bn("x", 5)
    m = b.op("ReduceMean", [y], axes=[-1, -2], keepdims=1)
    f = b.op("Flatten", [m])
    z = b.op("Gemm", [f, b.weight((5, 3)), b.weight((3,))])
    model = b.model({"x": (2, 5, 3, 4)}, [z])
    assert_folded(model, {"ReduceMean": 1, "Flatten": 1, "Gemm": 1}, "ReduceMean→Flatten→Gemm")


def test_reduce_mean_renumbers_the_channel_axis() -> None:
    """NCHW → NHWC → mean over H, W (keepdims=0) → MatMul: channels end on axis 1 of (N, C)."""
    b = Builder(seed=4)
    y = b.bn("x", 6)
    t = b.op("Transpose", [y], perm=[0, 2, 3, 1])
    m = b.op("ReduceMean", [t], axes=[1, 2], keepdims=0)
    z = b.op("MatMul", [m, b.weight((6, 4))])
    model = b.model({"x": (2, 6, 3, 5)}, [z])
    expected = {"Transpose": 1, "ReduceMean": 1, "MatMul": 1, "Add": 1}
    assert_folded(model, expected, "Transpose→ReduceMean→MatMul")


def test_reduce_mean_with_empty_axes_noop_is_the_identity() -> None:
    b = Builder(seed=5)
    y = b.bn("x", 6)
    m = b.op("ReduceMean", [y], noop_with_empty_axes=1)
    z = b.op("MatMul", [m, b.weight((6, 4))])
    model = b.model({"x": (3, 6)}, [z], opset=18)
    assert_folded(model, {"ReduceMean": 1, "MatMul": 1, "Add": 1}, "ReduceMean→MatMul")


@pytest.mark.parametrize("kernel", [1, 3])
def test_unpadded_average_pool_conv(kernel: int) -> None:
    b = Builder(seed=6 + kernel)
    y = b.bn("x", 4)
    p = b.op("AveragePool", [y], kernel_shape=[2, 2], strides=[2, 2], count_include_pad=1)
    z = b.op("Conv", [p, b.weight((5, 4, kernel, kernel)), b.weight((5,))])
    model = b.model({"x": (2, 4, 8, 8)}, [z])
    assert_folded(model, {"AveragePool": 1, "Conv": 1}, "AveragePool→Conv")


def test_average_pool_padding_not_counted_folds() -> None:
    """count_include_pad=0 averages input elements only; each window holds at least one."""
    b = Builder(seed=8)
    y = b.bn("x", 4)
    p = b.op("AveragePool", [y], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 2, 2, 1])
    z = b.op("Conv", [p, b.weight((5, 4, 1, 1))])
    model = b.model({"x": (2, 4, 7, 6)}, [z])
    assert_folded(model, {"AveragePool": 1, "Conv": 1}, "AveragePool→Conv")


def test_pool_output_into_two_layers_folds_into_both() -> None:
    b = Builder(seed=9)
    y = b.bn("x", 4)
    p = b.op("GlobalAveragePool", [y])
    z1 = b.op("Conv", [p, b.weight((3, 4, 1, 1))])
    z2 = b.op("Conv", [p, b.weight((2, 4, 1, 1))])
    model = b.model({"x": (2, 4, 5, 5)}, [z1, z2])
    folded, result = fold(model)
    entry = only_bn(result)
    assert entry.status == "folded" and entry.into == f"{z1}, {z2}"
    assert ops(folded) == {"GlobalAveragePool": 1, "Conv": 2}
    assert_equivalent(model, folded)


# -- maxima --------------------------------------------------------------------------------
def test_global_max_pool_folds_when_every_scale_is_positive() -> None:
    b = Builder(seed=10)
    y = positive_bn(b, "x", 6)
    p = b.op("GlobalMaxPool", [y])
    f = b.op("Flatten", [p])
    z = b.op("Gemm", [f, b.weight((4, 6)), b.weight((4,))], transB=1)
    model = b.model({"x": (2, 6, 4, 4)}, [z])
    expected = {"GlobalMaxPool": 1, "Flatten": 1, "Gemm": 1}
    assert_folded(model, expected, "GlobalMaxPool→Flatten→Gemm")


def test_global_max_pool_with_one_negative_gamma_is_left() -> None:
    b = Builder(seed=11)
    y = positive_bn(b, "x", 6, negative=1)
    p = b.op("GlobalMaxPool", [y])
    f = b.op("Flatten", [p])
    z = b.op("Gemm", [f, b.weight((4, 6)), b.weight((4,))], transB=1)
    model = b.model({"x": (2, 6, 4, 4)}, [z])
    assert_left(model, f"GlobalMaxPool '{p}' takes a maximum", "1 of 6 channels have γ ≤ 0")


def test_padded_max_pool_folds_when_every_scale_is_positive() -> None:
    """MaxPool never selects its padding, and every window here holds an input element."""
    b = Builder(seed=12)
    y = positive_bn(b, "x", 4)
    p = b.op("MaxPool", [y], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 2, 2])
    z = b.op("Conv", [p, b.weight((5, 4, 1, 1)), b.weight((5,))])
    model = b.model({"x": (2, 4, 7, 7)}, [z])
    assert_folded(model, {"MaxPool": 1, "Conv": 1}, "MaxPool→Conv")


def test_max_pool_with_used_indices_is_left() -> None:
    b = Builder(seed=13)
    y = positive_bn(b, "x", 4)
    p = b.op("MaxPool", [y], n_out=2, kernel_shape=[2, 2], strides=[2, 2])
    z = b.op("Conv", [p, b.weight((5, 4, 1, 1))])
    model = b.model({"x": (1, 4, 4, 4)}, [z, f"{p}_out1"])
    assert_left(model, "Indices output is used")


# -- refusals ------------------------------------------------------------------------------
def test_reduce_mean_over_the_channel_axis_is_left() -> None:
    b = Builder(seed=14)
    y = b.bn("x", 6)
    m = b.op("ReduceMean", [y], axes=[1], keepdims=1)
    z = b.op("Conv", [m, b.weight((3, 1, 1, 1))])
    model = b.model({"x": (2, 6, 3, 3)}, [z])
    assert_left(model, f"ReduceMean '{m}' averages over axis 1, which carries the BN channels")


def test_reduce_mean_over_every_axis_is_left() -> None:
    b = Builder(seed=15)
    y = b.bn("x", 6)
    m = b.op("ReduceMean", [y], keepdims=1)
    z = b.op("MatMul", [m, b.weight((1, 3))])
    model = b.model({"x": (2, 6)}, [z])
    assert_left(model, "averages over every axis")


def test_average_pool_counting_its_padding_is_left() -> None:
    b = Builder(seed=16)
    y = b.bn("x", 4)
    p = b.op("AveragePool", [y], kernel_shape=[3, 3], pads=[1, 1, 1, 1], count_include_pad=1)
    z = b.op("Conv", [p, b.weight((5, 4, 1, 1))])
    model = b.model({"x": (1, 4, 6, 6)}, [z])
    assert_left(model, "padding [1, 1, 1, 1] counted in its averages (count_include_pad=1)")


@pytest.mark.parametrize(
    ("attrs", "fragment"),
    [
        ({"pads": [1, 1, 1, 1], "dilations": [2, 2]}, "and dilations"),
        ({"ceil_mode": 1}, "ceil_mode=1"),
    ],
)
def test_average_pool_windows_that_might_hold_padding_only_are_left(attrs, fragment) -> None:
    b = Builder(seed=17)
    y = b.bn("x", 4)
    p = b.op("AveragePool", [y], kernel_shape=[3, 3], strides=[2, 2], **attrs)
    z = b.op("Conv", [p, b.weight((5, 4, 1, 1))])
    model = b.model({"x": (1, 4, 8, 8)}, [z], opset=19)
    assert_left(model, fragment)


def test_padded_conv_after_pooling_is_left_with_the_conv_reason() -> None:
    b = Builder(seed=18)
    y = b.bn("x", 4)
    p = b.op("AveragePool", [y], kernel_shape=[2, 2], strides=[2, 2])
    z = b.op("Conv", [p, b.weight((5, 4, 3, 3))], pads=[1, 1, 1, 1])
    model = b.model({"x": (1, 4, 8, 8)}, [z])
    assert_left(model, f"through AveragePool '{p}': Conv '{z}' has padding [1, 1, 1, 1]")


def test_bn_output_also_used_elsewhere_is_left() -> None:
    b = Builder(seed=19)
    y = b.bn("x", 4)
    p = b.op("GlobalAveragePool", [y])
    z1 = b.op("Conv", [p, b.weight((3, 4, 1, 1))])
    z2 = b.op("Relu", [y])
    model = b.model({"x": (1, 4, 5, 5)}, [z1, z2])
    assert_left(model, "feeds 2 nodes (GlobalAveragePool, Relu)", f"Relu '{z2}' is not a linear")


def test_pool_output_that_is_a_graph_output_is_left() -> None:
    b = Builder(seed=20)
    y = b.bn("x", 4)
    p = b.op("GlobalAveragePool", [y])
    z = b.op("Conv", [p, b.weight((3, 4, 1, 1))])
    model = b.model({"x": (1, 4, 5, 5)}, [z, p])
    assert_left(model, f"'{p}' is a graph output")


def test_pool_then_relu_is_left() -> None:
    b = Builder(seed=21)
    y = b.bn("x", 4)
    p = b.op("GlobalAveragePool", [y])
    r = b.op("Relu", [p])
    z = b.op("Conv", [r, b.weight((3, 4, 1, 1))])
    model = b.model({"x": (1, 4, 5, 5)}, [z])
    assert_left(model, f"through GlobalAveragePool '{p}': Relu '{r}' is not a linear layer")


def test_padding_as_large_as_the_kernel_is_refused() -> None:
    """onnxruntime rejects such a model itself; the check still must not pass it."""
    node = ir.node("AveragePool", [None], {"kernel_shape": [3, 3], "pads": [3, 0, 0, 0]})
    reason = window_reason(node, "AveragePool 'p'")
    assert reason == "AveragePool 'p' has padding [3, 0, 0, 0] not smaller than its kernel [3, 3]"
    assert (
        window_reason(ir.node("MaxPool", [None], {"kernel_shape": [2], "pads": [1, 1]}), "") is None
    )
