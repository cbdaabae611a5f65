"""Probes (the inputs of a final Softmax/Sigmoid/…) can only make verification stricter."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from support.graphs import GraphBuilder

import bnfold
from bnfold.equivalence import verify
from bnfold.equivalence.probes import find_probes


def paddle_classifier() -> onnx.ModelProto:
    """Conv → BN → pool → Flatten → Gemm → Softmax with no value_info (as paddle2onnx writes)."""
    b = GraphBuilder(seed=3)
    x = b.input("x", [1, 3, 8, 8])
    y = b.node("Conv", [x, b.weight("w", [4, 3, 3, 3])], name="conv", pads=[1, 1, 1, 1])
    y = b.bn(y, 4, name="bn")
    y = b.node("GlobalAveragePool", [y], name="gap")
    # paddle2onnx's flatten: a Reshape to a Concat of Casts, whose rank onnxruntime cannot see
    batch = b.node("Cast", [b.const("n", np.array([1], np.int32))], name="c0", to=7)
    rest = b.node("Cast", [b.const("r", np.array([-1], np.int32))], name="c1", to=7)
    shape = b.node("Concat", [batch, rest], name="shape", axis=-1)
    y = b.node("Reshape", [y, shape], name="flat")
    y = b.node("MatMul", [y, b.weight("fc", [4, 2])], name="fc")
    y = b.node("Add", [y, b.weight("fcb", [2])], name="fc_bias")
    b.node("Softmax", [y], name="softmax", outputs=["save_infer_model/scale_0.tmp_1"], axis=1)
    b.output("save_infer_model/scale_0.tmp_1", 2)
    return b.build(opset=11, ir_version=7)


def test_regression_untyped_probe_turned_a_correct_fold_into_an_error(tmp_path: Path) -> None:
    """Failure 2: '…::Softmax_input' has rank 0 in the reference but 2 in the candidate."""
    model = paddle_classifier()
    assert not model.graph.value_info
    src = tmp_path / "cls.onnx"
    onnx.save(model, src)
    folded = tmp_path / "cls.folded.onnx"
    bnfold.fold(str(src)).save(folded)
    typed = {v.name for v in onnx.load(folded).graph.value_info}
    probe = find_probes(model)["save_infer_model/scale_0.tmp_1"]
    assert probe.value in typed  # the candidate knows the probe's type, the reference does not
    result = verify(src, folded)
    assert result, result.describe()
    assert any(o.probe for o in result.outputs)  # compared on its arrays, not dropped


def test_probe_with_a_different_shape_is_dropped_with_a_note() -> None:
    """A probe whose arrays differ in shape is not compared; the real outputs still are."""
    ref = paddle_classifier()
    cand = onnx.ModelProto()
    cand.CopyFrom(ref)
    # The candidate feeds its Softmax through a Reshape to [N, 2, 1] and back: same output,
    # a probe of another shape.
    softmax = next(n for n in cand.graph.node if n.op_type == "Softmax")
    index = list(cand.graph.node).index(softmax)
    shape3 = onnx.numpy_helper.from_array(np.array([0, 2, 1], np.int64), "shape3")
    cand.graph.initializer.append(shape3)
    logits = softmax.input[0]
    reshape = onnx.helper.make_node("Reshape", [logits, "shape3"], ["logits3"], name="r3")
    softmax.input[0] = "logits3"
    softmax.attribute[0].i = 1
    flatten = onnx.helper.make_node("Flatten", ["probs3"], [softmax.output[0]], name="f")
    softmax.output[0] = "probs3"
    cand.graph.node.insert(index, reshape)
    cand.graph.node.append(flatten)
    result = verify(ref, cand)
    assert result, result.describe()
    assert not any(o.probe for o in result.outputs)
    assert any("not compared" in w for w in result.warnings)
