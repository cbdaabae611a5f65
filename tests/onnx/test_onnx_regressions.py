"""Regression tests for core bugs found while extending the folder (one per bug)."""

from __future__ import annotations

import numpy as np
import onnx
from support.fold_checks import assert_equivalent, fold, only_bn, ops
from support.graphs import Builder


def test_bug_zero_bias_of_wrong_shape_blocked_conv3d_fold() -> None:
    """torch dynamo (optimize=False) gives a bias-free Conv3d a zero bias of shape (C, 2)."""
    b = Builder(seed=1)
    zero = b.const(np.zeros((4, 2), np.float32))
    c = b.op("Conv", ["x", b.weight((4, 2, 1, 1, 1)), zero])
    y = b.bn(c, 4)
    graph = onnx.helper.make_graph(
        b.nodes,
        "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 2, 2, 3, 3])],
        [onnx.helper.make_tensor_value_info(y, onnx.TensorProto.FLOAT, [1, 4, 2, 3, 3])],
        b.inits,
    )
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])
    folded, result = fold(model)
    assert only_bn(result).status == "folded"
    conv = next(n for n in folded.graph.node if n.op_type == "Conv")
    bias = next(t for t in folded.graph.initializer if t.name == conv.input[2])
    assert list(bias.dims) == [4]  # a valid 1-D bias now (the original does not run in ORT)


def test_bug_shape_consumer_blocked_fold() -> None:
    """``Shape(conv_out)`` (torch's reshape_as / dynamic views) reads no values."""
    b = Builder(seed=2)
    c = b.op("Conv", ["x", b.weight((4, 3, 1, 1))])
    y = b.bn(c, 4)
    shape = b.op("Shape", [c])
    z = b.op("Reshape", [y, shape])
    model = b.model({"x": (1, 3, 4, 4)}, [z])
    folded, result = fold(model)
    assert only_bn(result).status == "folded"
    assert ops(folded)["BatchNormalization"] == 0
    assert_equivalent(model, folded)
    b = Builder(seed=3)
    c = b.op("Conv", ["x", b.weight((4, 3, 1, 1))])
    m = b.op("Mul", [c, b.const(np.arange(1, 5, dtype=np.float32).reshape(4, 1, 1))])
    z = b.op("Reshape", [m, b.op("Shape", [c])])
    model = b.model({"x": (1, 3, 4, 4)}, [z])
    folded, _ = fold(model)
    assert ops(folded)["Mul"] == 0  # the channel-affine pass too
    assert_equivalent(model, folded)
