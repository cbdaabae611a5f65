"""Input synthesis and model statistics."""

from __future__ import annotations

import os

import numpy as np
import onnx
import onnx_ir
import pytest

from bnfold.cli.common import parse_shape
from bnfold.errors import InputError, ModelLoadError
from bnfold.latency.inputs import make_feeds
from bnfold.latency.model_stats import resolve_model
from bnfold.latency.sessions import create_session


def test_symbolic_dims_become_one_and_shapes_override(conv_bn_path):
    session = create_session(conv_bn_path, "disable").session
    feeds = make_feeds(session)
    assert feeds["x"].shape == (1, 3, 8, 8)
    assert feeds["x"].dtype == np.float32
    assert make_feeds(session, {"x": (2, 3, 8, 8)})["x"].shape == (2, 3, 8, 8)
    np.testing.assert_array_equal(make_feeds(session)["x"], feeds["x"])  # seeded


def test_shape_for_unknown_input_is_rejected(conv_bn_path):
    session = create_session(conv_bn_path, "disable").session
    with pytest.raises(InputError, match="no model input: y"):
        make_feeds(session, {"y": (1,)})


@pytest.mark.parametrize(
    ("text", "expected"),
    [("x:1x3x224x224", ("x", (1, 3, 224, 224))), ("a:b:2,5", ("a:b", (2, 5)))],
)
def test_parse_shape(text, expected):
    assert parse_shape(text) == expected


@pytest.mark.parametrize("text", ["x", "x:", ":1x2", "x:1xa"])
def test_parse_shape_rejects(text):
    with pytest.raises(InputError):
        parse_shape(text)


def test_stats_of_a_path(conv_bn_path):
    source = resolve_model(conv_bn_path)
    stats = source.stats
    assert source.ort_input == conv_bn_path
    assert stats.label == "conv_bn.onnx"
    assert stats.size_bytes == os.path.getsize(conv_bn_path)
    assert (stats.nodes, stats.batchnorm, stats.dropout) == (3, 1, 0)
    assert stats.op_counts == {"Conv": 1, "BatchNormalization": 1, "Relu": 1}


def test_stats_count_external_data(tmp_path, conv_bn_proto):
    path = tmp_path / "ext.onnx"
    onnx.save(
        conv_bn_proto,
        path,
        save_as_external_data=True,
        location="ext.bin",
        size_threshold=0,
    )
    stats = resolve_model(str(path)).stats
    assert stats.size_bytes == os.path.getsize(path) + os.path.getsize(tmp_path / "ext.bin")


def test_in_memory_models_are_accepted(conv_bn_proto):
    proto = conv_bn_proto
    for model in (proto, proto.SerializeToString(), onnx_ir.from_proto(proto)):
        source = resolve_model(model, "mem")
        assert isinstance(source.ort_input, bytes)
        assert source.stats.label == "mem"
        assert source.stats.batchnorm == 1


def test_bad_inputs(tmp_path):
    with pytest.raises(ModelLoadError, match="not found"):
        resolve_model(str(tmp_path / "none.onnx"))
    with pytest.raises(ModelLoadError, match="as ONNX"):
        resolve_model(b"\x00garbage\xff")
    with pytest.raises(InputError, match="cannot benchmark a int"):
        resolve_model(3)
