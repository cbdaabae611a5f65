"""Normalisation: exporter patterns that must be cleaned up before a BN can fold.

* legacy torch exports (``do_constant_folding=False``) read parameters through ``Identity``
  of shared initializers;
* paddle2onnx writes every weight as a ``Constant`` node;
* torch's dynamo exporter (``optimize=False``) computes a bias-free Conv's bias as
  ``Expand(CastLike(0, x), Shape(W))``.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper
from support.graphs import GraphBuilder, make_bn_params
from support.onnx_checks import (
    assert_equivalent,
    assert_hygiene,
    entry,
    initializer_array,
    op_types,
    used_initializers,
)

import bnfold

BN_KEYS = ("scale", "bias", "mean", "var")


def test_identity_of_shared_initializers_is_eliminated() -> None:
    """Two BNs read one shared initializer (and a weight) through Identity nodes."""
    b = GraphBuilder(seed=1)
    x = b.input("x", ["N", 3, 5, 5])
    shared = make_bn_params(4, b.rng)
    for k in BN_KEYS:
        b.const(f"shared.{k}", shared[k])
    w = b.node("Identity", [b.weight("w", [4, 3, 3, 3])], name="w_id", outputs=["conv.weight"])
    y = x
    for i in range(2):
        conv = b.node("Conv", [y if i else x, w if i == 0 else b.weight("w2", [4, 4, 1, 1])])
        names = [
            b.node("Identity", [f"shared.{k}"], name=f"id{i}{k}", outputs=[f"bn{i}.{k}"])
            for k in BN_KEYS
        ]
        y = b.node("BatchNormalization", [conv, *names], name=f"bn{i}")
    b.node("Relu", [y], name="relu", outputs=["out"])
    b.output("out", 4)
    model = b.build()
    result = bnfold.fold(model)
    assert op_types(result.model) == ["Conv", "Conv", "Relu"]
    assert result.report.counts()["batchnorm"] == {
        "found": 2,
        "folded": 2,
        "rewritten": 0,
        "left": 0,
        "kept": 0,
    }
    assert_hygiene(model, result.model)
    assert_equivalent(model, result.model)


def _constant(b: GraphBuilder, name: str, array: np.ndarray, form: str = "value") -> str:
    """A Constant node producing ``array`` (``form``: "value" or "value_floats")."""
    if form == "value_floats":
        attrs = {"value_floats": [float(v) for v in array.reshape(-1)]}
    else:
        attrs = {"value": numpy_helper.from_array(array, f"{name}_t")}
    return b.node("Constant", [], name=f"{name}_const", outputs=[name], **attrs)


@pytest.mark.parametrize("form", ["value", "value_floats"])
def test_constant_node_weights_fold(form: str) -> None:
    """paddle2onnx style: Conv weight, bias and every BN parameter are Constant nodes."""
    b = GraphBuilder(seed=2)
    x = b.input("x", ["N", 3, 5, 5])
    w = _constant(b, "w", b.rng.normal(size=(4, 3, 3, 3)).astype(np.float32))
    bias = _constant(b, "b", b.rng.normal(size=4).astype(np.float32), form)
    conv = b.node("Conv", [x, w, bias], name="conv", pads=[1, 1, 1, 1])
    p = make_bn_params(4, b.rng)
    names = [_constant(b, f"bn.{k}", p[k], form) for k in BN_KEYS]
    b.node("BatchNormalization", [conv, *names], name="bn", outputs=["y"])
    b.output("y", 4)
    model = b.build()
    result = bnfold.fold(model)
    assert op_types(result.model) == ["Conv"]
    assert entry(result.report, "bn").status == "folded"
    assert_hygiene(model, result.model)
    assert_equivalent(model, result.model)


def _dynamo_zero_bias(b: GraphBuilder, x: str, w: str) -> str:
    """The dynamo exporter's bias: Expand(CastLike(0, x), Expand(Shape(W)[0:1], [1]))."""
    n = b.node("Shape", [w], name="shape_w", start=0, end=1)
    one = b.node("Constant", [], name="one", value_ints=[1])
    n = b.node("Expand", [n, one], name="expand_shape")
    zero = b.node("Constant", [], name="zero", value=numpy_helper.from_array(np.array(0.0)))
    z = b.node("CastLike", [zero, x], name="castlike")
    return b.node("Expand", [z, n], name="expand_zero")


def test_dynamo_computed_zero_bias_is_folded() -> None:
    b = GraphBuilder(seed=3)
    x = b.input("x", [2, 3, 5, 5])
    w = b.weight("conv.weight", [4, 3, 3, 3])
    conv = b.node("Conv", [x, w, _dynamo_zero_bias(b, x, w)], name="conv")
    b.bn(conv, 4, name="bn", output="y")
    b.output("y", 4)
    model = b.build(opset=18)
    result = bnfold.fold(model)
    assert op_types(result.model) == ["Conv"]
    assert entry(result.report, "bn").status == "folded"
    assert_hygiene(model, result.model)
    assert_equivalent(model, result.model)


def test_computed_bias_on_runtime_values_is_not_evaluated() -> None:
    """A bias computed from a real graph input is not a constant: BN left, graph intact."""
    b = GraphBuilder(seed=4)
    x = b.input("x", ["N", 3, 5, 5])
    bias = b.node("Relu", [b.input("b", [4])], name="relu")
    conv = b.node("Conv", [x, b.weight("w", [4, 3, 3, 3]), bias], name="conv")
    b.bn(conv, 4, name="bn", output="y")
    b.output("y", 4)
    model = b.build()
    result = bnfold.fold(model)
    assert op_types(result.model) == op_types(model)
    assert entry(result.report, "bn").status == "left"


def test_transposed_linear_weight_is_folded() -> None:
    """dynamo's Linear: MatMul(x, Transpose(W)) → BN folds once the Transpose is evaluated."""
    b = GraphBuilder(seed=5)
    x = b.input("x", ["N", 6])
    wt = b.node("Transpose", [b.weight("fc.weight", [4, 6])], name="t", perm=[1, 0])
    mm = b.node("MatMul", [x, wt], name="mm")
    add = b.node("Add", [mm, b.weight("fc.bias", [4])], name="add")
    b.bn(add, 4, name="bn", output="y")
    b.output("y", 2)
    model = b.build()
    result = bnfold.fold(model)
    assert op_types(result.model) == ["MatMul", "Add"]
    assert_hygiene(model, result.model)
    assert_equivalent(model, result.model)


def test_normalisation_keeps_original_constant_names_unique() -> None:
    """Every initializer of the folded model has a distinct name, none reused with new data."""
    b = GraphBuilder(seed=6)
    x = b.input("x", [2, 3, 5, 5])
    w = b.weight("conv.weight", [4, 3, 3, 3])
    conv = b.node("Conv", [x, w, _dynamo_zero_bias(b, x, w)], name="conv")
    b.bn(conv, 4, name="bn", output="y")
    b.output("y", 4)
    model = b.build(opset=18)
    folded = bnfold.fold(model).model
    names = [t.name for t in folded.graph.initializer]
    assert len(names) == len(set(names))
    original = used_initializers(model)
    for name in used_initializers(folded):
        if name in original:
            assert initializer_array(folded, name).tobytes() == original[name]


def test_constant_of_foreign_domain_is_not_treated_as_constant() -> None:
    """Only default-domain ``Constant`` nodes count as constants."""
    b = GraphBuilder(seed=7)
    x = b.input("x", ["N", 3, 5, 5])
    w = b.rng.normal(size=(4, 3, 3, 3)).astype(np.float32)
    b.nodes.append(
        helper.make_node(
            "Constant",
            [],
            ["w"],
            name="w_const",
            domain="custom.domain",
            value=numpy_helper.from_array(w, "wt"),
        )
    )
    conv = b.node("Conv", [x, "w"], name="conv")
    b.bn(conv, 4, name="bn", output="y")
    b.output("y", 4)
    graph = helper.make_graph(b.nodes, "g", b.inputs, b.outputs, initializer=b.initializers)
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("custom.domain", 1)],
        ir_version=8,
    )
    onnx.checker.check_model(model)
    result = bnfold.fold(model)
    assert entry(result.report, "bn").status == "left"
    assert "computed at run time" in (entry(result.report, "bn").reason or "")


def test_regression_scalar_constant_became_rank_1_and_broke_a_concat() -> None:
    """EfficientViT (legacy export): Mod of scalar Constants → Unsqueeze → Concat.

    The folded scalar was stored 1-d, so its Unsqueeze gave [[0]] beside [0]s and
    onnxruntime refused the model: "All inputs to Concat must have same rank".
    """
    b = GraphBuilder(seed=0)
    x = b.input("x", [1, 4, 7, 7])
    seven = b.node("Constant", [], name="c7", value=numpy_helper.from_array(np.array(7, np.int64)))
    fourteen = b.node(
        "Constant", [], name="c14", value=numpy_helper.from_array(np.array(14, np.int64))
    )
    rem = b.node("Mod", [fourteen, seven], name="mod")  # scalar 0
    axes = b.const("axes", np.array([0], np.int64))
    first = b.node("Unsqueeze", [rem, axes], name="u0")
    rest = b.const("rest", np.array([4, 49], np.int64))
    shape = b.node("Concat", [first, rest], name="shape", axis=0)
    shape = b.node("Add", [shape, b.const("one", np.array([1, 0, 0], np.int64))], name="plus")
    y = b.node("Conv", [x, b.weight("w", [4, 4, 1, 1])], name="conv")
    y = b.bn(y, 4, name="bn")
    b.node("Reshape", [y, shape], name="flat", outputs=["y"])
    b.output("y", 3)
    model = b.build()
    folded = bnfold.fold(model).model
    onnx.checker.check_model(folded, full_check=True)
    consts = {t.name: numpy_helper.to_array(t) for t in folded.graph.initializer}
    assert all(a.ndim == 1 for name, a in consts.items() if "u0" in name or "mod" in name)
    assert_equivalent(model, folded)
