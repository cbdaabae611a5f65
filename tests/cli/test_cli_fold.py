"""The ``bnfold`` command (fold) and ``bnfold check``: outputs, exit codes, input safety."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest
from click.testing import CliRunner, Result
from support.graphs import GraphBuilder
from support.onnx_checks import assert_equivalent, op_count, op_types

from bnfold.cli.main import cli


def _model() -> onnx.ModelProto:
    b = GraphBuilder(seed=0)
    x = b.input("x", ["N", 3, 4, 4])
    y = b.node("Conv", [x, b.weight("w", [4, 3, 3, 3])], name="conv", pads=[1, 1, 1, 1])
    y = b.bn(y, 4, name="bn")
    y = b.node("Dropout", [y], name="drop")
    b.node("Relu", [y], name="relu", outputs=["y"])
    b.output("y", 4)
    return b.build()


@pytest.fixture
def model_path(tmp_path: Path) -> Path:
    path = tmp_path / "net.onnx"
    onnx.save(_model(), path)
    return path


def run(*args: str | Path) -> Result:
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def test_fold_writes_default_output_and_keeps_input(model_path: Path) -> None:
    before = model_path.read_bytes()
    result = run(model_path, "--no-verify")
    assert result.exit_code == 0, result.output
    out = model_path.with_name("net.folded.onnx")
    assert out.is_file()
    assert op_types(out) == ["Conv", "Relu"]
    assert model_path.read_bytes() == before
    assert_equivalent(model_path, out)


def test_fold_with_verification(model_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "sub.onnx"
    result = run(model_path, "-o", out, "--seeds", "1")
    assert result.exit_code == 0, result.output
    assert op_count(out, "BatchNormalization") == 0


def test_option_before_model_path(model_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "first.onnx"
    result = run("-o", out, model_path, "--no-verify")
    assert result.exit_code == 0, result.output
    assert out.is_file()


@pytest.mark.parametrize("spelling", ["same", "dotted"])
def test_output_equal_to_input_is_refused(model_path: Path, spelling: str) -> None:
    before = model_path.read_bytes()
    target = model_path if spelling == "same" else model_path.parent / "." / model_path.name
    result = run(model_path, "-o", target, "--no-verify")
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("bnfold: error:"), result.stderr
    assert "input" in lines[0]
    assert model_path.read_bytes() == before
    assert sorted(p.name for p in model_path.parent.iterdir()) == ["net.onnx"]


def test_json_output_parses_with_counts(model_path: Path, tmp_path: Path) -> None:
    result = run(model_path, "-o", tmp_path / "j.onnx", "--json", "--no-verify")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    counts = data["report"]["counts"]
    assert counts["batchnorm"]["found"] == 1 and counts["batchnorm"]["folded"] == 1
    assert counts["dropout"]["removed"] == 1
    assert data["written"] is True
    assert data["exit_code"] == 0


def test_missing_model_is_exit_2(tmp_path: Path) -> None:
    result = run(tmp_path / "nope.onnx", "--no-verify")
    assert result.exit_code == 2
    assert result.stderr.startswith("bnfold: error:")


def test_check_exit_codes(model_path: Path, tmp_path: Path) -> None:
    """check: 1 while something is foldable, 0 on the folded model; nothing is written."""
    before = sorted(p.name for p in tmp_path.iterdir())
    unfolded = run("check", model_path)
    assert unfolded.exit_code == 1, unfolded.output
    assert unfolded.stdout == f"{model_path}: 1 foldable: 1 Conv→BN; 1 Dropout\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    out = tmp_path / "clean.onnx"
    assert run(model_path, "-o", out, "--no-verify").exit_code == 0
    clean = run("check", out)
    assert clean.exit_code == 0, clean.output


def test_check_json(model_path: Path) -> None:
    result = run("check", model_path, "--json")
    assert result.exit_code == 1
    data = json.loads(result.stdout)
    assert data["clean"] is False
    assert {e["name"] for e in data["models"][0]["foldable"]} == {"bn", "drop"}


def test_check_is_clean_when_only_unfoldable_bn_is_left(tmp_path: Path) -> None:
    """A BN that cannot be folded does not fail the gate."""
    b = GraphBuilder(seed=1)
    y = b.node("Relu", [b.input("x", ["N", 4, 3, 3])], name="relu")
    b.bn(y, 4, name="bn", output="y")
    b.output("y", 4)
    path = tmp_path / "relu_bn.onnx"
    onnx.save(b.build(), path)
    result = run("check", path)
    assert result.exit_code == 0, result.output


def test_regression_missing_output_folder_fails_before_folding(
    model_path: Path, tmp_path: Path
) -> None:
    """The output folder was checked only after folding, so a report was printed first."""
    result = run(model_path, "-o", tmp_path / "no" / "such" / "out.onnx")
    assert result.exit_code == 2
    assert result.stdout == ""
    assert "output folder does not exist" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
