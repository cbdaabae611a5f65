"""StripDropoutPass: every opset form of Dropout, its mask, and Dropouts at graph outputs."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from support.graphs import GraphBuilder
from support.onnx_checks import (
    assert_close,
    assert_equivalent,
    assert_hygiene,
    assert_left,
    assert_unchanged,
    entry,
    op_types,
    ort_run,
    random_feeds,
)

import bnfold

BOOL, FLOAT = onnx.TensorProto.BOOL, onnx.TensorProto.FLOAT


def dropout_inputs(
    b: GraphBuilder, x: str, opset: int, ratio: bool | str = True, training: str | None = None
) -> tuple[list[str], dict[str, float]]:
    """Inputs and attributes of a Dropout in ``opset`` form.

    ``ratio``: True (constant), False (absent) or "input" (a graph input; opset ≥ 12).
    ``training``: None (absent), "false"/"true" (constant) or "input" (a graph input).
    """
    if opset < 12:
        return [x], ({"ratio": 0.4} if ratio else {})
    inputs = [x, b.const("ratio", np.array(0.4, np.float32)) if ratio else ""]
    if training in ("false", "true"):
        inputs.append(b.const("training_mode", np.array(training == "true")))
    elif training == "input":
        inputs.append(b.input("training_mode", [], elem=BOOL))
    if ratio == "input":
        inputs[1] = b.input("ratio", [], elem=FLOAT)
    return inputs, {}


def conv_dropout(
    opset: int, ratio: bool | str = True, training: str | None = None, mask: str | None = None
) -> onnx.ModelProto:
    """x → Conv → Dropout → Relu → y; ``mask``: None, "output" (graph output) or "used"."""
    b = GraphBuilder(seed=opset)
    x = b.input("x", ["N", 3, 4, 4])
    conv = b.node("Conv", [x, b.weight("w", [4, 3, 1, 1])], name="conv")
    inputs, attrs = dropout_inputs(b, conv, opset, ratio, training)
    outputs = ["d", "mask"] if mask else ["d"]
    b.node("Dropout", inputs, name="drop", outputs=outputs, **attrs)
    b.node("Relu", ["d"], name="relu", outputs=["y"])
    b.output("y", 4)
    mask_elem = FLOAT if opset < 10 else BOOL
    if mask == "output":
        b.output("mask", 4, elem=mask_elem)
    elif mask == "used":  # mask → Cast(float) → y2 = y · mask
        b.node("Cast", ["mask"], name="cast", outputs=["maskf"], to=FLOAT)
        b.node("Mul", ["y", "maskf"], name="mul", outputs=["y2"])
        b.output("y2", 4)
    return b.build(opset=opset)


INFERENCE_FORMS = [
    pytest.param(7, True, None, id="opset7-ratio-attr"),
    pytest.param(10, False, None, id="opset10-no-ratio"),
    pytest.param(11, True, None, id="opset11-ratio-attr"),
    pytest.param(12, True, None, id="opset12-ratio-input"),
    pytest.param(12, False, "false", id="opset12-training-false"),
    pytest.param(13, True, "false", id="opset13-ratio-training-false"),
    pytest.param(13, "input", None, id="opset13-runtime-ratio"),
    pytest.param(17, False, None, id="opset17-data-only"),
]


@pytest.mark.parametrize(("opset", "ratio", "training"), INFERENCE_FORMS)
def test_inference_dropout_is_removed(opset: int, ratio: bool | str, training: str | None) -> None:
    """Whatever the ratio (even one given at run time), inference Dropout is the identity."""
    model = conv_dropout(opset, ratio, training)
    result = bnfold.fold(model)
    assert op_types(result.model) == ["Conv", "Relu"]
    e = entry(result.report, "drop")
    assert e.status == "removed"
    assert result.report.counts()["dropout"] == {"found": 1, "removed": 1, "left": 0, "kept": 0}
    assert_hygiene(model, result.model)
    assert_equivalent(model, result.model)


def test_training_mode_dropout_is_left() -> None:
    model = conv_dropout(13, training="true")
    result = bnfold.fold(model)
    assert_left(result.report, "drop", "training mode", "--assume-eval")
    assert_unchanged(model, result.model)


def test_regression_assume_eval_dropout_removal_note_lost() -> None:
    """A training-mode Dropout removed under assume_eval says so in the report (the note
    was computed after the node's inputs were detached, so it was always empty)."""
    model = conv_dropout(13, training="true")
    result = bnfold.fold(model, assume_eval=True)
    assert op_types(result.model) == ["Conv", "Relu"]
    e = entry(result.report, "drop")
    assert e.status == "removed" and "assume-eval" in (e.reason or "")
    assert_equivalent(conv_dropout(13, training="false"), result.model)


def test_runtime_training_mode_dropout_is_left() -> None:
    model = conv_dropout(13, training="input")
    result = bnfold.fold(model)
    assert_left(result.report, "drop", "training_mode is a run-time input")
    assert_unchanged(model, result.model)


def test_overridable_training_mode_dropout_is_left() -> None:
    """A constant training_mode that is also a graph input can be switched on at run time."""
    model = conv_dropout(13, training="false")
    model.graph.input.append(onnx.helper.make_tensor_value_info("training_mode", BOOL, []))
    result = bnfold.fold(model)
    assert_left(result.report, "drop", "run-time input")
    assert_unchanged(model, result.model)


@pytest.mark.parametrize(("is_test", "removed"), [(1, True), (0, False), (None, False)])
def test_opset6_is_test_attribute(is_test: int | None, removed: bool) -> None:
    """Before opset 7 Dropout is inference only with is_test=1."""
    b = GraphBuilder(seed=6)
    attrs = {"is_test": is_test} if is_test is not None else {}
    b.node("Dropout", [b.input("x", ["N", 4])], name="drop", outputs=["d"], **attrs)
    b.node("Relu", ["d"], name="relu", outputs=["y"])
    b.output("y", 2)
    model = b.build(opset=6, ir_version=3)
    result = bnfold.fold(model)
    if removed:
        assert op_types(result.model) == ["Relu"]
        assert entry(result.report, "drop").status == "removed"
    else:
        assert_left(result.report, "drop", "training mode")
        assert_unchanged(model, result.model)


# -- the mask output -----------------------------------------------------------------------
MASK_OPSETS = [10, 11, 12, 13, 17]
MASK_OPSETS_OLD = [7, 8, 9]


def _check_mask_folded(model: onnx.ModelProto, mask: str) -> None:
    """Dropout gone; data output equals the reference; the mask is all true (1.0 / True)."""
    result = bnfold.fold(model)
    folded = result.model
    assert "Dropout" not in op_types(folded)
    assert entry(result.report, "drop").status == "removed"
    assert_hygiene(model, folded)
    feeds = random_feeds(model, np.random.default_rng(0))
    ref, got = ort_run(model, feeds), ort_run(folded, feeds)
    assert_close(ref["y"], got["y"], what="y")
    opset = model.opset_import[0].version
    if mask == "output":
        expected_dtype = np.float32 if opset < 10 else np.bool_
        assert got["mask"].dtype == expected_dtype
        assert got["mask"].shape == ref["mask"].shape
        assert np.all(got["mask"] == 1)  # onnxruntime's own opset<12 kernels give 0 here
    else:  # y2 = y · mask equals y exactly when the mask is all ones
        assert np.any(got["y"] > 0)
        np.testing.assert_array_equal(got["y2"], got["y"])


@pytest.mark.parametrize("mask", ["output", "used"])
@pytest.mark.parametrize("opset", MASK_OPSETS)
def test_consumed_mask_becomes_all_true(opset: int, mask: str) -> None:
    training = "false" if opset >= 12 else None
    _check_mask_folded(conv_dropout(opset, training=training, mask=mask), mask)


@pytest.mark.parametrize("mask", ["output", "used"])
@pytest.mark.parametrize("opset", MASK_OPSETS_OLD)
def test_regression_dropout_mask_before_opset_10_is_float_ones(opset: int, mask: str) -> None:
    """Dropout-7's mask has the data's type (bool only from opset 10), and ConstantOfShape
    does not exist before opset 9: the all-true mask must be 1.0 in the data dtype, built
    from operators of the model's opset."""
    _check_mask_folded(conv_dropout(opset, mask=mask), mask)


def test_unused_mask_output_adds_nothing() -> None:
    """A declared but unused mask needs no all-true constant."""
    b = GraphBuilder(seed=3)
    x = b.input("x", ["N", 4])
    b.node("Dropout", [x], name="drop", outputs=["d", "mask"])
    b.node("Relu", ["d"], name="relu", outputs=["y"])
    b.output("y", 2)
    model = b.build(opset=13)
    assert op_types(bnfold.fold(model).model) == ["Relu"]


# -- Dropout at the graph boundary ---------------------------------------------------------
def test_dropout_output_graph_output_keeps_its_name() -> None:
    b = GraphBuilder(seed=4)
    x = b.input("x", ["N", 3, 4, 4])
    conv = b.node("Conv", [x, b.weight("w", [4, 3, 1, 1])], name="conv")
    b.node("Dropout", [conv], name="drop", outputs=["y"])
    b.output("y", 4)
    model = b.build()
    result = bnfold.fold(model)
    assert op_types(result.model) == ["Conv"]
    assert result.model.graph.node[0].output[0] == "y"
    assert_hygiene(model, result.model)
    assert_equivalent(model, result.model)


def test_regression_dropout_between_graph_input_and_output_leaves_untyped_identity() -> None:
    """y = Dropout(x) with x a graph input and y a graph output becomes y = Identity(x);
    that Identity's output carried no type, so the model failed the ONNX checker."""
    b = GraphBuilder(seed=5)
    b.node("Dropout", [b.input("x", ["N", 4])], name="drop", outputs=["y"])
    b.output("y", 2)
    model = b.build()
    result = bnfold.fold(model)
    assert op_types(result.model) == ["Identity"]
    assert entry(result.report, "drop").status == "removed"
    assert_hygiene(model, result.model)
    assert_equivalent(model, result.model)


def test_regression_dropout_of_a_graph_output_keeps_both_output_names() -> None:
    """``c`` and ``Dropout(c)`` are both graph outputs: two outputs, two names, as before.

    The Identity inserted for the removed Dropout was later eliminated by onnx-ir's
    IdentityEliminationPass, which renamed ``c`` to ``d`` and listed ``d`` twice.
    """
    b = GraphBuilder(seed=6)
    x = b.input("x", ["N", 3, 4, 4])
    b.node("Conv", [x, b.weight("w", [4, 3, 1, 1])], name="conv", outputs=["c"])
    b.node("Dropout", ["c"], name="drop", outputs=["d"])
    b.output("c", 4)
    b.output("d", 4)
    model = b.build()
    result = bnfold.fold(model)
    assert entry(result.report, "drop").status == "removed"
    assert "Dropout" not in op_types(result.model)
    assert_hygiene(model, result.model)
    assert_equivalent(model, result.model)


def test_regression_identity_between_two_graph_outputs_is_kept() -> None:
    """A legacy ``d = Identity(c)`` with both c and d graph outputs survives normalisation."""
    b = GraphBuilder(seed=7)
    x = b.input("x", ["N", 3, 4, 4])
    conv = b.node("Conv", [x, b.weight("w", [4, 3, 1, 1])], name="conv")
    b.bn(conv, 4, name="bn", output="c")
    b.node("Identity", ["c"], name="ident", outputs=["d"])
    b.output("c", 4)
    b.output("d", 4)
    model = b.build()
    result = bnfold.fold(model)
    assert entry(result.report, "bn").status == "folded"
    assert_hygiene(model, result.model)
    assert_equivalent(model, result.model)
