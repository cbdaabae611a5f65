"""fold_onnx's contract: input kinds, inputs never modified, shared weights, hygiene, saving."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import helper, numpy_helper
from support.graphs import GraphBuilder, make_bn_params, rand
from support.onnx_checks import (
    assert_close,
    assert_equivalent,
    assert_hygiene,
    entry,
    initializer_array,
    node_named,
    op_types,
    ort_run,
    random_feeds,
)

import bnfold
from bnfold.errors import InputError, ModelLoadError, OutputError
from bnfold.onnx.api import OnnxFoldResult


def small_model(seed: int = 0) -> onnx.ModelProto:
    """x → Conv → BN → Relu → Gemm → BN → y, with metadata and doc strings."""
    b = GraphBuilder(seed=seed)
    x = b.input("x", ["N", 3, 4, 4])
    y = b.node("Conv", [x, b.weight("w", [4, 3, 3, 3])], name="conv", pads=[1, 1, 1, 1])
    y = b.bn(y, 4, name="bn1")
    y = b.node("Relu", [y], name="relu")
    y = b.node("Flatten", [y], name="flat")
    y = b.node("Gemm", [y, b.weight("B", [5, 64]), b.weight("C", [5])], name="gemm", transB=1)
    b.bn(y, 5, name="bn2", output="y")
    b.output("y", 2)
    model = b.build()
    model.doc_string = "a model doc string"
    model.graph.doc_string = "a graph doc string"
    model.producer_version = "9.9"
    model.domain = "org.example"
    model.model_version = 7
    helper.set_model_props(model, {"author": "tests", "license": "none"})
    model.opset_import.append(helper.make_opsetid("com.example.unused", 3))
    return model


# -- input kinds ---------------------------------------------------------------------------
def test_proto_in_proto_out_and_input_untouched() -> None:
    model = small_model()
    before = model.SerializeToString()
    result = bnfold.fold(model)
    assert isinstance(result, OnnxFoldResult)
    assert isinstance(result.model, onnx.ModelProto)
    assert isinstance(result.ir_model, ir.Model)
    assert model.SerializeToString() == before
    assert op_types(result.model) == ["Conv", "Relu", "Flatten", "Gemm"]
    assert result.report.counts()["batchnorm"]["folded"] == 2
    assert_hygiene(model, result.model)
    assert_equivalent(model, result.model)


def test_bytes_input_gives_proto() -> None:
    model = small_model()
    result = bnfold.fold(model.SerializeToString())
    assert isinstance(result.model, onnx.ModelProto)
    assert op_types(result.model) == ["Conv", "Relu", "Flatten", "Gemm"]


def test_ir_input_gives_ir_and_is_not_modified() -> None:
    model = small_model()
    ir_model = ir.serde.deserialize_model(model)
    result = bnfold.fold(ir_model)
    assert isinstance(result.model, ir.Model)
    assert result.model is not ir_model
    assert [n.op_type for n in ir_model.graph].count("BatchNormalization") == 2
    assert op_types(result.model) == ["Conv", "Relu", "Flatten", "Gemm"]
    assert_equivalent(model, result.model)


def test_path_input_gives_proto_and_file_untouched(tmp_path: Path) -> None:
    path = tmp_path / "m.onnx"
    onnx.save(small_model(), path)
    before = path.read_bytes()
    result = bnfold.fold(path)
    assert isinstance(result.model, onnx.ModelProto)
    assert bnfold.fold(str(path)).report.counts() == result.report.counts()
    assert path.read_bytes() == before


def test_bad_inputs_raise_bnfold_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError):
        bnfold.fold(12345)
    with pytest.raises(ModelLoadError):
        bnfold.fold(b"certainly not protobuf \xff\xfe")
    with pytest.raises(ModelLoadError):
        bnfold.fold(tmp_path / "missing.onnx")


# -- shared weights ------------------------------------------------------------------------
def test_shared_weight_two_convs_two_bns() -> None:
    """Both Convs fold; the shared initializer keeps its bytes; new tensors get new names."""
    b = GraphBuilder(seed=1)
    x = b.input("x", ["N", 3, 4, 4])
    w = b.weight("shared_w", [4, 3, 3, 3])
    c1 = b.node("Conv", [x, w], name="conv1", pads=[1, 1, 1, 1])
    c2 = b.node("Conv", [x, w], name="conv2", pads=[1, 1, 1, 1])
    b.bn(c1, 4, name="bn1", output="y1")
    b.bn(c2, 4, name="bn2", output="y2")
    b.output("y1", 4)
    b.output("y2", 4)
    model = b.build()
    original_w = initializer_array(model, "shared_w").tobytes()
    raw_before = next(
        t for t in model.graph.initializer if t.name == "shared_w"
    ).SerializeToString()
    result = bnfold.fold(model)
    folded = result.model
    assert op_types(folded) == ["Conv", "Conv"]
    assert entry(result.report, "bn1").into == "conv1"
    assert entry(result.report, "bn2").into == "conv2"
    raw_after = next(t for t in model.graph.initializer if t.name == "shared_w").SerializeToString()
    assert raw_after == raw_before
    w1, w2 = node_named(folded, "conv1").input[1], node_named(folded, "conv2").input[1]
    assert len({w1, w2, "shared_w"}) == 3
    assert not np.array_equal(initializer_array(folded, w1), initializer_array(folded, w2))
    names = [t.name for t in folded.graph.initializer]
    assert len(names) == len(set(names))
    if "shared_w" in names:
        assert initializer_array(folded, "shared_w").tobytes() == original_w
    assert_hygiene(model, folded)
    assert_equivalent(model, folded)


def test_shared_weight_with_one_plain_consumer() -> None:
    """conv1 → BN folds; conv2 (no BN) must still read the original weights."""
    b = GraphBuilder(seed=2)
    x = b.input("x", ["N", 3, 4, 4])
    w = b.weight("shared_w", [4, 3, 3, 3])
    c1 = b.node("Conv", [x, w], name="conv1")
    b.node("Conv", [x, w], name="conv2", outputs=["y2"])
    b.bn(c1, 4, name="bn1", output="y1")
    b.output("y1", 4)
    b.output("y2", 4)
    model = b.build()
    folded = bnfold.fold(model).model
    assert node_named(folded, "conv2").input[1] == "shared_w"
    assert node_named(folded, "conv1").input[1] != "shared_w"
    np.testing.assert_array_equal(
        initializer_array(folded, "shared_w"), initializer_array(model, "shared_w")
    )
    assert_equivalent(model, folded)


def test_new_tensor_names_do_not_collide_with_existing_names() -> None:
    """Names like ``conv.weight_bnfold`` already taken by a value elsewhere are not reused."""
    b = GraphBuilder(seed=3)
    x = b.input("x", ["N", 3, 4, 4])
    taken = b.node("Relu", [x], name="relu", outputs=["conv.weight_bnfold"])
    conv = b.node("Conv", [x, b.weight("w", [4, 3, 3, 3]), b.weight("b", [4])], name="conv")
    b.bn(conv, 4, name="bn", output="y")
    b.node("Identity", [taken], name="keep", outputs=["z"])
    b.output("y", 4)
    b.output("z", 4)
    model = b.build()
    folded = bnfold.fold(model).model
    names = [t.name for t in folded.graph.initializer]
    values = [o for n in folded.graph.node for o in n.output]
    assert not set(names) & set(values)
    assert len(names) == len(set(names))
    assert_hygiene(model, folded)
    assert_equivalent(model, folded)


# -- hygiene -------------------------------------------------------------------------------
def test_metadata_opsets_and_docs_survive() -> None:
    model = small_model()
    folded = bnfold.fold(model).model
    assert_hygiene(model, folded)
    assert {p.key: p.value for p in folded.metadata_props} == {"author": "tests", "license": "none"}
    assert folded.producer_version == "9.9"
    assert folded.domain == "org.example"
    assert folded.model_version == 7


def test_bn_output_that_is_a_graph_output_keeps_its_name_mid_graph() -> None:
    """BN output is both a graph output and consumed further down."""
    b = GraphBuilder(seed=4)
    x = b.input("x", ["N", 3, 4, 4])
    conv = b.node("Conv", [x, b.weight("w", [4, 3, 3, 3])], name="conv")
    b.bn(conv, 4, name="bn", output="features")
    b.node("Relu", ["features"], name="relu", outputs=["y"])
    b.output("features", 4)
    b.output("y", 4)
    model = b.build()
    folded = bnfold.fold(model).model
    assert op_types(folded) == ["Conv", "Relu"]
    assert node_named(folded, "conv").output[0] == "features"
    assert_hygiene(model, folded)
    assert_equivalent(model, folded)


def test_inserted_bias_add_is_topologically_placed() -> None:
    """MatMul → BN adds a bias Add; the graph stays sorted with a consumer after it."""
    b = GraphBuilder(seed=5)
    mm = b.node("MatMul", [b.input("x", ["N", 6]), b.weight("W", [6, 4])], name="mm")
    y = b.bn(mm, 4, name="bn")
    b.node("Relu", [y], name="relu", outputs=["out"])
    b.output("out", 2)
    model = b.build()
    folded = bnfold.fold(model).model
    assert op_types(folded) == ["MatMul", "Add", "Relu"]
    assert_hygiene(model, folded)
    assert_equivalent(model, folded)


# -- saving --------------------------------------------------------------------------------
def test_save_writes_a_loadable_model(tmp_path: Path) -> None:
    src = tmp_path / "m.onnx"
    onnx.save(small_model(), src)
    result = bnfold.fold(src)
    out = result.save(tmp_path / "m.folded.onnx")
    assert Path(out) == tmp_path / "m.folded.onnx"
    assert op_types(out) == ["Conv", "Relu", "Flatten", "Gemm"]
    assert_equivalent(src, out)
    leftovers = [p.name for p in tmp_path.iterdir() if p.name not in ("m.onnx", "m.folded.onnx")]
    assert leftovers == []  # no temporary files left behind


def test_save_refuses_to_overwrite_the_input(tmp_path: Path) -> None:
    src = tmp_path / "m.onnx"
    onnx.save(small_model(), src)
    before = src.read_bytes()
    result = bnfold.fold(src)
    with pytest.raises(OutputError, match="input"):
        result.save(src)
    with pytest.raises(OutputError):
        result.save(tmp_path / "." / "m.onnx")
    assert src.read_bytes() == before


def test_external_data_model_folds_and_saves_with_data_file(tmp_path: Path) -> None:
    """An external-data model folds; the output is written with its own data file beside it."""
    b = GraphBuilder(seed=6)
    x = b.input("x", ["N", 8, 4, 4])
    y = b.node("Conv", [x, b.weight("w1", [16, 8, 3, 3])], name="conv1", pads=[1, 1, 1, 1])
    y = b.bn(y, 16, name="bn")
    b.node("Conv", [y, b.weight("w2", [8, 16, 1, 1])], name="conv2", outputs=["y"])  # no BN
    b.output("y", 4)
    model = b.build()
    src_dir, out_dir = tmp_path / "src", tmp_path / "out"
    src_dir.mkdir()
    out_dir.mkdir()
    src = src_dir / "m.onnx"
    onnx.save(model, src, save_as_external_data=True, location="m.weights", size_threshold=0)
    before = {p.name: p.read_bytes() for p in src_dir.iterdir()}
    assert set(before) == {"m.onnx", "m.weights"}

    result = bnfold.fold(src)
    assert op_types(result.model) == ["Conv", "Conv"]
    out = Path(result.save(out_dir / "f.onnx"))
    files = sorted(p.name for p in out_dir.iterdir())
    assert files == ["f.onnx", "f.onnx.data"]
    proto = onnx.load(out, load_external_data=False)
    locations = {
        e.value
        for t in proto.graph.initializer
        if t.data_location == onnx.TensorProto.EXTERNAL
        for e in t.external_data
        if e.key == "location"
    }
    assert locations == {"f.onnx.data"}  # never points back at the input's data file
    assert {p.name: p.read_bytes() for p in src_dir.iterdir()} == before
    onnx.checker.check_model(str(out), full_check=True)
    feeds = random_feeds(model, np.random.default_rng(0))
    reference = ort_run(src, feeds)["y"]
    os.rename(src_dir / "m.weights", src_dir / "gone")  # the output must not need it
    assert_close(reference, ort_run(out, feeds)["y"])


def test_regression_ir_version_3_fold_output_fails_checker() -> None:
    """IR 3 requires every initializer to be a graph input; folded tensors are new
    initializers that are not, so the output must move to IR 4 to stay valid."""
    b = GraphBuilder(seed=7)
    x = b.input("x", ["N", 3, 5, 5])
    conv = b.node("Conv", [x, b.weight("w", [4, 3, 3, 3])], name="conv")
    b.bn(conv, 4, name="bn", output="y")
    b.output("y", 4)
    model = b.build(opset=7, ir_version=3, check=False)
    for t in model.graph.initializer:
        model.graph.input.append(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
    onnx.checker.check_model(model, full_check=True)
    # IR 3 lists every initializer as a graph input by format, not to override them:
    # they count as constants by default, and the report says so.
    result = bnfold.fold(model)
    assert entry(result.report, "bn").status == "folded"
    assert any("IR version 3" in w for w in result.report.warnings)
    folded = result.model
    assert op_types(folded) == ["Conv"]
    assert folded.ir_version >= 4
    assert [i.name for i in folded.graph.input] == [i.name for i in model.graph.input]
    onnx.checker.check_model(folded, full_check=True)
    assert_equivalent(model, folded)


# -- subgraphs and functions ---------------------------------------------------------------
def _conv_bn_nodes(prefix: str, weight: str, bn_params: list[str]) -> list[onnx.NodeProto]:
    return [
        helper.make_node("Conv", ["x", weight], [f"{prefix}_c"], name=f"{prefix}_conv"),
        helper.make_node(
            "BatchNormalization", [f"{prefix}_c", *bn_params], ["y"], name=f"{prefix}_bn"
        ),
    ]


def test_bn_inside_if_branch_folds_without_touching_outer_weights() -> None:
    """then: Conv(w) → BN; else: Conv(w) → Relu. Both read the outer initializer w."""
    rng = np.random.default_rng(8)
    p = make_bn_params(4, rng)
    inits = [numpy_helper.from_array(rand(rng, [4, 3, 3, 3]), "w")]
    inits += [numpy_helper.from_array(p[k], f"bn.{k}") for k in p]
    y_info = helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [None] * 4)
    then_g = helper.make_graph(
        _conv_bn_nodes("then", "w", [f"bn.{k}" for k in p]), "then", [], [y_info]
    )
    else_nodes = [
        helper.make_node("Conv", ["x", "w"], ["else_c"], name="else_conv"),
        helper.make_node("Relu", ["else_c"], ["y"], name="else_relu"),
    ]
    else_g = helper.make_graph(else_nodes, "else", [], [y_info])
    if_node = helper.make_node(
        "If", ["cond"], ["out"], name="if", then_branch=then_g, else_branch=else_g
    )
    inputs = [
        helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 3, 5, 5]),
        helper.make_tensor_value_info("cond", onnx.TensorProto.BOOL, []),
    ]
    out = helper.make_tensor_value_info("out", onnx.TensorProto.FLOAT, [None] * 4)
    graph = helper.make_graph([if_node], "g", inputs, [out], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model, full_check=True)
    result = bnfold.fold(model)
    e = entry(result.report, "then_bn")
    assert e.status == "folded" and e.scope.startswith("subgraph")
    assert_hygiene(model, result.model)
    for cond in (True, False):
        feeds = {"x": rand(rng, [2, 3, 5, 5]), "cond": np.array(cond)}
        assert_close(ort_run(model, feeds)["out"], ort_run(result.model, feeds)["out"])


def test_bn_inside_local_function_folds() -> None:
    """Inside a function there are no initializers: folded weights become Constant nodes."""
    rng = np.random.default_rng(9)
    p = make_bn_params(4, rng)
    arrays = {"w": rand(rng, [4, 3, 3, 3]), **{f"bn.{k}": v for k, v in p.items()}}
    consts = [
        helper.make_node("Constant", [], [n], name=f"{n}_const", value=numpy_helper.from_array(a))
        for n, a in arrays.items()
    ]
    body = consts + _conv_bn_nodes("f", "w", [f"bn.{k}" for k in p])
    func = helper.make_function(
        "local", "ConvBn", ["x"], ["y"], body, [helper.make_opsetid("", 17)]
    )
    call = helper.make_node("ConvBn", ["x"], ["out"], domain="local", name="call")
    x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 3, 5, 5])
    out = helper.make_tensor_value_info("out", onnx.TensorProto.FLOAT, [None] * 4)
    model = helper.make_model(
        helper.make_graph([call], "g", [x], [out]),
        opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("local", 1)],
        ir_version=8,
        functions=[func],
    )
    onnx.checker.check_model(model, full_check=True)
    result = bnfold.fold(model)
    assert entry(result.report, "f_bn").status == "folded"
    assert "BatchNormalization" not in [n.op_type for n in result.model.functions[0].node]
    assert_hygiene(model, result.model)
    assert_equivalent(model, result.model)
