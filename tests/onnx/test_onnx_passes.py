"""Each pass on its own: it changes what it should and reports ``modified`` honestly."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from support.graphs import GraphBuilder, rand
from support.onnx_checks import assert_equivalent, op_types

from bnfold.onnx.context import FoldContext, FoldOptions
from bnfold.onnx.passes.base import BnfoldPass
from bnfold.onnx.passes.fold_batchnorm import FoldBatchNormIntoProducerPass
from bnfold.onnx.passes.fold_channel_affine import FoldChannelAffinePass
from bnfold.onnx.passes.fold_constants import FoldConstantsPass
from bnfold.onnx.passes.identity import KeepOutputNamesIdentityEliminationPass
from bnfold.onnx.passes.strip_dropout import StripDropoutPass


def to_ir(model: onnx.ModelProto) -> tuple[ir.Model, FoldContext]:
    ir_model = ir.serde.deserialize_model(model)
    return ir_model, FoldContext(ir_model, FoldOptions())


def run_twice(model: onnx.ModelProto, pass_type: type[BnfoldPass]) -> tuple[bool, bool, ir.Model]:
    """Apply the pass twice; (modified first, modified second, model)."""
    ir_model, ctx = to_ir(model)
    p = pass_type(ctx)
    first = p(ir_model).modified
    second = p(ir_model).modified
    return first, second, ir_model


def conv_then(op: str, opset: int = 17, **attrs: object) -> onnx.ModelProto:
    """x → Conv → ``op`` → y (BN gets random params; Mul gets a per-channel constant)."""
    b = GraphBuilder(seed=1)
    x = b.input("x", ["N", 3, 5, 5])
    conv = b.node("Conv", [x, b.weight("w", [4, 3, 3, 3])], name="conv")
    if op == "BatchNormalization":
        b.bn(conv, 4, name="bn", output="y", **attrs)
    elif op == "Mul":
        b.node("Mul", [conv, b.const("k", rand(b.rng, [4, 1, 1]))], name="mul", outputs=["y"])
    else:
        b.node(op, [conv], name="op", outputs=["y"], **attrs)
    b.output("y", 4)
    return b.build(opset=opset)


@pytest.mark.parametrize(
    ("pass_type", "op"),
    [
        (StripDropoutPass, "Dropout"),
        (FoldBatchNormIntoProducerPass, "BatchNormalization"),
        (FoldChannelAffinePass, "Mul"),
    ],
)
def test_pass_changes_once_then_reports_unmodified(pass_type: type[BnfoldPass], op: str) -> None:
    model = conv_then(op)
    first, second, folded = run_twice(model, pass_type)
    assert (first, second) == (True, False)
    assert [n.op_type for n in folded.graph] == ["Conv"]
    assert_equivalent(model, folded)


@pytest.mark.parametrize(
    ("pass_type", "op", "attrs"),
    [
        (StripDropoutPass, "Relu", {}),
        (FoldBatchNormIntoProducerPass, "Relu", {}),
        (FoldChannelAffinePass, "Relu", {}),
        (FoldConstantsPass, "Relu", {}),
        (FoldBatchNormIntoProducerPass, "BatchNormalization", {"epsilon": -10.0}),
    ],
)
def test_pass_with_nothing_to_do_is_unmodified(
    pass_type: type[BnfoldPass], op: str, attrs: dict[str, object]
) -> None:
    model = conv_then(op, **attrs)
    first, second, folded = run_twice(model, pass_type)
    assert (first, second) == (False, False)
    assert [n.op_type for n in folded.graph] == op_types(model)


def test_training_dropout_left_by_strip_pass() -> None:
    b = GraphBuilder(seed=2)
    x = b.input("x", ["N", 4])
    t = b.const("t", np.array(True))
    b.node("Dropout", [x, "", t], name="drop", outputs=["y"])
    b.output("y", 2)
    first, _, folded = run_twice(b.build(), StripDropoutPass)
    assert first is False
    assert [n.op_type for n in folded.graph] == ["Dropout"]


def test_fold_constants_evaluates_computed_bias_only() -> None:
    """Expand(CastLike(0, x), Shape(W)) becomes one initializer; runtime nodes stay."""
    b = GraphBuilder(seed=3)
    x = b.input("x", [2, 3, 5, 5])
    w = b.weight("w", [4, 3, 3, 3])
    shape = b.node("Shape", [w], name="shape", start=0, end=1)
    zero = b.node("Constant", [], name="zero", value=onnx.numpy_helper.from_array(np.array(0.0)))
    z = b.node("CastLike", [zero, x], name="castlike")
    bias = b.node("Expand", [z, shape], name="expand")
    conv = b.node("Conv", [x, w, bias], name="conv")
    b.node("Relu", [conv], name="relu", outputs=["y"])
    b.output("y", 4)
    model = b.build()
    ir_model, ctx = to_ir(model)
    assert FoldConstantsPass(ctx)(ir_model).modified
    conv_node = next(n for n in ir_model.graph if n.op_type == "Conv")
    bias_value = conv_node.inputs[2]
    assert bias_value is not None and bias_value.const_value is not None
    np.testing.assert_array_equal(bias_value.const_value.numpy(), np.zeros(4, np.float32))
    assert "Relu" in [n.op_type for n in ir_model.graph]
    assert_equivalent(model, ir_model)


def test_fold_constants_shares_evaluators_only_between_identical_nodes() -> None:
    """Evaluators are cached per node kind: a different attribute or input dtype is new."""
    b = GraphBuilder(seed=5)
    x = b.input("x", [2, 3])
    values = np.array([[1.5, -2.5, 3.7], [0.2, 9.9, -1.1]])
    c32 = b.const("c32", values.astype(np.float32))
    c64 = b.const("c64", values * 2)
    for i, (src, to) in enumerate(
        [
            (c32, onnx.TensorProto.INT32),
            (c32, onnx.TensorProto.FLOAT16),
            (c64, onnx.TensorProto.INT32),
        ]
    ):
        cast = b.node("Cast", [src], to=to)
        back = b.node("Cast", [cast], to=onnx.TensorProto.FLOAT)
        b.node("Add", [x, back], outputs=[f"y{i}"])
        b.output(f"y{i}", 2)
    model = b.build()
    ir_model, ctx = to_ir(model)
    assert FoldConstantsPass(ctx)(ir_model).modified
    assert "Cast" not in op_types(ir_model)
    assert_equivalent(model, ir_model)


def test_identity_pass_keeps_identity_between_graph_outputs() -> None:
    b = GraphBuilder(seed=4)
    x = b.input("x", ["N", 4])
    b.node("Relu", [x], name="relu", outputs=["a"])
    b.node("Identity", ["a"], name="ident", outputs=["b"])
    b.node("Identity", ["a"], name="inner", outputs=["c"])
    b.node("Neg", ["c"], name="neg", outputs=["d"])
    for name in ("a", "b", "d"):
        b.output(name, 2)
    model = b.build()
    ir_model = ir.serde.deserialize_model(model)
    assert KeepOutputNamesIdentityEliminationPass()(ir_model).modified  # 'inner' goes
    ops = [n.op_type for n in ir_model.graph]
    assert ops == ["Relu", "Identity", "Neg"]
    assert [o.name for o in ir_model.graph.outputs] == ["a", "b", "d"]
    assert not KeepOutputNamesIdentityEliminationPass()(ir_model).modified
    assert_equivalent(model, ir_model)
