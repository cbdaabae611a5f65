"""Back-to-back Reshape / Transpose chains collapse exactly (or are left alone)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from support.onnx_checks import assert_equivalent, assert_hygiene, op_types

import bnfold


def chain_model(
    nodes: list[onnx.NodeProto], inits: dict[str, list[int]], out_shape
) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes,
        "layout",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 4, 5])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)],
        [numpy_helper.from_array(np.array(v, dtype=np.int64), k) for k, v in inits.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model, full_check=True)
    return model


def test_reshape_chain_collapses_to_last_reshape() -> None:
    model = chain_model(
        [
            helper.make_node("Reshape", ["x", "a"], ["t"]),
            helper.make_node("Reshape", ["t", "b"], ["y"]),
        ],
        {"a": [6, 20], "b": [2, -1, 5]},
        [2, 12, 5],
    )
    folded = bnfold.fold(model).model
    assert op_types(folded) == ["Reshape"]
    assert_hygiene(model, folded)
    assert_equivalent(model, folded)


def test_reshape_with_zero_copy_dim_is_not_collapsed() -> None:
    """A 0 copies a dim of the intermediate shape, which the outer Reshape cannot see."""
    model = chain_model(
        [
            helper.make_node("Reshape", ["x", "a"], ["t"]),
            helper.make_node("Reshape", ["t", "b"], ["y"]),
        ],
        {"a": [6, 20], "b": [0, 4, 5]},
        [6, 4, 5],
    )
    folded = bnfold.fold(model).model
    assert op_types(folded) == ["Reshape", "Reshape"]
    assert_equivalent(model, folded)


def test_inverse_transposes_vanish() -> None:
    model = chain_model(
        [
            helper.make_node("Transpose", ["x"], ["t"], perm=[0, 2, 3, 1]),
            helper.make_node("Transpose", ["t"], ["u"], perm=[0, 3, 1, 2]),
            helper.make_node("Relu", ["u"], ["y"]),
        ],
        {},
        [2, 3, 4, 5],
    )
    folded = bnfold.fold(model).model
    assert op_types(folded) == ["Relu"]
    assert_equivalent(model, folded)


def test_transposes_compose_into_one() -> None:
    model = chain_model(
        [
            helper.make_node("Transpose", ["x"], ["t"], perm=[0, 2, 3, 1]),
            helper.make_node("Transpose", ["t"], ["y"], perm=[0, 1, 3, 2]),
        ],
        {},
        [2, 4, 3, 5],
    )
    folded = bnfold.fold(model).model
    assert op_types(folded) == ["Transpose"]
    assert_equivalent(model, folded)


def test_inner_result_read_elsewhere_is_kept() -> None:
    model = chain_model(
        [
            helper.make_node("Transpose", ["x"], ["t"], perm=[0, 2, 3, 1]),
            helper.make_node("Transpose", ["t"], ["u"], perm=[0, 3, 1, 2]),
            helper.make_node("ReduceSum", ["t"], ["s"], keepdims=1),
            helper.make_node("Add", ["u", "s"], ["y"]),
        ],
        {},
        [2, 3, 4, 5],
    )
    folded = bnfold.fold(model).model
    assert op_types(folded).count("Transpose") == 2
    assert_equivalent(model, folded)
