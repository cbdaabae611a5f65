"""Quantized (QDQ) models: folding must leave the quantization exactly as it was.

A real QDQ model is built here: a small torch CNN (Conv→BN→ReLU blocks, random BN
statistics) exported by the dynamo exporter with ``optimize=False`` and quantized by
``onnxruntime.quantization.quantize_static`` (QDQ format, per-tensor and per-channel).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
quantization = pytest.importorskip("onnxruntime.quantization")
import numpy as np  # noqa: E402
import onnx  # noqa: E402
import onnx_ir as ir  # noqa: E402
from click.testing import CliRunner  # noqa: E402
from onnx import numpy_helper  # noqa: E402
from support.graphs import GraphBuilder  # noqa: E402
from support.onnx_checks import assert_equivalent, assert_left, op_count  # noqa: E402
from support.quantized_models import export_small_cnn, quantize  # noqa: E402

import bnfold  # noqa: E402
from bnfold.cli.main import cli  # noqa: E402
from bnfold.onnx.context import FoldContext  # noqa: E402
from bnfold.onnx.passes.fold_constants import FoldConstantsPass  # noqa: E402

_QUANTIZED = {onnx.TensorProto.INT8, onnx.TensorProto.UINT8}
_QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")


@pytest.fixture(scope="module")
def float_export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_small_cnn(tmp_path_factory.mktemp("qdq") / "cnn.onnx")


def _quantized_initializers(model: onnx.ModelProto) -> dict[str, bytes]:
    return {
        t.name: numpy_helper.to_array(t).tobytes()
        for t in model.graph.initializer
        if t.data_type in _QUANTIZED
    }


def _counts(model: onnx.ModelProto) -> Counter[str]:
    return Counter(n.op_type for n in model.graph.node if n.op_type in _QDQ_OPS)


def _assert_quantization_kept(src: Path, out: Path) -> None:
    before, after = onnx.load(src), onnx.load(out)
    assert _counts(after) == _counts(before)
    assert _counts(before)["DequantizeLinear"] > 0
    kept = _quantized_initializers(before)
    assert len(kept) >= 2 and _quantized_initializers(after) == kept  # still int8, same bytes
    assert out.stat().st_size <= 1.01 * src.stat().st_size  # the 12 → 47 MB bug


@pytest.mark.parametrize("per_channel", [False, True])
def test_regression_qdq_weights_are_not_constant_folded(
    float_export: Path, tmp_path: Path, per_channel: bool
) -> None:
    src = quantize(float_export, tmp_path / "q.onnx", per_channel)
    result = bnfold.fold(src)
    out = result.save(tmp_path / "folded.onnx")
    _assert_quantization_kept(src, out)
    assert_equivalent(src, out, tol=1e-5)
    for e in result.report.entries:
        if e.is_bn:
            assert e.status == "left" and "fold before quantizing" in (e.reason or "")


def test_regression_qdq_model_through_the_cli(float_export: Path, tmp_path: Path) -> None:
    """``bnfold MODEL -o OUT`` folds, verifies in onnxruntime and keeps every int8 weight."""
    src = quantize(float_export, tmp_path / "q.onnx", per_channel=True)
    out = tmp_path / "out.onnx"
    result = CliRunner().invoke(cli, [str(src), "-o", str(out)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    _assert_quantization_kept(src, out)


def test_regression_bn_after_dequantize_names_the_quantization(
    float_export: Path, tmp_path: Path
) -> None:
    """Only Conv quantized: BN keeps float parameters and reads a DequantizeLinear."""
    src = quantize(float_export, tmp_path / "q.onnx", False, op_types_to_quantize=["Conv"])
    result = bnfold.fold(src)
    bns = [e for e in result.report.entries if e.is_bn]
    assert len(bns) == 2
    for e in bns:
        assert_left(result.report, e.name, "quantized between the layer and the BN")
    out = result.save(tmp_path / "folded.onnx")
    _assert_quantization_kept(src, out)


# -- hand-written dequantization and what still folds ---------------------------------------
def _run_fold_constants(model: onnx.ModelProto) -> onnx.ModelProto:
    ir_model = ir.serde.deserialize_model(model)
    FoldConstantsPass(FoldContext(ir_model))(ir_model)
    return ir.serde.serialize_model(ir_model)


def _dequantize_by_hand(ms_domain: bool = False) -> onnx.ModelProto:
    """Conv(x, Mul(Cast(W_int8), scale)) beside a DequantizeLinear'd Conv weight."""
    b = GraphBuilder(seed=3)
    x = b.input("x", ["N", 4, 5, 5])
    w_q = b.const("w_q", b.rng.integers(-128, 127, (4, 4, 3, 3)).astype(np.int8))
    scale = b.const("scale", np.float32(0.02))
    zp = b.const("zp", np.int8(0))
    cast = b.node("Cast", [w_q], name="cast", to=onnx.TensorProto.FLOAT)
    w1 = b.node("Mul", [cast, scale], name="mul")
    y = b.node("Conv", [x, w1], name="conv1", pads=[1, 1, 1, 1])
    domain = "com.microsoft" if ms_domain else ""
    w2 = b.node("DequantizeLinear", [w_q, scale, zp], name="dq", domain=domain)
    b.node("Conv", [y, w2], name="conv2", pads=[1, 1, 1, 1], outputs=["y"])
    b.output("y", 4)
    model = b.build(check=not ms_domain)
    if ms_domain:
        model.opset_import.append(onnx.helper.make_opsetid("com.microsoft", 1))
    return model


def test_regression_hand_written_dequantize_is_not_folded() -> None:
    model = _dequantize_by_hand()
    folded = _run_fold_constants(model)
    assert [n.op_type for n in folded.graph.node] == [n.op_type for n in model.graph.node]
    assert _quantized_initializers(folded) == _quantized_initializers(model)


def test_layout_ops_and_small_tensors_of_quantized_dtype_still_fold() -> None:
    """Transpose keeps int8 (no dequantization); a 4-element Cast is a parameter, not a weight."""
    b = GraphBuilder(seed=4)
    x = b.input("x", ["N", 4, 5, 5])
    w_q = b.const("w_q", b.rng.integers(-128, 127, (4, 4, 3, 3)).astype(np.int8))
    w_t = b.node("Transpose", [w_q], name="t", perm=[1, 0, 2, 3])
    zp = b.const("zp", np.arange(4, dtype=np.int8))
    zp_f = b.node("Cast", [zp], name="zp_cast", to=onnx.TensorProto.FLOAT)
    w = b.node("DequantizeLinear", [w_t, b.const("s", np.float32(0.1))], name="dq")
    y = b.node("Conv", [x, w], name="conv", pads=[1, 1, 1, 1])
    b.node("Add", [y, b.node("Reshape", [zp_f, b.const("shp", np.array([1, 4, 1, 1]))])],
           name="add", outputs=["y"])  # fmt: skip
    b.output("y", 4)
    model = b.build()
    folded = _run_fold_constants(model)
    types = [n.op_type for n in folded.graph.node]
    assert "Transpose" not in types and "Cast" not in types and "Reshape" not in types
    assert types.count("DequantizeLinear") == 1
    assert_equivalent(model, folded, tol=1e-6)
    dq_input = next(n for n in folded.graph.node if n.op_type == "DequantizeLinear").input[0]
    assert {t.name: t.data_type for t in folded.graph.initializer}[dq_input] == (
        onnx.TensorProto.INT8
    )


def test_com_microsoft_dequantize_is_not_folded() -> None:
    model = _dequantize_by_hand(ms_domain=True)
    folded = _run_fold_constants(model)
    assert op_count(folded, "DequantizeLinear") == 1
