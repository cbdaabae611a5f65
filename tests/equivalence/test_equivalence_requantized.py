"""--requantize verification: the fold checked exactly against the original with the same
inner Q/DQ pairs bypassed, and the drift bounded by the model's own quantization noise."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper as nh

pytest.importorskip("torch")

from support.quantized_models import export_small_cnn, quantize

import bnfold
from bnfold.equivalence.requantized import bypassed, jittered, verify_requantized


@pytest.fixture(scope="module")
def quantized(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("requantized")
    return quantize(export_small_cnn(folder / "cnn.onnx"), folder / "pc.onnx", True)


def test_requantize_records_each_dropped_pair(quantized: Path) -> None:
    result = bnfold.fold(quantized, requantize=True)
    pairs = result.report.dropped_roundings
    assert len(pairs) == 2
    model = onnx.load(quantized)
    producers = {o: n for n in model.graph.node for o in n.output}
    for dq_output, source in pairs:
        dq = producers[dq_output]
        q = producers[dq.input[0]]
        assert (dq.op_type, q.op_type, q.input[0]) == ("DequantizeLinear", "QuantizeLinear", source)


def test_bypassed_reads_the_layer_output_and_jittered_moves_only_those_scales(
    quantized: Path,
) -> None:
    model = onnx.load(quantized)
    pairs = bnfold.fold(quantized, requantize=True).report.dropped_roundings
    rewired = bypassed(model, pairs)
    bns = [n for n in rewired.graph.node if n.op_type == "BatchNormalization"]
    assert sorted(bn.input[0] for bn in bns) == sorted(source for _, source in pairs)
    moved = jittered(model, pairs, 1.001)
    before = {t.name: nh.to_array(t) for t in model.graph.initializer}
    after = {t.name: nh.to_array(t) for t in moved.graph.initializer}
    new = sorted(set(after) - set(before))
    assert len(new) == 2
    for name in new:
        base = before[name.removesuffix("_bnfold_jitter")]
        np.testing.assert_allclose(after[name], base * 1.001, rtol=1e-6)


def test_a_correct_requantizing_fold_passes_and_reports_its_drift(quantized: Path) -> None:
    result = bnfold.fold(quantized, requantize=True)
    verdict = verify_requantized(quantized, result.model, result.report.dropped_roundings)
    assert verdict, verdict.describe()
    text = "\n".join(verdict.warnings)
    assert "output steps from the quantized original" in text
    assert "own quantization noise" in text
    assert "the fold itself: equivalent" in text


def test_regression_requantize_was_judged_only_in_output_steps(quantized: Path) -> None:
    """A bias shift of a tenth of an output step hid inside the 3-step bound; the exact check
    against the bypassed original catches it."""
    result = bnfold.fold(quantized, requantize=True)
    model = result.model
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    inits = {t.name: t for t in model.graph.initializer}
    bias = next(inits[c.input[2]] for c in convs if len(c.input) > 2 and c.input[2] in inits)
    values = nh.to_array(bias).copy()
    values[0] += 0.02 * max(1.0, float(np.abs(values).max()))
    bias.CopyFrom(nh.from_array(values, bias.name))
    verdict = verify_requantized(quantized, model, result.report.dropped_roundings)
    assert not verdict
    assert any("the fold itself is wrong" in w for w in verdict.warnings)
