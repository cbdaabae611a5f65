"""Input synthesis, symbolic shapes, npz files, perturbation; weight jitter; probes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from support import verify_models as vm

from bnfold.equivalence import inputs as inp
from bnfold.equivalence.jitter import jittered_copy
from bnfold.equivalence.probes import common_probes, find_probes, with_probes
from bnfold.equivalence.signature import TensorSpec
from bnfold.errors import InputError


def _spec(name: str, dtype: str, shape: tuple) -> TensorSpec:
    return TensorSpec(name, np.dtype(dtype), shape)


def test_default_dims() -> None:
    specs = [
        _spec("image", "float32", ("N", 3, "H", "W")),
        _spec("ids", "int64", ("N", "seq")),
        _spec("volume", "float32", (None, 1, "D", "D", "D")),
    ]
    shapes, defaulted = inp.resolve_shapes(specs, {})
    assert shapes["image"] == (1, 3, 224, 224)
    assert shapes["ids"] == (1, 64)
    assert shapes["volume"] == (1, 1, 32, 32, 32)
    assert defaulted["N"] == 1 and defaulted["H"] == 224 and defaulted["seq"] == 64


def test_given_shapes_bind_shared_dim_names() -> None:
    specs = [_spec("ids", "int64", ("batch", "seq")), _spec("mask", "bool", ("batch", "seq"))]
    shapes, defaulted = inp.resolve_shapes(specs, {"ids": (2, 7)})
    assert shapes["mask"] == (2, 7)
    assert not defaulted


@pytest.mark.parametrize(
    ("fixed", "message"),
    [
        ({"x": (1, 4, 8, 8)}, "does not fit"),
        ({"x": (1, 3)}, "does not fit"),
        ({"y": (1,)}, "unknown"),
    ],
)
def test_bad_shapes(fixed: dict, message: str) -> None:
    with pytest.raises(InputError, match=message):
        inp.resolve_shapes([_spec("x", "float32", ("N", 3, 8, 8))], fixed)


def test_synthesis_per_dtype() -> None:
    specs = [
        _spec("f16", "float16", (4, 5)),
        _spec("f32", "float32", (4, 5)),
        _spec("i32", "int32", (100,)),
        _spec("ids", "int64", (100,)),
        _spec("pix", "uint8", (100,)),
        _spec("mask", "bool", (100,)),
    ]
    shapes = {s.name: s.shape for s in specs}
    feeds = inp.synthesize(specs, shapes, np.random.default_rng(0), {"ids": 5})
    assert {k: v.dtype.name for k, v in feeds.items()} == {
        "f16": "float16",
        "f32": "float32",
        "i32": "int32",
        "ids": "int64",
        "pix": "uint8",
        "mask": "bool",
    }
    assert feeds["ids"].min() >= 0 and feeds["ids"].max() < 5
    assert feeds["i32"].max() < inp.DEFAULT_INDEX_BOUND
    assert feeds["mask"].any() and not feeds["mask"].all()
    assert feeds["f32"].std() > 0.3
    again = inp.synthesize(specs, shapes, np.random.default_rng(0), {"ids": 5})
    other = inp.synthesize(specs, shapes, np.random.default_rng(1), {"ids": 5})
    assert np.array_equal(feeds["f32"], again["f32"])
    assert not np.array_equal(feeds["f32"], other["f32"])


def test_index_bounds_from_gather_tables() -> None:
    model = vm.embedding_gemm_bn(np.random.default_rng(0), vocab=7)
    assert inp.index_bounds(model, ["ids"]) == {"ids": 7}
    cast = helper.make_node("Cast", ["raw"], ["ids"], to=TensorProto.INT64)
    model.graph.node.insert(0, cast)
    model.graph.input[0].name = "raw"
    assert inp.index_bounds(model, ["raw"]) == {"raw": 7}


def test_perturb_moves_floats_by_ulps_only() -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal(1000).astype(np.float32)
    ids = np.arange(5)
    moved = inp.perturb({"x": x, "ids": ids}, rng, ulps=2)
    assert moved is not None and moved["ids"] is ids
    rel = np.abs(moved["x"].astype(np.float64) / x - 1)
    eps = np.finfo(np.float32).eps
    assert rel.max() <= 3.01 * eps and np.count_nonzero(moved["x"] != x) > 900
    assert inp.perturb({"ids": ids}, rng, ulps=2) is None


def test_npz_and_coercion(tmp_path: Path) -> None:
    specs = [_spec("x", "float32", ("N", 3)), _spec("ids", "int64", ("N",))]
    np.savez(tmp_path / "in.npz", x=np.zeros((2, 3)), ids=np.array([1, 2], np.int32))
    feeds = inp.coerce_feeds(specs, inp.load_npz(tmp_path / "in.npz"))
    assert feeds["x"].dtype == np.float32 and feeds["ids"].dtype == np.int64
    with pytest.raises(InputError, match="expects"):
        inp.coerce_feeds(specs, {"x": np.zeros((2, 3), np.int64)})
    with pytest.raises(InputError):
        inp.load_npz(tmp_path / "missing.npz")


def test_jitter_moves_weights_not_semantic_constants() -> None:
    model = vm.conv_bn(np.random.default_rng(0))
    scales = numpy_helper.from_array(np.array([1, 1, 0.5, 0.5], np.float32), "scales")
    model.graph.initializer.append(scales)
    model.graph.node.append(helper.make_node("Resize", ["y", "", "scales"], ["small"]))
    model.graph.output.append(onnx.ValueInfoProto(name="small"))
    before = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    after = {
        t.name: numpy_helper.to_array(t)
        for t in jittered_copy(model, np.random.default_rng(0), ulps=1).graph.initializer
    }
    assert np.array_equal(before["scales"], after["scales"])
    for name in ("W", "B", "bn_gamma", "bn_var"):
        moved = np.abs(after[name].astype(np.float64) / before[name] - 1)
        assert 0 < moved.max() <= 1.5 * np.finfo(np.float32).eps, name  # eps, then rounding
    assert np.array_equal(numpy_helper.to_array(model.graph.initializer[0]), before["W"])


def test_probes_found_through_layout_ops() -> None:
    model = vm.conv_bn(np.random.default_rng(0), activation="Softmax")
    model.graph.node[-1].output[0] = "soft"
    model.graph.node.append(helper.make_node("Flatten", ["soft"], ["y"]))
    probes = find_probes(model)
    assert probes["y"].op == "Softmax" and probes["y"].value == "z"
    probed = with_probes(model, [probes["y"]])
    assert [o.name for o in probed.graph.output] == ["y", "y::Softmax_input"]
    assert len(model.graph.output) == 1  # the input model is untouched
    plain = vm.conv_bn(np.random.default_rng(0))
    assert find_probes(plain) == {}
    assert common_probes(model, plain) == []


def test_jitter_leaves_constants_read_by_subgraphs() -> None:
    model = vm.conv_bn(np.random.default_rng(0))
    then_branch = helper.make_graph(
        [helper.make_node("Identity", ["B"], ["out"])],
        "then",
        [],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)],
    )
    cond = numpy_helper.from_array(np.array(True), "cond")
    model.graph.initializer.append(cond)
    model.graph.node.append(
        helper.make_node(
            "If", ["cond"], ["picked"], then_branch=then_branch, else_branch=then_branch
        )
    )
    jittered = jittered_copy(model, np.random.default_rng(0), ulps=1)
    before = {t.name: t.raw_data for t in model.graph.initializer}
    after = {t.name: t.raw_data for t in jittered.graph.initializer}
    assert after["B"] == before["B"]  # also read inside the If branches
    assert after["W"] != before["W"]


def test_regression_jitter_moved_float_pad_arithmetic_and_the_copy_no_longer_ran() -> None:
    """NASNet (legacy export) computes pads in float: Cast(Div(Sub(size, k), 2)) to int64.

    One ulp on those constants moved a pad by one; the jittered reference failed in an
    Add ("broadcast … 15 by 16") and bnfold exited 2 on a correct fold.
    """
    from onnx import helper as oh

    nodes = [
        oh.make_node("Sub", ["size", "k"], ["d"]),
        oh.make_node("Div", ["d", "two"], ["half"]),
        oh.make_node("Cast", ["half"], ["pads"], to=onnx.TensorProto.INT64),
        oh.make_node("Pad", ["x", "pads"], ["padded"]),
        oh.make_node("Mul", ["padded", "w"], ["y"]),
    ]
    inits = [
        onnx.numpy_helper.from_array(np.array([0, 0, 7, 7, 0, 0, 7, 7], np.float32) * 1.0, "size"),
        onnx.numpy_helper.from_array(np.float32(3.0), "k"),
        onnx.numpy_helper.from_array(np.float32(2.0), "two"),
        onnx.numpy_helper.from_array(np.full((1, 1, 1, 1), 0.5, np.float32), "w"),
    ]
    graph = oh.make_graph(
        nodes,
        "g",
        [oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 1, 4, 4])],
        [oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)],
        initializer=inits,
    )
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)])
    moved = jittered_copy(model, np.random.default_rng(0), 4)
    before = {t.name: t.raw_data or t.float_data for t in model.graph.initializer}
    after = {t.name: t.raw_data or t.float_data for t in moved.graph.initializer}
    assert all(after[n] == before[n] for n in ("size", "k", "two"))  # shape arithmetic kept
    assert after["w"] != before["w"]  # the weight still moves
