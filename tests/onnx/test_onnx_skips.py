"""Every reason a BatchNorm is left alone: reported with its reason, graph untouched."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from support.graphs import GraphBuilder, make_bn_params
from support.onnx_checks import (
    assert_equivalent,
    assert_hygiene,
    assert_left,
    assert_unchanged,
    entry,
    initializer_array,
    op_types,
)

import bnfold


def conv_bn(
    b: GraphBuilder,
    params: dict[str, np.ndarray] | None = None,
    weight: np.ndarray | None = None,
    bias: np.ndarray | None = None,
    **bn_attrs: object,
) -> onnx.ModelProto:
    """x → Conv(w[, b]) → BN → y, with optional hand-set BN params or weights."""
    x = b.input("x", ["N", 3, 5, 5])
    w = b.const("w", weight) if weight is not None else b.weight("w", [4, 3, 3, 3])
    inputs = [x, w] + ([b.const("b", bias)] if bias is not None else [])
    conv = b.node("Conv", inputs, name="conv")
    b.bn(conv, 4, name="bn", params=params, output="y", **bn_attrs)
    b.output("y", 4)
    return b.build()


def fold_left(model: onnx.ModelProto, *fragments: str, **options: object) -> None:
    """Fold; the BN named 'bn' is left with a reason holding ``fragments``; graph unchanged."""
    result = bnfold.fold(model, **options)
    assert_left(result.report, "bn", *fragments)
    assert result.report.counts()["batchnorm"]["folded"] == 0
    assert_unchanged(model, result.model)


# -- training mode -------------------------------------------------------------------------
def test_training_mode_bn_is_left() -> None:
    model = conv_bn(GraphBuilder(seed=1), training_mode=1, extra_outputs=["rm", "rv"])
    fold_left(model, "training mode", "--assume-eval")


def test_training_mode_bn_folds_with_assume_eval() -> None:
    model = conv_bn(GraphBuilder(seed=1), training_mode=1, extra_outputs=["rm", "rv"])
    result = bnfold.fold(model, assume_eval=True)
    assert op_types(result.model) == ["Conv"]
    assert entry(result.report, "bn").status == "folded"
    assert any("assume-eval" in w for w in result.report.warnings)
    # the fold follows the running statistics: compare with the same BN in inference mode
    eval_model = onnx.ModelProto.FromString(model.SerializeToString())
    bn = eval_model.graph.node[1]
    del bn.attribute[:]
    del bn.output[1:]
    assert_equivalent(eval_model, result.model)


def test_bn_with_used_running_stat_outputs_is_left() -> None:
    """Opset-12 training BN (no training_mode attribute): its running mean is a graph output."""
    b = GraphBuilder(seed=2)
    x = b.input("x", ["N", 3, 5, 5])
    conv = b.node("Conv", [x, b.weight("w", [4, 3, 3, 3])], name="conv")
    extra = ["run_mean", "run_var", "saved_mean", "saved_var"]
    b.bn(conv, 4, name="bn", output="y", extra_outputs=extra)
    b.output("y", 4)
    b.output("run_mean", 1)
    model = b.build(opset=12)
    fold_left(model, "running-statistics outputs are used")


# -- non-constant or overridable parameters ------------------------------------------------
@pytest.mark.parametrize("which", ["scale", "bias", "mean", "var"])
def test_bn_param_from_graph_input_is_left(which: str) -> None:
    b = GraphBuilder(seed=3)
    x = b.input("x", ["N", 3, 5, 5])
    conv = b.node("Conv", [x, b.weight("w", [4, 3, 3, 3])], name="conv")
    p = make_bn_params(4, b.rng)
    names = [
        b.input(f"bn.{k}", [4]) if k == which else b.const(f"bn.{k}", p[k])
        for k in ("scale", "bias", "mean", "var")
    ]
    b.node("BatchNormalization", [conv, *names], name="bn", outputs=["y"])
    b.output("y", 4)
    model = b.build()
    fold_left(model, f"BN {which} 'bn.{which}' is a graph input")


def test_bn_param_computed_at_run_time_is_left() -> None:
    b = GraphBuilder(seed=4)
    x = b.input("x", ["N", 3, 5, 5])
    conv = b.node("Conv", [x, b.weight("w", [4, 3, 3, 3])], name="conv")
    p = make_bn_params(4, b.rng)
    gamma = b.node("Abs", [b.input("g", [4])], name="abs", outputs=["gamma"])
    names = [gamma] + [b.const(f"bn.{k}", p[k]) for k in ("bias", "mean", "var")]
    b.node("BatchNormalization", [conv, *names], name="bn", outputs=["y"])
    b.output("y", 4)
    model = b.build()
    fold_left(model, "computed at run time", "Abs")


def _make_overridable(model: onnx.ModelProto, name: str) -> onnx.ModelProto:
    """List initializer ``name`` as a graph input too (overridable at run time)."""
    init = next(t for t in model.graph.initializer if t.name == name)
    model.graph.input.append(
        onnx.helper.make_tensor_value_info(name, init.data_type, list(init.dims))
    )
    onnx.checker.check_model(model, full_check=True)
    return model


@pytest.mark.parametrize(
    ("name", "fragment"), [("bn.scale", "BN scale"), ("bn.var", "BN var"), ("w", "Conv weight")]
)
def test_overridable_params_are_left_by_default(name: str, fragment: str) -> None:
    model = _make_overridable(conv_bn(GraphBuilder(seed=5)), name)
    fold_left(model, fragment, "overridable", "allow_graph_input_params")


def test_overridable_params_fold_when_allowed() -> None:
    model = conv_bn(GraphBuilder(seed=5))
    for name in ("bn.scale", "bn.bias", "bn.mean", "bn.var", "w"):
        _make_overridable(model, name)
    result = bnfold.fold(model, allow_graph_input_params=True)
    assert op_types(result.model) == ["Conv"]
    assert entry(result.report, "bn").status == "folded"
    assert_hygiene(model, result.model)  # the overridable inputs are still declared
    assert_equivalent(model, result.model)


def test_conv_weight_from_graph_input_is_left() -> None:
    b = GraphBuilder(seed=6)
    x = b.input("x", ["N", 3, 5, 5])
    conv = b.node("Conv", [x, b.input("w", [4, 3, 3, 3])], name="conv")
    b.bn(conv, 4, name="bn", output="y")
    b.output("y", 4)
    fold_left(b.build(), "Conv weight 'w' is a graph input")


def test_conv_bias_computed_at_run_time_is_left() -> None:
    b = GraphBuilder(seed=6)
    x = b.input("x", ["N", 3, 5, 5])
    bias = b.node("Relu", [b.input("braw", [4])], name="relu", outputs=["bias"])
    conv = b.node("Conv", [x, b.weight("w", [4, 3, 3, 3]), bias], name="conv")
    b.bn(conv, 4, name="bn", output="y")
    b.output("y", 4)
    fold_left(b.build(), "Conv bias 'bias' is computed at run time")


# -- the producer's output is needed elsewhere ---------------------------------------------
def test_producer_output_with_other_consumers_is_left() -> None:
    b = GraphBuilder(seed=7)
    x = b.input("x", ["N", 3, 5, 5])
    conv = b.node("Conv", [x, b.weight("w", [4, 3, 3, 3])], name="conv")
    b.bn(conv, 4, name="bn", output="y")
    b.node("Relu", [conv], name="relu", outputs=["z"])
    b.output("y", 4)
    b.output("z", 4)
    fold_left(b.build(), "2 consumers", "Relu")


def test_producer_output_that_is_a_graph_output_is_left() -> None:
    b = GraphBuilder(seed=8)
    x = b.input("x", ["N", 3, 5, 5])
    b.node("Conv", [x, b.weight("w", [4, 3, 3, 3])], name="conv", outputs=["c"])
    b.bn("c", 4, name="bn", output="y")
    b.output("y", 4)
    b.output("c", 4)
    fold_left(b.build(), "graph output")


def test_bias_add_with_other_consumers_is_left() -> None:
    """Conv → Add → BN, where the Add's input also feeds a Relu: neither can be folded."""
    b = GraphBuilder(seed=9)
    x = b.input("x", ["N", 3, 5, 5])
    conv = b.node("Conv", [x, b.weight("w", [4, 3, 3, 3])], name="conv")
    add = b.node("Add", [conv, b.weight("c", [1, 4, 1, 1])], name="add")
    b.bn(add, 4, name="bn", output="y")
    b.node("Relu", [conv], name="relu", outputs=["z"])
    b.output("y", 4)
    b.output("z", 4)
    fold_left(b.build(), "Add", "not a linear layer")


def test_bn_on_graph_input_is_left() -> None:
    b = GraphBuilder(seed=10)
    b.bn(b.input("x", ["N", 4, 5, 5]), 4, name="bn", output="y")
    b.output("y", 4)
    fold_left(b.build(), "graph input", "to fold into")


def test_bn_after_nonlinear_producer_is_left() -> None:
    b = GraphBuilder(seed=11)
    r = b.node("Relu", [b.input("x", ["N", 4, 5, 5])], name="relu")
    b.bn(r, 4, name="bn", output="y")
    b.output("y", 4)
    fold_left(b.build(), "Relu", "not a linear layer")


# -- MatMul whose feature axis is not BN's channel axis ------------------------------------
@pytest.mark.parametrize("tokens", [5, 4], ids=["T!=C", "T==C"])
def test_matmul_on_3d_input_is_left(tokens: int) -> None:
    """[N, T, K] @ [K, C] → BN over axis 1 (T channels): never the feature axis, even if T == C."""
    b = GraphBuilder(seed=12)
    mm = b.node("MatMul", [b.input("x", ["N", tokens, 6]), b.weight("W", [6, 4])], name="mm")
    b.bn(mm, tokens, name="bn", output="y")
    b.output("y", 3)
    fold_left(b.build(), "per-channel axis (1) is not the feature axis (2)")


def test_matmul_with_runtime_rhs_is_left() -> None:
    b = GraphBuilder(seed=13)
    mm = b.node("MatMul", [b.input("x", ["N", 6]), b.input("W", [6, 4])], name="mm")
    b.bn(mm, 4, name="bn", output="y")
    b.output("y", 2)
    fold_left(b.build(), "right-hand side 'W' is a graph input")


# -- bad numbers ---------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("which", ["scale", "bias", "mean", "var"])
def test_non_finite_bn_params_are_left(which: str, bad: float) -> None:
    b = GraphBuilder(seed=14)
    p = make_bn_params(4, b.rng)
    p[which][2] = bad
    fold_left(conv_bn(b, params=p), f"BN {which} contains NaN or Inf")


@pytest.mark.parametrize("which", ["weight", "bias"])
def test_non_finite_conv_weights_are_left(which: str) -> None:
    b = GraphBuilder(seed=15)
    w = b.rng.normal(size=(4, 3, 3, 3)).astype(np.float32)
    bias = b.rng.normal(size=4).astype(np.float32)
    (w if which == "weight" else bias).flat[1] = np.nan
    fold_left(conv_bn(b, weight=w, bias=bias), f"Conv {which} contains NaN or Inf")


@pytest.mark.parametrize(
    "var", [-1.0, float(-np.float32(1e-5))], ids=["negative", "exactly-minus-eps"]
)
def test_variance_plus_eps_not_positive_is_left(var: float) -> None:
    b = GraphBuilder(seed=16)
    p = make_bn_params(4, b.rng)
    p["var"][3] = var
    fold_left(conv_bn(b, params=p, epsilon=1e-5), "variance + epsilon ≤ 0")


# -- fp16 range ----------------------------------------------------------------------------
def _fp16_conv_bn(gamma: float, var: float, w_scale: float) -> onnx.ModelProto:
    b = GraphBuilder(seed=17, dtype=np.float16)
    p = make_bn_params(4, b.rng, np.float16)
    p["scale"][1] = gamma
    p["var"][1] = var
    w = (b.rng.uniform(0.5, 1.0, (4, 3, 3, 3)) * w_scale).astype(np.float16)
    return conv_bn(b, params=p, weight=w, epsilon=1e-5)


def test_fp16_overflow_after_folding_is_left() -> None:
    """|w'| = |w|·γ/√(σ²+ε) > 65504 for channel 1."""
    model = _fp16_conv_bn(gamma=60000.0, var=0.01, w_scale=10.0)
    fold_left(model, "exceed the float16 range")


def test_fp16_underflow_after_folding_is_left() -> None:
    """w' ≈ 0.01·6e-5/255 ≈ 2e-9: below fp16's smallest subnormal, channel 1 would vanish.

    All of channel 1's weights flush: far more than that channel's own fp16 rounding
    (u = 2⁻¹¹ of its L1 norm), so the fold is refused, naming the channel.
    """
    model = _fp16_conv_bn(gamma=6e-5, var=65000.0, w_scale=0.01)
    fold_left(model, "output channel 1", "underflow to zero in float16")


def _conv_bn_with_tiny_weights(
    dtype: type, gamma: float, tiny: float, seed: int
) -> onnx.ModelProto:
    """Conv→BN whose weights ``w[:, :, 0, 0]`` are ``tiny``; every |γ| is ``gamma``."""
    b = GraphBuilder(seed=seed, dtype=dtype)
    p = make_bn_params(4, b.rng, dtype)
    p["scale"] = (np.sign(p["scale"]) * gamma).astype(dtype)
    w = b.rng.uniform(0.5, 1.0, (4, 3, 3, 3))
    w[:, :, 0, 0] = tiny
    return conv_bn(b, params=p, weight=w.astype(dtype), bias=b.rng.normal(0, 1, 4).astype(dtype))


def test_regression_float32_underflow_does_not_block_fold() -> None:
    """1e-39 (a float32 subnormal) · s ≈ 1e-46 flushes to zero: never a reason in float32.

    The flush changes the output by less than the unfolded BN's own rounding (PP-OCRv3's
    text detector kept 4 BN that every other tool folds, output equivalent).
    """
    model = _conv_bn_with_tiny_weights(np.float32, gamma=1e-7, tiny=1e-39, seed=21)
    w_s = initializer_array(model, "w").astype(np.float64)
    assert np.all(w_s[:, :, 0, 0] != 0)
    result = bnfold.fold(model)
    assert result.report.counts()["batchnorm"]["folded"] == 1, result.report.describe()
    folded = result.model
    conv = next(n for n in folded.graph.node if n.op_type == "Conv")
    new_w = initializer_array(folded, conv.input[1])
    assert np.all(new_w[:, :, 0, 0] == 0) and np.all(new_w[:, :, 1:, :] != 0)  # flushed
    assert_hygiene(model, folded)
    assert_equivalent(model, folded, tol=1e-5)


def test_regression_fp16_negligible_underflow_does_not_block_fold() -> None:
    """1e-5 · s ≈ 1e-8 flushes in fp16, but 12 such weights are ~1e-8 of each channel's L1
    of ~0.02: far below the channel's rounding (2⁻¹¹ of it), so the BN folds."""
    model = _conv_bn_with_tiny_weights(np.float16, gamma=1e-3, tiny=1e-5, seed=22)
    result = bnfold.fold(model)
    assert result.report.counts()["batchnorm"]["folded"] == 1, result.report.describe()
    folded = result.model
    conv = next(n for n in folded.graph.node if n.op_type == "Conv")
    new_w = initializer_array(folded, conv.input[1])
    assert new_w.dtype == np.float16 and np.all(new_w[:, :, 0, 0] == 0)
    assert_hygiene(model, folded)
    assert_equivalent(model, folded, tol=1e-2)  # fp16 rounding on both sides


def test_each_bn_judged_on_its_own() -> None:
    """One bad BN does not stop a good one elsewhere in the model from folding."""
    b = GraphBuilder(seed=18)
    x = b.input("x", ["N", 3, 5, 5])
    c1 = b.node("Conv", [x, b.weight("w1", [4, 3, 3, 3])], name="conv1")
    bad = make_bn_params(4, b.rng)
    bad["var"][0] = -2.0
    y1 = b.bn(c1, 4, name="bad_bn", params=bad, output="y1")
    c2 = b.node("Conv", [x, b.weight("w2", [4, 3, 3, 3])], name="conv2")
    b.bn(c2, 4, name="good_bn", output="y2")
    b.output(y1, 4)
    b.output("y2", 4)
    model = b.build()
    result = bnfold.fold(model)
    assert_left(result.report, "bad_bn", "variance")
    assert entry(result.report, "good_bn").status == "folded"
    assert op_types(result.model) == ["Conv", "BatchNormalization", "Conv"]
    assert_hygiene(model, result.model)


def test_gemm_bias_from_graph_input_is_left() -> None:
    b = GraphBuilder(seed=19)
    ins = [b.input("x", ["N", 5]), b.weight("B", [5, 4]), b.input("C", [4])]
    gemm = b.node("Gemm", ins, name="gemm")
    b.bn(gemm, 4, name="bn", output="y")
    b.output("y", 2)
    fold_left(b.build(), "Gemm C 'C' is a graph input")


def test_per_activation_bn_before_opset_9_is_left() -> None:
    """spatial=0 (opset 7/8) normalises each activation, not each channel."""
    b = GraphBuilder(seed=20)
    x = b.input("x", ["N", 3, 5, 5])
    conv = b.node("Conv", [x, b.weight("w", [4, 3, 3, 3])], name="conv")
    b.bn(conv, 4, name="bn", output="y", spatial=0)
    b.output("y", 4)
    fold_left(b.build(opset=8, check=False), "spatial=0")
