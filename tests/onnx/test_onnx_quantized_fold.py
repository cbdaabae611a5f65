"""Folding BN in quantized (QDQ) models: exactly into weight scales, or by requantizing."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper as nh

import bnfold
from bnfold.cli.main import cli

pytest.importorskip("torch")
from support.quantized_models import export_small_cnn, quantize


def weight_only(
    *,
    per_channel: bool = True,
    negative: tuple[int, ...] = (0,),
    minimum_in: int | None = None,
    quantized_bn: bool = False,
    gemm: bool = False,
    seed: int = 0,
) -> onnx.ModelProto:
    """``DQ(W_q int8) → Conv (or Gemm) → BN`` with float activations (weight-only QDQ)."""
    rng = np.random.default_rng(seed)
    c = 6
    shape = (c, 5) if gemm else (c, 3, 3, 3)
    wq = rng.integers(-127, 128, shape).astype(np.int8)
    if minimum_in is not None:
        wq[(minimum_in,) + (0,) * (len(shape) - 1)] = -128
    scale = (rng.random(c) * 0.02 + 0.01).astype(np.float32) if per_channel else np.float32(0.015)
    zp = np.zeros(c if per_channel else (), np.int8)
    gamma = rng.random(c) + 0.5
    gamma[list(negative)] *= -1
    inits = [
        nh.from_array(wq, "wq"),
        nh.from_array(np.asarray(scale), "ws"),
        nh.from_array(zp, "wz"),
        nh.from_array(rng.normal(size=c).astype(np.float32), "b"),
        nh.from_array((rng.random(c) + 0.5).astype(np.float32), "var"),
        nh.from_array(rng.normal(size=c).astype(np.float32), "mean"),
    ]
    nodes = [h.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["w"], axis=0)]
    if quantized_bn:  # as quantize_static writes it: γ int8 per tensor, β int32
        g_scale = np.abs(gamma).max() / 127
        inits += [
            nh.from_array(np.round(gamma / g_scale).astype(np.int8), "gq"),
            nh.from_array(np.float32(g_scale), "gs"),
            nh.from_array(np.int8(0), "gz"),
            nh.from_array(np.round(rng.normal(size=c) / 1e-3).astype(np.int32), "bq"),
            nh.from_array(np.array([1e-3], np.float32), "bs"),
            nh.from_array(np.int32(0), "bz"),
        ]
        nodes += [
            h.make_node("DequantizeLinear", ["gq", "gs", "gz"], ["gamma"]),
            h.make_node("DequantizeLinear", ["bq", "bs", "bz"], ["beta"]),
        ]
    else:
        inits += [
            nh.from_array(gamma.astype(np.float32), "gamma"),
            nh.from_array(rng.normal(size=c).astype(np.float32), "beta"),
        ]
    if gemm:
        nodes.append(h.make_node("Gemm", ["x", "w", "b"], ["y0"], name="fc", transB=1))
        x_shape, y_shape = [2, 5], [2, c]
    else:
        nodes.append(h.make_node("Conv", ["x", "w", "b"], ["y0"], name="conv", pads=[1] * 4))
        x_shape, y_shape = [1, 3, 8, 8], [1, c, 8, 8]
    nodes.append(
        h.make_node("BatchNormalization", ["y0", "gamma", "beta", "mean", "var"], ["y"], name="bn")
    )
    graph = h.make_graph(
        nodes,
        "g",
        [h.make_tensor_value_info("x", T.FLOAT, x_shape)],
        [h.make_tensor_value_info("y", T.FLOAT, y_shape)],
        initializer=inits,
    )
    return h.make_model(graph, opset_imports=[h.make_opsetid("", 19)])


def _weights(model: onnx.ModelProto) -> tuple[np.ndarray, np.ndarray]:
    dq = next(n for n in model.graph.node if n.op_type == "DequantizeLinear" and n.output[0] == "w")
    inits = {t.name: nh.to_array(t) for t in model.graph.initializer}
    return inits[dq.input[0]], inits[dq.input[1]]


@pytest.mark.parametrize("per_channel", [True, False])
@pytest.mark.parametrize("gemm", [False, True])
def test_weight_only_qdq_folds_exactly_into_the_scales(per_channel: bool, gemm: bool) -> None:
    model = weight_only(per_channel=per_channel, gemm=gemm)
    result = bnfold.fold(model)
    assert result.report.counts()["batchnorm"]["folded"] == 1
    folded = result.model
    onnx.checker.check_model(folded, full_check=True)
    assert Counter(n.op_type for n in folded.graph.node)["BatchNormalization"] == 0
    q_before, _ = _weights(model)
    q_after, scale_after = _weights(folded)
    assert q_after.dtype == np.int8 and scale_after.shape == (6,)  # per tensor → per channel
    axis = 0
    others = [c for c in range(6) if c != 0]
    assert np.array_equal(np.take(q_after, others, axis), np.take(q_before, others, axis))
    assert np.array_equal(np.take(q_after, [0], axis), -np.take(q_before, [0], axis))  # γ < 0
    assert bnfold.verify(model, folded)


def test_negative_scale_on_a_minimum_weight_is_refused() -> None:
    model = weight_only(negative=(2,), minimum_in=2)
    result = bnfold.fold(model)
    (entry,) = result.report.left
    assert "channel(s) [2]" in entry.reason and "int8 range" in entry.reason
    assert Counter(n.op_type for n in result.model.graph.node)["BatchNormalization"] == 1


def test_minimum_weight_in_a_positive_channel_still_folds() -> None:
    model = weight_only(negative=(0,), minimum_in=3)
    result = bnfold.fold(model)
    assert result.report.counts()["batchnorm"]["folded"] == 1
    assert bnfold.verify(model, result.model)


def test_bn_parameters_behind_dequantize_are_read_through_it() -> None:
    model = weight_only(quantized_bn=True)
    result = bnfold.fold(model)
    assert result.report.counts()["batchnorm"]["folded"] == 1
    folded = result.model
    assert Counter(n.op_type for n in folded.graph.node)["DequantizeLinear"] == 1  # γ, β gone
    assert bnfold.verify(model, folded)


@pytest.fixture(scope="module")
def quantized(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("qdq_fold")
    src = export_small_cnn(folder / "cnn.onnx")
    return {
        "per_channel": quantize(src, folder / "pc.onnx", True),
        "per_tensor": quantize(src, folder / "pt.onnx", False),
    }


def _steps(reference: Path, candidate: onnx.ModelProto) -> float:
    """Largest output difference in steps of the output's quantization scale (ORT_DISABLE_ALL)."""
    model = onnx.load(reference)
    out_dq = next(n for n in model.graph.node if n.output[0] == model.graph.output[0].name)
    scale = float(
        nh.to_array(next(t for t in model.graph.initializer if t.name == out_dq.input[1]))
    )
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    ref = ort.InferenceSession(str(reference), options, providers=["CPUExecutionProvider"])
    cand = ort.InferenceSession(
        candidate.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    rng = np.random.default_rng(1)
    worst = 0.0
    for _ in range(4):
        x = {"x": rng.standard_normal((1, 3, 8, 8)).astype(np.float32)}
        worst = max(worst, float(np.abs(ref.run(None, x)[0] - cand.run(None, x)[0]).max()))
    return worst / scale


@pytest.mark.parametrize("kind", ["per_channel", "per_tensor"])
def test_requantize_folds_onnxruntime_qdq_pattern_within_3_steps(
    quantized: dict[str, Path], kind: str
) -> None:
    src = quantized[kind]
    plain = bnfold.fold(src)
    assert plain.report.counts()["batchnorm"]["folded"] == 0
    assert all("or use --requantize" in (e.reason or "") for e in plain.report.left)
    result = bnfold.fold(src, requantize=True)
    assert result.report.counts()["batchnorm"] == {
        "found": 2, "folded": 2, "rewritten": 0, "left": 0, "kept": 0,
    }  # fmt: skip
    before = Counter(n.op_type for n in onnx.load(src).graph.node)
    after = Counter(n.op_type for n in result.model.graph.node)
    assert after["QuantizeLinear"] == before["QuantizeLinear"] - 2  # one inner pair per BN
    assert _steps(src, result.model) <= 3


def test_regression_cli_requantize_and_quantize_bias_flags_did_nothing(
    quantized: dict[str, Path], tmp_path: Path
) -> None:
    """The fold command parsed --requantize/--quantize-bias but never passed them on."""
    out = tmp_path / "rq_bias.onnx"
    args = [str(quantized["per_channel"]), "-o", str(out), "--requantize", "--quantize-bias"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    model = onnx.load(out)
    assert Counter(n.op_type for n in model.graph.node)["BatchNormalization"] == 0
    int32 = [t for t in model.graph.initializer if t.data_type == T.INT32]
    assert len(int32) >= 2  # the folded biases, re-quantized


def test_quantize_bias_requantizes_to_int32_and_says_so(quantized: dict[str, Path]) -> None:
    result = bnfold.fold(quantized["per_channel"], requantize=True, quantize_bias=True)
    assert result.report.counts()["batchnorm"]["folded"] == 2
    assert any("not bit-exact" in w for w in result.report.warnings)
    model = result.model
    inits = {t.name: t for t in model.graph.initializer}
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    producers = {o: n for n in model.graph.node for o in n.output}
    for conv in convs:
        dq = producers[conv.input[2]]
        assert dq.op_type == "DequantizeLinear"
        assert inits[dq.input[0]].data_type == T.INT32
    assert _steps(quantized["per_channel"], model) <= 3


def test_requantize_cli_verifies_the_fold_and_bounds_the_drift(
    quantized: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "rq.onnx"
    args = [str(quantized["per_channel"]), "-o", str(out), "--requantize", "--json"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert out.exists()
    assert Counter(n.op_type for n in onnx.load(out).graph.node)["BatchNormalization"] == 0
    assert "output steps from the quantized original" in result.output
    plain = CliRunner().invoke(cli, ["check", str(quantized["per_channel"]), "--json"])
    assert "--requantize" in plain.output
    line = CliRunner().invoke(cli, ["check", str(quantized["per_channel"])]).output.strip()
    assert "\n" not in line and "fold before quantizing, or use --requantize" in line
