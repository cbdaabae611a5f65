"""fp16 / bf16 models: folded in float64, cast back, range-checked."""

from __future__ import annotations

from typing import Any

import ml_dtypes
import numpy as np
from onnx import numpy_helper
from support.fold_checks import assert_equivalent, feeds_for, fold, only_bn, ops, run
from support.graphs import BFLOAT16, Builder
from support.onnx_checks import initializer_array

from bnfold import foldmath


def _conv_bn(dtype: Any, seed: int = 0, consumer: bool = False) -> tuple[Builder, str]:
    b = Builder(seed=seed, dtype=dtype)
    if consumer:
        y = b.bn("x", 3)
        z = b.op("Conv", [y, b.weight((4, 3, 2, 2)), b.weight((4,))])
    else:
        c = b.op("Conv", ["x", b.weight((4, 3, 3, 3)), b.weight((4,))], pads=[1, 1, 1, 1])
        z = b.bn(c, 4)
    return b, z


def test_fp16_producer_and_consumer_fold_run_in_ort() -> None:
    for consumer in (False, True):
        b, z = _conv_bn(np.float16, seed=1, consumer=consumer)
        model = b.model({"x": (1, 3, 6, 6)}, [z])
        folded, result = fold(model)
        assert only_bn(result).status == "folded"
        assert ops(folded)["BatchNormalization"] == 0
        assert all(
            t.data_type == model.graph.initializer[0].data_type for t in folded.graph.initializer
        )
        assert_equivalent(model, folded, rtol=1e-2)  # fp16 rounding on both sides


def test_fp16_fold_that_overflows_is_refused() -> None:
    b = Builder(seed=2, dtype=np.float16)
    c = b.op("Conv", ["x", b.const(np.full((2, 1, 1, 1), 300.0, np.float16))])
    p = {
        "scale": np.array([500.0, 1.0], np.float16),
        "bias": np.zeros(2, np.float16),
        "mean": np.zeros(2, np.float16),
        "var": np.array([1.0, 1.0], np.float16),
    }
    names = [b.const(p[k]) for k in ("scale", "bias", "mean", "var")]
    y = b.op("BatchNormalization", [c, *names])
    model = b.model({"x": (1, 1, 2, 2)}, [y])
    folded, result = fold(model)
    entry = only_bn(result)
    assert entry.status == "left"
    assert "float16 range" in entry.reason
    assert ops(folded)["BatchNormalization"] == 1


def test_bf16_fold_math_and_cast_back() -> None:
    """ORT CPU runs no bf16 Conv: check the folded tensors against float64 math instead."""
    b, z = _conv_bn(ml_dtypes.bfloat16, seed=3)
    model = b.model({"x": (1, 3, 6, 6)}, [z], opset=22, elem=BFLOAT16)  # bf16 Conv: opset 22
    folded, result = fold(model)
    assert only_bn(result).status == "folded"
    conv = next(n for n in folded.graph.node if n.op_type == "Conv")
    w_new, b_new = (
        initializer_array(folded, conv.input[1]),
        initializer_array(folded, conv.input[2]),
    )
    assert w_new.dtype == ml_dtypes.bfloat16 and b_new.dtype == ml_dtypes.bfloat16
    src = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    bn_node = next(n for n in model.graph.node if n.op_type == "BatchNormalization")
    orig_conv = next(n for n in model.graph.node if n.op_type == "Conv")
    g, beta, mean, var = (src[n].astype(np.float64) for n in bn_node.input[1:])
    s, t = foldmath.bn_scale_shift(g, beta, mean, var, 1e-5)
    w, bias = src[orig_conv.input[1]].astype(np.float64), src[orig_conv.input[2]].astype(np.float64)
    expected_w = (w * s[:, None, None, None]).astype(ml_dtypes.bfloat16)
    expected_b = (bias * s + t).astype(ml_dtypes.bfloat16)
    np.testing.assert_array_equal(w_new, expected_w)
    np.testing.assert_array_equal(b_new, expected_b)


def test_fp16_layout_and_concat_folds() -> None:
    b = Builder(seed=4, dtype=np.float16)
    m = b.op("MatMul", ["x", b.weight((6, 4))])
    t = b.op("Transpose", [m], perm=[0, 2, 1])
    c1 = b.op("Conv", [t, b.weight((2, 4, 1))])
    c2 = b.op("Conv", [t, b.weight((3, 4, 1))])
    y = b.bn(b.op("Concat", [c1, c2], axis=1), 5)
    model = b.model({"x": (2, 5, 6)}, [y])
    folded, result = fold(model)
    assert only_bn(result).status == "folded"
    ref, got = run(model, feeds_for(model)), run(folded, feeds_for(model))
    np.testing.assert_allclose(
        got[0].astype(np.float32), ref[0].astype(np.float32), rtol=2e-2, atol=2e-2
    )


# -- underflow: judged per output channel, by effect -----------------------------------------
def test_underflow_rule_judges_each_output_channel_by_its_rounding() -> None:
    """Row 1 loses one tiny weight (negligible); row 2 loses everything (refused)."""
    w = np.full((3, 4), 0.5)
    w[1, 0] = 1e-9  # flushes in fp16: 1e-9 ≪ 2⁻¹¹ · 1.5
    w[2, :] = 1e-9
    out, reason = foldmath.cast_back(w, np.float16, w)
    assert out is None and reason is not None
    assert reason.startswith("output channel 2:") and "float16" in reason and "(and" not in reason
    assert foldmath.cast_back(w[:2], np.float16, w[:2])[1] is None
    assert foldmath.cast_back(w.T.copy(), np.float16, w.T, axis=1)[1] == reason
    assert foldmath.cast_back(w, np.float16)[1] is None  # biases/shifts: not judged
    assert foldmath.cast_back(w * 1e-37, np.float32, w)[1] is None  # float32: never
    bf16, why = foldmath.cast_back(w * 1e-32, ml_dtypes.bfloat16, w)  # 1e-41 flushes
    assert bf16 is None and why is not None and why.startswith("output channel 2:")


def test_underflow_rule_for_grouped_conv_transpose_names_the_output_channel() -> None:
    """(C_in=4, C_out/g=3, k) with g=2: output channel gi·3 + j; channel 5 = (gi=1, j=2)."""
    w = np.full((4, 3, 2), 0.5)
    w[2:, 2, :] = 1e-9
    grouped = foldmath.grouped_conv_transpose(w, 2)
    _, reason = foldmath.cast_back(grouped, np.float16, grouped, foldmath.CONV_TRANSPOSE_AXES)
    assert reason is not None and reason.startswith("output channel 5:")
    w[:2, 2, :] = 1e-9  # channel 2 too
    grouped = foldmath.grouped_conv_transpose(w, 2)
    _, reason = foldmath.cast_back(grouped, np.float16, grouped, foldmath.CONV_TRANSPOSE_AXES)
    assert reason is not None and reason.startswith("output channel 2 (and 1 more):")


def test_blocked_cast_names_channels_of_later_blocks() -> None:
    w = np.full((64, 8), 0.5, dtype=np.float16)
    s = np.ones(64)
    s[40] = 1e-9
    got, reason = foldmath.scale_output_channels_cast(w, s, np.float16, block_bytes=64)
    assert got is None and reason is not None and reason.startswith("output channel 40:")
