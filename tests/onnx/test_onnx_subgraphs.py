"""Folding inside If/Loop bodies (outer-scope initializers) and model-local functions."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper
from support.fold_checks import assert_equivalent, fold, ops, run
from support.graphs import FLOAT, Builder, bn_params


def _branch(b: Builder, name: str, out: str, pads: list[int]) -> onnx.GraphProto:
    """Conv → BN → Relu reading weights and BN statistics from outer-scope initializers."""
    w = b.weight((4, 3, 3, 3))
    p = bn_params(b.rng, 4)
    bn_names = [b.const(p[k], f"{name}_{k}") for k in ("scale", "bias", "mean", "var")]
    nodes = [
        helper.make_node("Conv", ["x", w], [f"{name}_c"], pads=pads, name=f"{name}_conv"),
        helper.make_node(
            "BatchNormalization", [f"{name}_c", *bn_names], [f"{name}_bn"], name=f"{name}_bn"
        ),
        helper.make_node("Relu", [f"{name}_bn"], [out], name=f"{name}_relu"),
    ]
    return helper.make_graph(
        nodes, name, [], [helper.make_tensor_value_info(out, FLOAT, [None] * 4)]
    )


def test_if_branches_fold_with_outer_scope_initializers() -> None:
    b = Builder(seed=1)
    then_g = _branch(b, "then", "t_out", [1, 1, 1, 1])
    else_g = _branch(b, "else", "e_out", [0, 0, 0, 0])
    b.nodes.append(helper.make_node("ReduceSum", ["x"], ["sum"], keepdims=0))
    b.nodes.append(helper.make_node("Greater", ["sum", b.const(np.float32(0))], ["cond"]))
    b.nodes.append(helper.make_node("If", ["cond"], ["y"], then_branch=then_g, else_branch=else_g))
    b.nodes.append(helper.make_node("Identity", ["y"], ["z"]))
    model = _model(b, ["z"])
    assert ops(model)["BatchNormalization"] == 2
    folded, result = fold(model)
    assert ops(folded)["BatchNormalization"] == 0
    assert [e.status for e in result.report.batchnorms] == ["folded", "folded"]
    assert all(e.scope.startswith("subgraph:") for e in result.report.batchnorms)
    x = np.abs(np.random.default_rng(0).normal(size=(1, 3, 6, 6))).astype(np.float32)
    for sign in (1.0, -1.0):  # the sign of the sum picks the branch: exercise both
        ref, got = run(model, {"x": sign * x}), run(folded, {"x": sign * x})
        assert ref[0].shape == ((1, 4, 6, 6) if sign > 0 else (1, 4, 4, 4))
        np.testing.assert_allclose(got[0], ref[0], rtol=1e-5, atol=1e-5)


def test_loop_body_folds() -> None:
    b = Builder(seed=2)
    w = b.weight((3, 3, 1, 1))
    p = bn_params(b.rng, 3)
    names = [b.const(p[k], f"loop_{k}") for k in ("scale", "bias", "mean", "var")]
    body = helper.make_graph(
        [
            helper.make_node("Conv", ["v_in", w], ["c"], name="loop_conv"),
            helper.make_node("BatchNormalization", ["c", *names], ["bn"], name="loop_bn"),
            helper.make_node("Tanh", ["bn"], ["v_out"]),
            helper.make_node("Identity", ["cond_in"], ["cond_out"]),
        ],
        "body",
        [
            helper.make_tensor_value_info("i", onnx.TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", onnx.TensorProto.BOOL, []),
            helper.make_tensor_value_info("v_in", FLOAT, [None] * 4),
        ],
        [
            helper.make_tensor_value_info("cond_out", onnx.TensorProto.BOOL, []),
            helper.make_tensor_value_info("v_out", FLOAT, [None] * 4),
        ],
    )
    trips = b.const(np.array(3, np.int64), "trips")
    cond = b.const(np.array(True), "cond")
    b.nodes.append(helper.make_node("Loop", [trips, cond, "x"], ["z"], body=body))
    model = _model(b, ["z"], shape=(1, 3, 4, 4))
    folded, result = fold(model)
    assert ops(folded)["BatchNormalization"] == 0
    assert result.report.batchnorms[0].status == "folded"
    assert_equivalent(model, folded)


def test_model_local_function_folds_with_constant_nodes() -> None:
    rng = np.random.default_rng(3)
    p = bn_params(rng, 4)
    consts = {
        "w": rng.normal(0, 0.5, (4, 3, 1, 1)).astype(np.float32),
        **{f"bn_{k}": v for k, v in p.items()},
    }
    body = [
        helper.make_node("Constant", [], [k], value=numpy_helper.from_array(v, k))
        for k, v in consts.items()
    ]
    body += [
        helper.make_node("Conv", ["inp", "w"], ["c"]),
        helper.make_node(
            "BatchNormalization", ["c", "bn_scale", "bn_bias", "bn_mean", "bn_var"], ["bn"]
        ),
        helper.make_node("Relu", ["bn"], ["out"]),
    ]
    func = helper.make_function(
        "local", "ConvBN", ["inp"], ["out"], body, [helper.make_opsetid("", 17)]
    )
    graph = helper.make_graph(
        [
            helper.make_node("ConvBN", ["x"], ["h"], domain="local"),
            helper.make_node("ConvBN", ["x"], ["z0"], domain="local"),
            helper.make_node("Add", ["h", "z0"], ["z"]),
        ],
        "g",
        [helper.make_tensor_value_info("x", FLOAT, [1, 3, 4, 4])],
        [helper.make_tensor_value_info("z", FLOAT, [1, 4, 4, 4])],
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("local", 1)],
        functions=[func],
    )
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    folded, result = fold(model)
    assert ops(folded)["BatchNormalization"] == 0
    [entry] = result.report.batchnorms
    assert entry.status == "folded" and entry.scope.startswith("function:local::ConvBN")
    assert_equivalent(model, folded)


def _model(
    b: Builder, outputs: list[str], shape: tuple[int, ...] = (1, 3, 6, 6)
) -> onnx.ModelProto:
    graph = helper.make_graph(
        b.nodes,
        "g",
        [helper.make_tensor_value_info("x", FLOAT, list(shape))],
        [helper.make_tensor_value_info(o, FLOAT, [None] * 4) for o in outputs],
        b.inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model
