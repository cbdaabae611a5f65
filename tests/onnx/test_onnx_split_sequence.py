"""SplitToSequence + constant-index SequenceAt (dynamo's torch.split) becomes one Split."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from support.onnx_checks import assert_equivalent, assert_hygiene, op_types

import bnfold


def split_model(
    opset: int, positions: list[int], *, constant_index: bool = True
) -> onnx.ModelProto:
    """x (N,6,4) → SplitToSequence(sizes [2,3,1], axis=1) → SequenceAt(position) per output."""
    inits = [numpy_helper.from_array(np.array([2, 3, 1], dtype=np.int64), "sizes")]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 6, 4])]
    nodes = [helper.make_node("SplitToSequence", ["x", "sizes"], ["seq"], axis=1)]
    outputs = []
    for k, pos in enumerate(positions):
        if constant_index:
            inits.append(numpy_helper.from_array(np.array(pos, dtype=np.int64), f"pos{k}"))
        else:  # a run-time index: the chunk width is unknown
            inputs.append(helper.make_tensor_value_info(f"pos{k}", TensorProto.INT64, []))
        nodes.append(helper.make_node("SequenceAt", ["seq", f"pos{k}"], [f"y{k}"]))
        nodes.append(helper.make_node("Relu", [f"y{k}"], [f"out{k}"]))
        width = [2, 3, 1][pos]
        outputs.append(helper.make_tensor_value_info(f"out{k}", TensorProto.FLOAT, ["N", width, 4]))
    graph = helper.make_graph(nodes, "split", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    onnx.checker.check_model(model, full_check=True)
    return model


@pytest.mark.parametrize("opset", [11, 13, 18])
def test_split_to_sequence_becomes_split(opset: int) -> None:
    model = split_model(opset, [0, 2, -2])
    folded = bnfold.fold(model).model
    assert "SplitToSequence" not in op_types(folded)
    assert "SequenceAt" not in op_types(folded)
    assert op_types(folded).count("Split") == 1
    assert_hygiene(model, folded)
    assert_equivalent(model, folded)


def test_runtime_sequence_index_is_left_alone() -> None:
    model = split_model(13, [0, 1], constant_index=False)
    folded = bnfold.fold(model).model
    assert op_types(folded) == op_types(model)
