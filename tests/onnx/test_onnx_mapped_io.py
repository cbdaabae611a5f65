"""The memory-mapped read (``onnx/io/mapped.py``) and the direct weight write (``stream_save``).

Both are fast paths that must be invisible: the model read is the model ``onnx.load``
reads, the file written parses to the message onnx-ir would serialise, and every file the
fast path does not understand falls back to the regular parser and its errors.
"""

from __future__ import annotations

from pathlib import Path

import ml_dtypes
import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import helper, numpy_helper
from support.graphs import GraphBuilder
from support.onnx_checks import assert_equivalent, op_count

import bnfold
from bnfold.errors import ModelLoadError
from bnfold.onnx.io import files as io
from bnfold.onnx.io import mapped, stream_save, wire

BIG = (64, 64, 3, 3)  # 147 KiB of float32: above the mapping threshold


@pytest.fixture(autouse=True)
def map_small_files(monkeypatch: pytest.MonkeyPatch) -> None:
    """The test models are small files: map them anyway (the size cut-off has its own test)."""
    monkeypatch.setattr(mapped, "MIN_MAPPED_FILE_BYTES", 0)


def conv_bn_model(seed: int = 0, dtype: type = np.float32) -> onnx.ModelProto:
    """x → Conv(64→64, 3×3, bias) → BN → y, with weights large enough to be mapped."""
    b = GraphBuilder(seed, dtype)
    x = b.input("x", [1, 64, 8, 8])
    conv = b.node("Conv", [x, b.weight("w", BIG), b.weight("b", [64])], pads=[1, 1, 1, 1])
    b.bn(conv, 64, output="y")
    b.output("y", 4)
    return b.build()


def mixed_dtype_model() -> onnx.ModelProto:
    """Conv→BN plus large initializers of several types, each passed through to an output.

    Names of different lengths put the payloads at odd file offsets (unaligned views).
    """
    model = conv_bn_model()
    rng = np.random.default_rng(1)
    extra = {
        "i64": rng.integers(-(2**40), 2**40, 20000, dtype=np.int64),
        "halfs": rng.normal(size=40000).astype(np.float16),
        "bf": rng.normal(size=40000).astype(ml_dtypes.bfloat16),
        "mask_": rng.integers(0, 2, 70000).astype(bool),
        "u8x": rng.integers(0, 255, 70000, dtype=np.uint8),
    }
    for name, array in extra.items():
        if array.dtype == ml_dtypes.bfloat16:
            tensor = helper.make_tensor(
                name, onnx.TensorProto.BFLOAT16, array.shape, array.view(np.uint16).tobytes(), True
            )
        else:
            tensor = numpy_helper.from_array(array, name)
        tensor.doc_string = f"doc of {name}"
        model.graph.initializer.append(tensor)
        model.graph.node.append(helper.make_node("Identity", [name], [f"{name}_out"]))
        elem = tensor.data_type
        output = helper.make_tensor_value_info(f"{name}_out", elem, list(array.shape))
        model.graph.output.append(output)
    onnx.checker.check_model(model, full_check=True)
    return model


def _save(model: onnx.ModelProto, path: Path) -> Path:
    onnx.save(model, str(path))
    return path


def _without_raw(proto: onnx.ModelProto, names: set[str]) -> onnx.ModelProto:
    copy = onnx.ModelProto()
    copy.CopyFrom(proto)
    for tensor in copy.graph.initializer:
        if tensor.name in names:
            tensor.ClearField("raw_data")
    return copy


# -- reading --------------------------------------------------------------------------------
def test_mapped_read_is_the_regular_parse_with_weights_as_views(tmp_path: Path) -> None:
    path = _save(mixed_dtype_model(), tmp_path / "m.onnx")
    regular = onnx.load(str(path))
    result = mapped.read_mapped(path)
    assert result is not None
    assert set(result.weights) == {"w", "i64", "halfs", "bf", "mask_", "u8x"}
    assert result.proto == _without_raw(regular, set(result.weights))
    by_name = {t.name: t for t in regular.graph.initializer}
    for name, view in result.weights.items():
        expected = numpy_helper.to_array(by_name[name])
        assert view.shape == expected.shape
        assert view.tobytes() == expected.tobytes(), name
        assert not view.flags.writeable  # nothing can write into the input file
    assert any(not v.flags.aligned for v in result.weights.values())


def test_load_model_gives_the_same_ir_as_the_regular_parse(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _save(mixed_dtype_model(), tmp_path / "m.onnx")
    fast = io.load_model(path)
    monkeypatch.setattr(mapped, "read_mapped", lambda _path: None)
    slow = io.load_model(path)
    assert list(fast.graph.initializers) == list(slow.graph.initializers)
    for name, value in fast.graph.initializers.items():
        other = slow.graph.initializers[name]
        assert value.const_value is not None and other.const_value is not None
        assert value.const_value.dtype == other.const_value.dtype
        assert value.const_value.tobytes() == other.const_value.tobytes()
        assert value.const_value.doc_string == other.const_value.doc_string
    assert isinstance(fast.graph.initializers["w"].const_value, ir.Tensor)


def test_small_weights_are_parsed_as_usual(tmp_path: Path) -> None:
    b = GraphBuilder(0)
    x = b.input("x", [1, 4, 5, 5])
    b.bn(b.node("Conv", [x, b.weight("w", [4, 4, 3, 3])]), 4, output="y")
    b.output("y", 4)
    assert mapped.read_mapped(_save(b.build(), tmp_path / "small.onnx")) is None


def test_files_below_the_size_cut_off_are_parsed_as_usual(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _save(conv_bn_model(), tmp_path / "m.onnx")
    monkeypatch.setattr(mapped, "MIN_MAPPED_FILE_BYTES", path.stat().st_size + 1)
    assert mapped.read_mapped(path) is None
    monkeypatch.setattr(mapped, "MIN_MAPPED_FILE_BYTES", path.stat().st_size)
    assert mapped.read_mapped(path) is not None


def test_packed_dims_are_read(tmp_path: Path) -> None:
    """proto2 writes dims unpacked, but a packed encoding is just as valid on the wire."""
    array = np.arange(20000, dtype=np.float32).reshape(100, 200)
    packed = wire.varint(100) + wire.varint(200)
    tensor = (
        wire.len_field(1, len(packed))
        + packed
        + wire.varint(2 << 3)
        + wire.varint(onnx.TensorProto.FLOAT)
        + wire.len_field(8, 1)
        + b"t"
        + wire.len_field(9, array.nbytes)
        + array.tobytes()
    )
    model = helper.make_model(
        helper.make_graph(
            [helper.make_node("Identity", ["t"], ["y"])],
            "g",
            [],
            [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [100, 200])],
        ),
        opset_imports=[helper.make_opsetid("", 17)],
    )
    data = model.SerializeToString() + _graph_chunk(tensor)
    path = tmp_path / "packed.onnx"
    path.write_bytes(data)
    result = mapped.read_mapped(path)
    assert result is not None
    np.testing.assert_array_equal(result.weights["t"], array)
    assert list(result.proto.graph.initializer[0].dims) == [100, 200]


def _graph_chunk(tensor: bytes) -> bytes:
    inner = wire.len_field(5, len(tensor)) + tensor
    return wire.len_field(7, len(inner)) + inner


def test_duplicate_initializer_names_take_the_regular_parser(tmp_path: Path) -> None:
    model = conv_bn_model()
    weight = next(t for t in model.graph.initializer if t.name == "w")
    path = tmp_path / "dup.onnx"
    path.write_bytes(model.SerializeToString() + _graph_chunk(weight.SerializeToString()))
    assert mapped.read_mapped(path) is None


def test_payload_of_the_wrong_size_takes_the_regular_parser(tmp_path: Path) -> None:
    model = conv_bn_model()
    weight = next(t for t in model.graph.initializer if t.name == "w")
    weight.raw_data = weight.raw_data[:-4]
    path = tmp_path / "short.onnx"
    path.write_bytes(model.SerializeToString())
    assert mapped.read_mapped(path) is None
    with pytest.raises(ModelLoadError, match=r"'w' holds 147452 bytes but .* needs 147456"):
        bnfold.fold(path)


@pytest.mark.parametrize(
    "data",
    [b"\x0b\x00\x0c", b"\x3a\xff\xff\xff\xff\x0f", b"\x00\x01", b"\x3a\x05abc"],
    ids=["group", "huge-length", "field-zero", "cut-off"],
)
def test_malformed_wire_data_takes_the_regular_parser(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "bad.onnx"
    path.write_bytes(conv_bn_model().SerializeToString() + data)
    assert mapped.read_mapped(path) is None


def test_truncated_model_keeps_the_regular_one_line_error(tmp_path: Path) -> None:
    data = conv_bn_model().SerializeToString()
    path = tmp_path / "cut.onnx"
    path.write_bytes(data[: len(data) // 2])
    assert mapped.read_mapped(path) is None
    with pytest.raises(ModelLoadError, match="corrupt or truncated"):
        bnfold.fold(path)


# -- writing --------------------------------------------------------------------------------
def test_direct_write_parses_to_the_onnx_ir_serialisation(tmp_path: Path) -> None:
    source = _save(mixed_dtype_model(), tmp_path / "m.onnx")
    model = io.load_model(source)
    weight = model.graph.initializers["w"].const_value
    assert weight is not None
    weight.metadata_props["origin"] = "test"
    model.graph.register_initializer(
        ir.Value(name="fresh", const_value=ir.Tensor(np.arange(12, dtype=np.int32)))
    )
    out = tmp_path / "out.onnx"
    stream_save.write_inline(model, out)
    written, expected = onnx.load(str(out)).graph, ir.serde.serialize_model(model).graph
    assert list(written.initializer) == list(expected.initializer)
    assert list(written.node) == list(expected.node)
    assert list(written.output) == list(expected.output)


def test_folded_output_is_the_same_with_and_without_mapping(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = _save(mixed_dtype_model(), tmp_path / "m.onnx")
    bnfold.fold(source).save(tmp_path / "fast.onnx")
    monkeypatch.setattr(mapped, "read_mapped", lambda _path: None)
    bnfold.fold(source).save(tmp_path / "slow.onnx")
    fast, slow = onnx.load(str(tmp_path / "fast.onnx")), onnx.load(str(tmp_path / "slow.onnx"))
    assert fast == slow
    assert not any(n.op_type == "BatchNormalization" for n in fast.graph.node)


def test_stream_saved_file_is_read_mapped_again(tmp_path: Path) -> None:
    """Our own output (one graph chunk per weight) is walked by the mapped reader too."""
    source = _save(conv_bn_model(), tmp_path / "m.onnx")
    first = tmp_path / "once.onnx"
    bnfold.fold(source).save(first)
    again = mapped.read_mapped(first)
    assert again is not None and "w" not in again.weights  # the folded weight has a new name
    assert len(again.weights) == 1
    second = bnfold.fold(first).save(tmp_path / "twice.onnx")
    assert onnx.load(str(second)) == onnx.load(str(first))


def test_in_place_fold_of_a_mapped_model(tmp_path: Path) -> None:
    """The input stays mapped while the output replaces it: the old file's data stays valid."""
    model = conv_bn_model(seed=3)
    path = _save(model, tmp_path / "m.onnx")
    bnfold.fold(path).save(path, overwrite_input=True)
    folded = onnx.load(str(path))
    assert not any(n.op_type == "BatchNormalization" for n in folded.graph.node)
    assert_equivalent(model, folded)


def test_fp16_model_folds_through_the_mapped_path(tmp_path: Path) -> None:
    model = conv_bn_model(seed=5, dtype=np.float16)
    path = _save(model, tmp_path / "half.onnx")
    assert mapped.read_mapped(path) is not None
    result = bnfold.fold(path)
    assert op_count(result.model, "BatchNormalization") == 0
    assert_equivalent(model, result.model, tol=2e-2)
