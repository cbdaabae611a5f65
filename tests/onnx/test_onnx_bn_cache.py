"""read_batchnorm caches (s, t) per BN and parameter tensors, and never serves a stale map."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir

from bnfold.onnx.batchnorm import read_batchnorm
from bnfold.onnx.context import FoldContext

_TEXT = """
<ir_version: 8, opset_import: ["" : 15]>
g (float[1, 2, 4, 4] x) => (float[1, 2, 4, 4] y) {
  y = BatchNormalization <epsilon = 0.001> (x, gamma, beta, mean, var)
}
"""


def _model() -> ir.Model:
    proto = onnx.parser.parse_model(_TEXT)
    params = {"gamma": [0.5, -1.5], "beta": [0.1, 0.2], "mean": [0.3, -0.4], "var": [1.0, 2.0]}
    for name, data in params.items():
        proto.graph.initializer.append(
            onnx.numpy_helper.from_array(np.array(data, np.float32), name)
        )
    return ir.serde.deserialize_model(proto)


def test_repeated_reads_give_equal_maps_the_caller_owns() -> None:
    model = _model()
    ctx = FoldContext(model)
    node = next(iter(model.graph))
    first = read_batchnorm(ctx, node)
    assert not isinstance(first, str)
    first.scale[:] = 0.0  # a caller scribbling on its copy
    second = read_batchnorm(ctx, node)
    assert not isinstance(second, str)
    eps = np.float64(np.float32(0.001))
    expect = np.array([0.5, -1.5]) / np.sqrt(np.array([1.0, 2.0]) + eps)
    np.testing.assert_array_equal(second.scale, expect)
    assert second.node is node


def test_new_parameter_tensor_is_read_again() -> None:
    model = _model()
    ctx = FoldContext(model)
    node = next(iter(model.graph))
    before = read_batchnorm(ctx, node)
    assert not isinstance(before, str)
    var = node.inputs[4]
    assert var is not None
    var.const_value = ir.Tensor(np.array([3.0, 4.0], np.float32), name=var.name)
    after = read_batchnorm(ctx, node)
    assert not isinstance(after, str)
    eps = np.float64(np.float32(0.001))
    np.testing.assert_array_equal(
        after.scale, np.array([0.5, -1.5]) / np.sqrt([3.0 + eps, 4.0 + eps])
    )
