"""FoldConstantsPass: ops evaluated by a direct reference kernel give the evaluator's result."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper
from onnx.reference import ReferenceEvaluator

from bnfold.onnx.context import FoldContext
from bnfold.onnx.passes.fold_constants import FoldConstantsPass

CASES = [
    (np.array(0.0, np.float32), [4]),
    (np.array(0.0, np.float32), []),  # a 0-d result stays an array
    (np.arange(3, dtype=np.float16).reshape(3, 1), [2, 1, 4]),
    (np.arange(6, dtype=np.int64).reshape(2, 3), [3]),
]


def _expand_model(data: np.ndarray, shape: list[int]) -> ir.Model:
    node = helper.make_node("Expand", ["data", "shape"], ["y"], name="expand")
    relu = helper.make_node("Identity", ["y"], ["out"], name="keep")
    inits = [
        helper.make_tensor(
            "data",
            helper.np_dtype_to_tensor_dtype(data.dtype),
            data.shape,
            data.reshape(-1).tolist(),
        ),
        helper.make_tensor("shape", TensorProto.INT64, [len(shape)], shape),
    ]
    out = helper.make_tensor_value_info("out", helper.np_dtype_to_tensor_dtype(data.dtype), None)
    graph = helper.make_graph([node, relu], "g", [], [out], initializer=inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    return ir.serde.deserialize_model(proto)


@pytest.mark.parametrize(("data", "shape"), CASES)
def test_expand_folds_to_the_reference_evaluators_result(
    data: np.ndarray, shape: list[int]
) -> None:
    model = _expand_model(data, shape)
    expected = ReferenceEvaluator(ir.serde.serialize_model(model)).run(None, {})[0]
    assert FoldConstantsPass(FoldContext(model))(model).modified
    assert [n.op_type for n in model.graph] == ["Identity"]
    got = model.graph.node(0).inputs[0].const_value.numpy()
    assert isinstance(got, np.ndarray)
    assert got.dtype == expected.dtype and got.shape == expected.shape
    assert got.tobytes() == np.asarray(expected).tobytes()


def test_expand_with_a_negative_shape_is_left_alone() -> None:
    model = _expand_model(np.array(0.0, np.float32), [-1])
    assert not FoldConstantsPass(FoldContext(model))(model).modified
    assert [n.op_type for n in model.graph] == ["Expand", "Identity"]
