"""FoldBatchNormIntoProducerPass on tiny hand-built graphs: every layer form it folds into.

Each test builds ``layer → BN`` with random weights and random BN statistics, folds it,
checks that exactly the layer is left, and compares numerics with an ORT_DISABLE_ALL run of
the original.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from support.graphs import GraphBuilder, make_bn_params, rand
from support.onnx_checks import (
    assert_equivalent,
    assert_hygiene,
    entry,
    initializer_array,
    node_named,
    op_types,
)

import bnfold


def fold_and_check(model: onnx.ModelProto, tol: float = 1e-4) -> onnx.ModelProto:
    """Fold, then assert: no BN left, every BN folded, hygiene kept, outputs equivalent."""
    result = bnfold.fold(model)
    folded = result.model
    assert "BatchNormalization" not in op_types(folded), result.report.describe()
    counts = result.report.counts()["batchnorm"]
    assert counts["found"] == counts["folded"] >= 1
    assert_hygiene(model, folded)
    assert_equivalent(model, folded, tol=tol)
    return folded


# -- Conv ----------------------------------------------------------------------------------
CONV_CASES = [
    # (spatial, c_in, c_out, group, kernel, strides, dilations, pads, bias)
    pytest.param(1, 3, 5, 1, 3, 1, 1, 1, True, id="1d"),
    pytest.param(1, 4, 6, 2, 3, 2, 2, 0, False, id="1d-g2-stride-dilation-nobias"),
    pytest.param(2, 3, 4, 1, 3, 1, 1, 1, False, id="2d-nobias"),
    pytest.param(2, 3, 4, 1, 3, 2, 1, 1, True, id="2d-stride-bias"),
    pytest.param(2, 4, 6, 2, 3, 1, 2, 2, True, id="2d-g2-dilation"),
    pytest.param(2, 6, 6, 6, 3, 1, 1, 1, False, id="2d-depthwise"),
    pytest.param(2, 4, 8, 4, 3, 2, 1, 1, True, id="2d-depthwise-multiplier"),
    pytest.param(2, 5, 3, 1, 1, 1, 1, 0, True, id="2d-pointwise"),
    pytest.param(3, 2, 4, 1, 3, 1, 1, 1, True, id="3d"),
    pytest.param(3, 4, 4, 2, 2, 2, 1, 0, False, id="3d-g2-stride-nobias"),
]


@pytest.mark.parametrize(
    ("spatial", "c_in", "c_out", "group", "k", "stride", "dilation", "pad", "bias"), CONV_CASES
)
def test_conv_bn_folds(
    spatial: int,
    c_in: int,
    c_out: int,
    group: int,
    k: int,
    stride: int,
    dilation: int,
    pad: int,
    bias: bool,
) -> None:
    b = GraphBuilder(seed=spatial * 100 + c_out)
    x = b.input("x", ["N", c_in] + [7] * spatial)
    inputs = [x, b.weight("w", [c_out, c_in // group] + [k] * spatial)]
    if bias:
        inputs.append(b.weight("b", [c_out]))
    conv = b.node(
        "Conv",
        inputs,
        name="conv",
        group=group,
        strides=[stride] * spatial,
        dilations=[dilation] * spatial,
        pads=[pad] * (2 * spatial),
    )
    b.bn(conv, c_out, name="bn", output="y", epsilon=1e-3)
    b.output("y", 2 + spatial)
    model = b.build()
    folded = fold_and_check(model)
    assert op_types(folded) == ["Conv"]
    conv_node = node_named(folded, "conv")
    assert len(conv_node.input) == 3  # a bias appears even when the Conv had none
    assert conv_node.output[0] == "y"  # the BN's output name is the graph output's


def test_conv_fold_matches_float64_formula() -> None:
    """W' = W·s over axis 0 and b' = (b − μ)·s + β with the stored float32 ε."""
    b = GraphBuilder(seed=3)
    x = b.input("x", ["N", 3, 5, 5])
    conv = b.node("Conv", [x, b.weight("w", [4, 3, 3, 3]), b.weight("b", [4])], name="conv")
    b.bn(conv, 4, name="bn", output="y", epsilon=1e-5)
    b.output("y", 4)
    model = b.build()
    folded = bnfold.fold(model).model
    w, bias = initializer_array(model, "w").astype(np.float64), initializer_array(model, "b")
    g, beta, mu, var = (
        initializer_array(model, f"bn.{k}").astype(np.float64)
        for k in ("scale", "bias", "mean", "var")
    )
    s = g / np.sqrt(var + np.float64(np.float32(1e-5)))
    conv_node = node_named(folded, "conv")
    new_w = initializer_array(folded, conv_node.input[1])
    new_b = initializer_array(folded, conv_node.input[2])
    assert new_w.dtype == np.float32 and new_b.dtype == np.float32
    np.testing.assert_allclose(new_w, (w * s[:, None, None, None]).astype(np.float32), rtol=1e-7)
    expected_b = (bias.astype(np.float64) - mu) * s + beta
    np.testing.assert_allclose(new_b, expected_b.astype(np.float32), rtol=1e-6, atol=1e-7)


# -- ConvTranspose -------------------------------------------------------------------------
CT_CASES = [
    # (spatial, c_in, c_out, group, kernel, strides, output_padding, bias)
    pytest.param(2, 4, 6, 1, 3, 1, 0, False, id="g1-cin4-cout6"),
    pytest.param(2, 6, 4, 1, 3, 2, 1, True, id="g1-cin6-cout4-stride-outpad"),
    pytest.param(2, 4, 6, 2, 3, 1, 0, True, id="g2-cin4-cout6"),
    pytest.param(2, 6, 4, 2, 4, 2, 0, False, id="g2-cin6-cout4-stride"),
    pytest.param(2, 4, 8, 4, 3, 2, 1, False, id="depthwise-cin4-cout8"),
    pytest.param(2, 6, 6, 6, 3, 1, 0, True, id="depthwise-cin6-cout6"),
    pytest.param(1, 4, 6, 2, 3, 2, 1, True, id="1d-g2"),
    pytest.param(3, 2, 6, 2, 2, 2, 0, False, id="3d-g2-cin2-cout6"),
]


@pytest.mark.parametrize(
    ("spatial", "c_in", "c_out", "group", "k", "stride", "out_pad", "bias"), CT_CASES
)
def test_conv_transpose_bn_folds(
    spatial: int, c_in: int, c_out: int, group: int, k: int, stride: int, out_pad: int, bias: bool
) -> None:
    b = GraphBuilder(seed=c_in * 10 + c_out + group)
    x = b.input("x", ["N", c_in] + [4] * spatial)
    inputs = [x, b.weight("w", [c_in, c_out // group] + [k] * spatial)]
    if bias:
        inputs.append(b.weight("b", [c_out]))
    attrs = {"group": group, "strides": [stride] * spatial}
    if out_pad:
        attrs["output_padding"] = [out_pad] * spatial
    ct = b.node("ConvTranspose", inputs, name="convT", **attrs)
    b.bn(ct, c_out, name="bn", output="y")
    b.output("y", 2 + spatial)
    model = b.build()
    folded = fold_and_check(model)
    assert op_types(folded) == ["ConvTranspose"]
    node = node_named(folded, "convT")
    assert {a.name for a in node.attribute} == set(attrs)


# -- Gemm ----------------------------------------------------------------------------------
M, K, N = 3, 5, 4
C_SHAPES = {
    "none": None,
    "vector": (N,),
    "row": (1, N),
    "scalar": (),
    "matrix": (M, N),
    "column": (M, 1),
}
GEMM_ATTRS = [
    pytest.param({}, id="plain"),
    pytest.param({"transB": 1}, id="transB"),
    pytest.param({"transA": 1, "alpha": 0.7}, id="transA-alpha"),
    pytest.param({"transA": 1, "transB": 1, "beta": 0.5}, id="transAB-beta"),
    pytest.param({"alpha": 1.5, "beta": -2.0, "transB": 1}, id="alpha-beta-transB"),
]


@pytest.mark.parametrize("attrs", GEMM_ATTRS)
@pytest.mark.parametrize("c_shape", list(C_SHAPES))
def test_gemm_bn_folds(attrs: dict[str, float], c_shape: str) -> None:
    b = GraphBuilder(seed=len(attrs) * 7 + len(c_shape))
    a_shape = [K, M] if attrs.get("transA") else [M, K]
    b_shape = [N, K] if attrs.get("transB") else [K, N]
    inputs = [b.input("a", a_shape), b.weight("B", b_shape)]
    shape = C_SHAPES[c_shape]
    if shape is not None:
        inputs.append(b.weight("C", shape))
    gemm = b.node("Gemm", inputs, name="gemm", **attrs)
    b.bn(gemm, N, name="bn", output="y")
    b.output("y", 2)
    model = b.build()
    folded = fold_and_check(model)
    assert op_types(folded) == ["Gemm"]
    node = node_named(folded, "gemm")
    got = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    assert got.get("beta", 1.0) == pytest.approx(1.0), "the folded bias already holds β·C"
    assert got.get("alpha", 1.0) == pytest.approx(attrs.get("alpha", 1.0))
    for key in ("transA", "transB"):
        assert got.get(key, 0) == attrs.get(key, 0)


# -- MatMul --------------------------------------------------------------------------------
def test_matmul_2d_bn_folds() -> None:
    b = GraphBuilder(seed=11)
    mm = b.node("MatMul", [b.input("x", ["N", 6]), b.weight("W", [6, 4])], name="mm")
    b.bn(mm, 4, name="bn", output="y")
    b.output("y", 2)
    model = b.build()
    folded = fold_and_check(model)
    assert op_types(folded) == ["MatMul", "Add"]
    assert entry(bnfold.fold(model).report, "bn").into == "mm"


@pytest.mark.parametrize("bias_first", [False, True])
def test_matmul_bias_add_bn_folds(bias_first: bool) -> None:
    """MatMul → Add(c) → BN (either Add operand order) becomes MatMul → Add."""
    b = GraphBuilder(seed=12)
    mm = b.node("MatMul", [b.input("x", ["N", 6]), b.weight("W", [6, 4])], name="mm")
    c = b.weight("c", [4])
    add = b.node("Add", [c, mm] if bias_first else [mm, c], name="add")
    b.bn(add, 4, name="bn", output="y")
    b.output("y", 2)
    model = b.build()
    folded = fold_and_check(model)
    assert op_types(folded) == ["MatMul", "Add"]


# -- constant bias Add (or other per-channel affine) between the layer and its BN ----------
def _layer(b: GraphBuilder, kind: str) -> tuple[str, int, int]:
    """A layer of ``kind`` with 6 output channels: (output, rank, channels)."""
    if kind == "Conv":
        x = b.input("x", ["N", 3, 6, 6])
        return b.node("Conv", [x, b.weight("w", [6, 3, 3, 3])], name="layer"), 4, 6
    if kind == "ConvBias":
        x = b.input("x", ["N", 3, 6, 6])
        ins = [x, b.weight("w", [6, 3, 3, 3]), b.weight("b", [6])]
        return b.node("Conv", ins, name="layer"), 4, 6
    if kind == "ConvTranspose":
        x = b.input("x", ["N", 4, 5, 5])
        w = b.weight("w", [4, 3, 3, 3])
        return b.node("ConvTranspose", [x, w], name="layer", group=2, strides=[2, 2]), 4, 6
    if kind == "Gemm":
        x = b.input("x", [2, 5])
        ins = [x, b.weight("B", [6, 5]), b.weight("C", [6])]
        return b.node("Gemm", ins, name="layer", transB=1, beta=0.5), 2, 6
    raise ValueError(kind)


@pytest.mark.parametrize("kind", ["Conv", "ConvBias", "ConvTranspose", "Gemm"])
def test_layer_bias_add_bn_folds(kind: str) -> None:
    """layer → Add(per-channel constant) → BN ends as the layer alone."""
    b = GraphBuilder(seed=21)
    y, rank, c = _layer(b, kind)
    bias = b.weight("add_c", [1, c] + [1] * (rank - 2))
    add = b.node("Add", [y, bias], name="add")
    b.bn(add, c, name="bn", output="out")
    b.output("out", rank)
    model = b.build()
    folded = fold_and_check(model)
    assert op_types(folded) == [model.graph.node[0].op_type]


AFFINE_CONSTS = [
    pytest.param("Add", False, id="x+c"),
    pytest.param("Add", True, id="c+x"),
    pytest.param("Sub", False, id="x-c"),
    pytest.param("Sub", True, id="c-x"),
    pytest.param("Mul", False, id="x*c"),
    pytest.param("Mul", True, id="c*x"),
    pytest.param("Div", False, id="x/c"),
]


@pytest.mark.parametrize(("op", "const_first"), AFFINE_CONSTS)
def test_channel_affine_then_bn_folds(op: str, const_first: bool) -> None:
    """Conv → (±×÷ per-channel constant) → BN: FoldChannelAffinePass then the BN fold."""
    b = GraphBuilder(seed=22)
    y, _, c = _layer(b, "ConvBias")
    values = b.rng.uniform(0.5, 2.0, (c, 1, 1)) * b.rng.choice([-1.0, 1.0], (c, 1, 1))
    const = b.const("k", values.astype(np.float32))  # away from 0: Div stays well-conditioned
    mid = b.node(op, [const, y] if const_first else [y, const], name="affine")
    b.bn(mid, c, name="bn", output="out")
    b.output("out", 4)
    model = b.build()
    folded = fold_and_check(model)
    assert op_types(folded) == ["Conv"]


def test_broadcast_add_along_width_is_not_folded() -> None:
    """A 1-D constant broadcasts over the *last* axis of a 4-D Conv output: not per-channel."""
    b = GraphBuilder(seed=23)
    x = b.input("x", ["N", 3, 6, 6])
    y = b.node("Conv", [x, b.weight("w", [6, 3, 1, 1])], name="conv")
    add = b.node("Add", [y, b.weight("c", [6])], name="add")  # 6 == width == channels
    b.bn(add, 6, name="bn", output="out")
    b.output("out", 4)
    model = b.build()
    result = bnfold.fold(model)
    # The width constant must never be merged into the Conv bias; the BN may still fold
    # exactly through the Add (each term scaled by s, the shift carried by one term).
    assert op_types(result.model) == ["Conv", "Add"]
    add_node = result.model.graph.node[1]
    consts = {t.name: t for t in result.model.graph.initializer}
    widths = [list(consts[i].dims) for i in add_node.input if i in consts]
    assert widths and all(d[-1] == 6 and len(d) >= 1 for d in widths)
    assert entry(result.report, "bn").status == "folded"
    assert_equivalent(model, result.model)


# -- fixpoint and dtypes -------------------------------------------------------------------
def test_conv_dropout_bn_ends_as_one_conv() -> None:
    b = GraphBuilder(seed=31)
    x = b.input("x", ["N", 3, 6, 6])
    y = b.node("Conv", [x, b.weight("w", [4, 3, 3, 3])], name="conv")
    d = b.node("Dropout", [y], name="drop", ratio=0.5)
    b.bn(d, 4, name="bn", output="out")
    b.output("out", 4)
    model = b.build(opset=11)
    result = bnfold.fold(model)
    assert op_types(result.model) == ["Conv"]
    assert entry(result.report, "drop").status == "removed"
    assert entry(result.report, "bn").status == "folded"
    assert_equivalent(model, result.model)


def test_chain_of_affines_reaches_fixpoint() -> None:
    """Conv → BN → Dropout → Mul → BN: everything folds into the one Conv."""
    b = GraphBuilder(seed=32)
    x = b.input("x", ["N", 3, 6, 6])
    y = b.node("Conv", [x, b.weight("w", [4, 3, 3, 3])], name="conv", pads=[1, 1, 1, 1])
    y = b.bn(y, 4, name="bn1")
    y = b.node("Dropout", [y], name="drop")
    y = b.node("Mul", [y, b.const("k", rand(b.rng, [1, 4, 1, 1]))], name="mul")
    b.bn(y, 4, name="bn2", output="out")
    b.output("out", 4)
    model = b.build()
    folded = fold_and_check(model)
    assert op_types(folded) == ["Conv"]


def test_fp16_model_folds() -> None:
    """Conv → BN and Gemm → BN in fp16 keep their dtype and stay equivalent (looser)."""
    b = GraphBuilder(seed=41, dtype=np.float16)
    x = b.input("x", ["N", 3, 6, 6])
    y = b.node("Conv", [x, b.weight("w", [4, 3, 3, 3]), b.weight("b", [4])], name="conv")
    y = b.bn(y, 4, name="bn1")
    y = b.node("Flatten", [y], name="flat")
    y = b.node("Gemm", [y, b.weight("B", [64, 5])], name="gemm")
    b.bn(y, 5, name="bn2", output="out")
    b.output("out", 2)
    model = b.build()
    folded = fold_and_check(model, tol=5e-3)
    assert op_types(folded) == ["Conv", "Flatten", "Gemm"]
    _assert_all_initializers(folded, np.float16)


def test_fp16_data_with_fp32_bn_params_folds() -> None:
    """Opset 15 lets BN keep float32 parameters on fp16 data; the fold writes fp16 weights."""
    b = GraphBuilder(seed=44, dtype=np.float16)
    x = b.input("x", ["N", 3, 5, 5])
    conv = b.node("Conv", [x, b.weight("w", [4, 3, 3, 3])], name="conv")
    b.bn(conv, 4, name="bn", output="y", params=make_bn_params(4, b.rng, np.float32))
    b.output("y", 4)
    model = b.build(opset=15)
    folded = fold_and_check(model, tol=5e-3)
    _assert_all_initializers(folded, np.float16)


def test_fp64_model_folds() -> None:
    """Gemm → BN in float64 (ORT's CPU Conv has no float64 kernel) folds near-exactly."""
    b = GraphBuilder(seed=42, dtype=np.float64)
    y = b.node("Gemm", [b.input("x", ["N", 5]), b.weight("B", [5, 3])], name="gemm")
    b.bn(y, 3, name="bn", output="out")
    b.output("out", 2)
    model = b.build()
    folded = fold_and_check(model, tol=1e-12)
    _assert_all_initializers(folded, np.float64)


def _assert_all_initializers(model: onnx.ModelProto, dtype: type) -> None:
    for t in model.graph.initializer:
        assert onnx.helper.tensor_dtype_to_np_dtype(t.data_type) == np.dtype(dtype), t.name


def test_regression_zero_gamma_channel_is_not_an_underflow() -> None:
    """γ = 0 (a pruned channel) zeroes that channel's weights exactly: not an underflow."""
    b = GraphBuilder(seed=43)
    x = b.input("x", ["N", 3, 5, 5])
    conv = b.node("Conv", [x, b.weight("w", [4, 3, 3, 3]), b.weight("b", [4])], name="conv")
    params = make_bn_params(4, b.rng)
    params["scale"][1] = 0.0
    b.bn(conv, 4, name="bn", params=params, output="y")
    b.output("y", 4)
    model = b.build()
    folded = fold_and_check(model)
    new_w = initializer_array(folded, node_named(folded, "conv").input[1])
    assert not np.any(new_w[1]) and np.all(new_w[0] != 0)
