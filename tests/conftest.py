"""Shared pytest setup: the ``--slow`` switch and tiny ONNX model fixtures.

``conv_bn_path`` / ``conv_bn_proto`` (Conv → BatchNormalization → Relu) and ``relu_path`` serve
the latency, CLI and benchmark-script tests.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx.numpy_helper as nh
import onnx.parser
import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--slow", action="store_true", default=False, help="run tests marked slow")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--slow"):
        return
    skip_slow = pytest.mark.skip(reason="slow test: run with --slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip_slow)


CONV_BN = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[N,3,8,8] x) => (float[N,4,8,8] y)
  <float[4,3,3,3] w, float[4] s, float[4] b, float[4] m, float[4] v> {
  c = Conv <pads=[1,1,1,1]> (x, w)
  d = BatchNormalization (c, s, b, m, v)
  y = Relu (d)
}
"""

RELU = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[N,3,8,8] z) => (float[N,3,8,8] y) {
  y = Relu (z)
}
"""


def conv_bn_model() -> onnx.ModelProto:
    """Conv → BatchNormalization → Relu with random weights and a symbolic batch."""
    model = onnx.parser.parse_model(CONV_BN)
    rng = np.random.default_rng(0)
    for name, shape in [("w", (4, 3, 3, 3)), ("s", (4,)), ("b", (4,)), ("m", (4,)), ("v", (4,))]:
        data = (rng.random(shape) + 0.5).astype(np.float32)
        model.graph.initializer.append(nh.from_array(data, name))
    onnx.checker.check_model(model)
    return model


@pytest.fixture
def conv_bn_proto() -> onnx.ModelProto:
    return conv_bn_model()


@pytest.fixture
def conv_bn_path(tmp_path):
    path = tmp_path / "conv_bn.onnx"
    onnx.save(conv_bn_model(), path)
    return str(path)


@pytest.fixture
def relu_path(tmp_path):
    """A model whose input is named differently from conv_bn's."""
    path = tmp_path / "relu.onnx"
    onnx.save(onnx.parser.parse_model(RELU), path)
    return str(path)
