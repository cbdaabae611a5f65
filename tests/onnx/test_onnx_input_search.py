"""Input shapes the model accepts: the search when defaults fail, and what users see of it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner, Result
from onnx import TensorProto, helper
from support.graphs import GraphBuilder

from bnfold.cli.main import cli
from bnfold.equivalence import shape_search, verify
from bnfold.equivalence.signature import TensorSpec
from bnfold.errors import VerificationError


def text_recognizer() -> onnx.ModelProto:
    """x: [N, 3, ?, W] → Conv → BN → height pooled by 48 → Squeeze of the height → Softmax.

    Like a CRNN/SVTR text recogniser trained at height 48: it runs for heights 48…95 and any
    width, and fails at the default 224, where the pooled height is 4, not 1.
    """
    b = GraphBuilder(seed=5)
    x = b.input("x", ["batch", 3, None, "width"])
    y = b.node("Conv", [x, b.weight("w", [4, 3, 3, 3])], name="conv", pads=[1, 1, 1, 1])
    y = b.bn(y, 4, name="bn")
    y = b.node("MaxPool", [y], name="pool", kernel_shape=[48, 1], strides=[48, 1])
    axes = b.const("axes", np.array([2], np.int64))
    y = b.node("Squeeze", [y, axes], name="squeeze_height")  # [N, 4, W]
    y = b.node("Transpose", [y], name="tr", perm=[0, 2, 1])
    y = b.node("MatMul", [y, b.weight("fc", [4, 6])], name="fc")
    b.node("Softmax", [y], name="softmax", outputs=["probs"], axis=-1)
    b.output("probs", 3)
    return b.build()


ENTRY = "from bnfold.cli.main import main; main()"


def _run(*args: object) -> Result:
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def test_regression_text_recognizer_fails_at_224(tmp_path: Path) -> None:
    """Failure 1: verification set both spatial dims to 224 and onnxruntime failed."""
    path = tmp_path / "rec.onnx"
    onnx.save(text_recognizer(), path)
    out = tmp_path / "rec.folded.onnx"
    result = _run(path, "-o", out, "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["report"]["counts"]["batchnorm"]["folded"] == 1
    verification = data["verification"]
    assert verification["equivalent"] is True
    height = verification["input_shapes"]["x"][2]
    assert 48 <= height < 96
    assert "searched; 224x224 failed in Squeeze 'squeeze_height'" in verification["inputs"]["x"]
    attempts = verification["shape_search"]["attempts"]
    assert attempts[0]["ran"] is False and attempts[-1]["ran"] is True
    assert len(attempts) <= shape_search.MAX_ATTEMPTS
    assert out.exists()


def test_search_prints_the_shape_used(tmp_path: Path) -> None:
    path = tmp_path / "rec.onnx"
    onnx.save(text_recognizer(), path)
    result = _run(path, "-o", tmp_path / "out.onnx")
    assert result.exit_code == 0, result.output
    line = next(x for x in result.output.splitlines() if "input x:" in x)
    assert "float32 1x3x" in line and "(searched; 224x224 failed in Squeeze" in line


def test_shape_option_skips_the_search(tmp_path: Path) -> None:
    path = tmp_path / "rec.onnx"
    onnx.save(text_recognizer(), path)
    result = _run(path, "-o", tmp_path / "out.onnx", "--json", "--shape", "x:1x3x48x320")
    assert result.exit_code == 0, result.output
    verification = json.loads(result.stdout)["verification"]
    assert verification["input_shapes"]["x"] == [1, 3, 48, 320]
    assert verification["shape_search"] is None


def test_inputs_option_feeds_real_data(tmp_path: Path) -> None:
    path = tmp_path / "rec.onnx"
    onnx.save(text_recognizer(), path)
    data = tmp_path / "batch.npz"
    np.savez(data, x=np.random.default_rng(0).standard_normal((2, 3, 50, 40)).astype(np.float32))
    result = _run(path, "-o", tmp_path / "out.onnx", "--json", "--inputs", data)
    assert result.exit_code == 0, result.output
    verification = json.loads(result.stdout)["verification"]
    assert verification["inputs"]["x"] == "float32 2x3x50x40 (given)"


def test_shape_that_does_not_run_names_the_node_and_writes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "rec.onnx"
    onnx.save(text_recognizer(), path)
    before = path.read_bytes()
    out = tmp_path / "out.onnx"
    result = _run(path, "-o", out, "--shape", "x:1x3x224x224")
    assert result.exit_code == 2
    err = result.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("bnfold: error: onnxruntime cannot run")
    assert "Squeeze 'squeeze_height'" in err[0]
    assert not out.exists() and list(tmp_path.iterdir()) == [path]
    assert path.read_bytes() == before


def _never_runs() -> onnx.ModelProto:
    """Runs only when the last dim is exactly 7: no ladder size reaches it."""
    b = GraphBuilder(seed=1)
    x = b.input("x", ["N", 2, "T"])
    y = b.node("Conv", [x, b.weight("w", [3, 2, 1])], name="conv")
    y = b.bn(y, 3, name="bn")
    b.node("Reshape", [y, b.const("s", np.array([-1, 21], np.int64))], name="flat", outputs=["y"])
    b.output("y", 2)
    return b.build()


def test_nothing_runs_is_one_line_with_the_options_to_pass(tmp_path: Path) -> None:
    path = tmp_path / "odd.onnx"
    onnx.save(_never_runs(), path)
    out = tmp_path / "odd.folded.onnx"
    result = _run(path, "-o", out)
    assert result.exit_code == 2, result.output
    message = result.stderr.strip()
    assert "\n" not in message
    assert "Reshape 'flat'" in message
    assert "--shape x:1x2xL" in message and "--inputs" in message and "--no-verify" in message
    assert not out.exists()


def test_search_is_bounded() -> None:
    specs = [TensorSpec("x", np.dtype("float32"), ("N", 3, "h", "w"))]
    calls: list[dict] = []

    def never(shapes: dict) -> None:
        calls.append(shapes)
        raise VerificationError("onnxruntime failed to run m: running Conv node. Name:'c' …")

    with pytest.raises(VerificationError, match=r"15 input shapes tried.*Conv 'c'"):
        shape_search.search(specs, {}, never)
    assert len(calls) == shape_search.MAX_ATTEMPTS


def test_search_tries_squares_then_small_heights() -> None:
    specs = [TensorSpec("x", np.dtype("float32"), ("N", 3, "h", "w"))]
    free = shape_search.free_dims(specs, {})
    assert [f.key for f in free] == ["h", "w"]
    tried = [(s["h"], s["w"]) for s in shape_search.candidate_sizes(free)]
    assert tried[:5] == [(256, 256), (320, 320), (128, 128), (64, 64), (48, 48)]
    assert (48, 320) in tried and tried.index((48, 320)) < tried.index((32, 32))
    assert len(set(tried)) == len(tried) and (224, 224) not in tried


def test_search_keeps_user_shapes_and_batch() -> None:
    specs = [
        TensorSpec("x", np.dtype("float32"), ("N", 3, "h", "w")),
        TensorSpec("mask", np.dtype("float32"), ("N", "T")),
    ]
    free = shape_search.free_dims(specs, {"x": (1, 3, 32, 32)})
    assert [f.key for f in free] == ["T"]


def test_metadata_hints_come_first() -> None:
    model = text_recognizer()
    helper.set_model_props(model, {"image_shape": "[3, 48, 320]"})
    specs = [TensorSpec("x", np.dtype("float32"), ("batch", 3, None, "width"))]
    free = shape_search.free_dims(specs, {})
    assert shape_search.metadata_hints(model, free) == [{"x[2]": 48, "width": 320}]


def test_integer_inputs_stay_in_range_during_the_search() -> None:
    """An embedding id input keeps ids below the table size at every searched shape."""
    b = GraphBuilder(seed=2)
    ids = b.input("ids", ["N", "T"], elem=TensorProto.INT64)
    table = b.weight("table", [10, 4])
    y = b.node("Gather", [table, ids], name="embed")  # [N, T, 4]
    y = b.node("Transpose", [y], name="t", perm=[0, 2, 1])  # [N, 4, T]
    y = b.bn(y, 4, name="bn")
    b.node("Reshape", [y, b.const("s", np.array([1, 4, 32], np.int64))], name="fix", outputs=["y"])
    b.output("y", 3)
    model = b.build()
    result = verify(model, model)
    assert result and result.input_shapes["ids"] == (1, 32)


def test_regression_ort_error_line_never_reaches_the_terminal(tmp_path: Path) -> None:
    """onnxruntime printed its own coloured [E:onnxruntime…] line before ours."""
    path = tmp_path / "rec.onnx"
    onnx.save(text_recognizer(), path)
    proc = subprocess.run(
        [sys.executable, "-c", ENTRY, str(path), "-o", str(tmp_path / "o.onnx")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "onnxruntime:" not in proc.stderr and "[E:" not in proc.stderr
    bad = subprocess.run(
        [sys.executable, "-c", ENTRY, "verify", str(path), str(path), "--shape", "x:1x3x224x224"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 2
    assert bad.stderr.count("\n") == 1 and "[E:" not in bad.stderr


def test_batch_applies_shapes_to_the_models_that_have_that_input(tmp_path: Path) -> None:
    onnx.save(text_recognizer(), tmp_path / "rec.onnx")
    b = GraphBuilder(seed=4)
    image = b.input("image", ["N", 3, 8, 8])
    y = b.node("Conv", [image, b.weight("w", [2, 3, 1, 1])], name="conv")
    b.bn(y, 2, name="bn", output="y")
    b.output("y", 4)
    onnx.save(b.build(), tmp_path / "other.onnx")
    out = tmp_path / "out"
    out.mkdir()
    result = _run(
        tmp_path / "rec.onnx", tmp_path / "other.onnx", "-o", out, "-j", "1", "--json",
        "--shape", "x:1x3x48x100",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    models = {Path(m["model"]).name: m for m in json.loads(result.stdout)["models"]}
    assert models["rec.onnx"]["verification"]["input_shapes"]["x"] == [1, 3, 48, 100]
    assert models["other.onnx"]["verification"]["input_shapes"]["image"] == [1, 3, 8, 8]


def test_metadata_sizes_are_tried_right_after_the_defaults() -> None:
    model = text_recognizer()
    helper.set_model_props(model, {"image_shape": "[3, 48, 320]"})
    result = verify(model, model)
    assert result.input_shapes["x"] == (1, 3, 48, 320)
    assert len(result.shape_search["attempts"]) == 2
