"""``bnfold check``: one line per model with counts by pattern; --verbose, keep-lists, errors."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
from click.testing import CliRunner, Result
from support.graphs import GraphBuilder
from support.robust_corpus import CORPUS, good_model, save

from bnfold.cli.main import cli


def run(*args: str | Path) -> Result:
    return CliRunner().invoke(cli, ["check", *map(str, args)])


def many_bn(n_conv: int, n_deconv: int) -> onnx.ModelProto:
    """A chain of ``n_conv`` Conv→BN and ``n_deconv`` ConvTranspose→BN blocks with Relus."""
    b = GraphBuilder(seed=2)
    y = b.input("x", ["N", 4, 5, 5])
    for i in range(n_conv + n_deconv):
        op, w = ("Conv", [4, 4, 1, 1]) if i < n_conv else ("ConvTranspose", [4, 4, 1, 1])
        y = b.node(op, [y, b.weight(f"w{i}", w)], name=f"layer{i}")
        y = b.node("Relu", [b.bn(y, 4, name=f"bn{i}")], name=f"relu{i}")
    b.node("Identity", [y], outputs=["y"])
    b.output("y", 4)
    return b.build()


def test_regression_check_printed_one_line_per_foldable_node(tmp_path: Path) -> None:
    """94 BN printed 95 lines; a folder of models made CI logs unreadable."""
    path = tmp_path / "deep.onnx"
    onnx.save(many_bn(30, 3), path)
    result = run(path)
    assert result.exit_code == 1, result.output
    assert result.stdout.splitlines() == [
        f"{path}: 33 foldable: 30 Conv→BN, 3 ConvTranspose→BN; 0 Dropout"
    ]
    verbose = run(path, "--verbose")
    assert len(verbose.stdout.splitlines()) == 34
    assert "fold BatchNormalization bn0 into layer0 (Conv→BN)" in verbose.stdout


def test_check_folder_one_line_each_named_relative_to_the_folder(tmp_path: Path) -> None:
    folder = tmp_path / "a" / "long" / "models"
    folder.mkdir(parents=True)
    save(good_model(1), folder / "net.onnx")
    onnx.save(many_bn(2, 0), folder / "plain.onnx")
    result = run(folder)
    assert result.exit_code == 1
    assert result.stdout.splitlines() == [
        "net.onnx: 1 foldable: 1 Conv→BN; 1 Dropout",
        "plain.onnx: 2 foldable: 2 Conv→BN; 0 Dropout",
        "2 models: 0 clean, 2 foldable, 0 failed",
    ]


def test_check_honours_keep_lists(tmp_path: Path) -> None:
    path = save(good_model(1), tmp_path / "net.onnx")
    only_bn = run(path, "--keep-dropout")
    assert only_bn.stdout.strip() == f"{path}: 1 foldable: 1 Conv→BN; 0 Dropout; 1 kept by request"
    clean = run(path, "--keep-dropout", "--keep", "b?")
    assert clean.exit_code == 0, clean.output
    assert clean.stdout.strip() == f"{path}: clean (2 kept by request)"
    data = json.loads(run(path, "--keep", "bn", "--json").stdout)
    assert [e["name"] for e in data["models"][0]["foldable"]] == ["drop"]
    assert [e["status"] for e in data["models"][0]["kept"]] == ["kept"]


def test_check_bad_model_among_good_ones_is_reported_and_the_rest_checked(
    tmp_path: Path,
) -> None:
    save(good_model(1), tmp_path / "net.onnx")
    CORPUS["negative-variance"](tmp_path)
    result = run(tmp_path)
    assert result.exit_code == 2
    assert "net.onnx: 1 foldable" in result.stdout
    assert result.stderr.splitlines() == [
        "negvar.onnx: BatchNormalization 'bn': variance is negative (-0.5 at channel 3, 1 "
        "channel(s)); variance + epsilon must be > 0"
    ]
    assert result.stdout.splitlines()[-1] == "2 models: 0 clean, 1 foldable, 1 failed"


def test_check_json_shape_is_unchanged(tmp_path: Path) -> None:
    path = save(good_model(1), tmp_path / "net.onnx")
    data = json.loads(run(path, "--json").stdout)
    assert set(data) == {"clean", "models"}
    assert set(data["models"][0]) == {"model", "clean", "foldable", "not_foldable"}
