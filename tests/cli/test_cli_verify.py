"""``bnfold verify``: exit codes, --json, option parsing; ``bnfold.testing.assert_equivalent``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner, Result
from support import verify_inject as inject
from support import verify_models as vm

from bnfold.cli.main import cli
from bnfold.testing import assert_equivalent


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("verify_cli")
    model = vm.conv_bn(np.random.default_rng(31))
    models = {
        "ref": model,
        "good": inject.fold_batchnorms(model),
        "bad": inject.fold_batchnorms(model, bug="channel_off"),
        "other": vm.gemm_bn(np.random.default_rng(32)),
    }
    paths = {}
    for name, m in models.items():
        paths[name] = folder / f"{name}.onnx"
        onnx.save(m, paths[name])
    return paths


def _run(*args: object) -> Result:
    return CliRunner().invoke(cli, ["verify", *map(str, args)], catch_exceptions=False)


def test_equivalent_exits_0(files: dict[str, Path]) -> None:
    result = _run(files["ref"], files["good"], "--seeds", 2)
    assert result.exit_code == 0, result.output
    assert "equivalent: 1 output(s) match on 2 input set(s)" in result.stdout


def test_not_equivalent_exits_1(files: dict[str, Path]) -> None:
    result = _run(files["ref"], files["bad"])
    assert result.exit_code == 1
    assert "FAIL" in result.stdout
    assert result.stderr.strip().startswith("bnfold: error: NOT equivalent: y")


def test_json(files: dict[str, Path]) -> None:
    result = _run(files["ref"], files["bad"], "--json", "--seeds", 2)
    assert result.exit_code == 1
    data = json.loads(result.stdout)
    assert data["equivalent"] is False and data["schema_version"] == 2
    assert data["outputs"][0]["failed_seeds"]
    ok = json.loads(_run(files["ref"], files["good"], "--json").stdout)
    assert ok["equivalent"] is True


def test_measure_floor(files: dict[str, Path]) -> None:
    """The floor is null in JSON when no output needed it; --measure-floor gives a number."""
    lazy = json.loads(_run(files["ref"], files["good"], "--json", "--seeds", 2).stdout)
    assert lazy["equivalent"] is True and lazy["noise_floor"] == "not needed"
    assert lazy["outputs"][0]["floor"] is None
    result = _run(files["ref"], files["good"], "--json", "--seeds", 2, "--measure-floor")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["noise_floor"] == "measured"
    assert isinstance(data["outputs"][0]["floor"], float) and data["outputs"][0]["floor"] > 0
    text = _run(files["ref"], files["good"], "--seeds", 2).stdout
    assert "noise floor: not needed" in text


def test_tolerance_options(files: dict[str, Path]) -> None:
    assert _run(files["ref"], files["bad"], "--rtol", "1e-2").exit_code == 0
    assert _run(files["ref"], files["bad"], "--atol", "y=1").exit_code == 0
    assert _run(files["ref"], files["bad"], "--rtol", "y=1e-12").exit_code == 1
    for bad in ("abc", "y=-1", "y="):
        result = _run(files["ref"], files["good"], "--rtol", bad)
        assert result.exit_code == 2 and "--rtol" in result.stderr
    unknown = _run(files["ref"], files["good"], "--rtol", "nope=1")
    assert unknown.exit_code == 2 and "unknown output" in unknown.stderr


def test_shape_and_inputs(files: dict[str, Path], tmp_path: Path) -> None:
    result = _run(files["ref"], files["good"], "--shape", "x:2x3x12x12", "--json")
    assert result.exit_code == 0
    assert json.loads(result.stdout)["inputs"]["x"].startswith("float32 2x3x12x12")
    for bad in ("x", "x:1xa", ":1x2"):
        assert _run(files["ref"], files["good"], "--shape", bad).exit_code == 2
    np.savez(tmp_path / "x.npz", x=np.ones((1, 3, 12, 12), np.float32))
    assert _run(files["ref"], files["good"], "--inputs", tmp_path / "x.npz").exit_code == 0
    np.savez(tmp_path / "q.npz", q=np.ones(3, np.float32))
    result = _run(files["ref"], files["good"], "--inputs", tmp_path / "q.npz")
    assert result.exit_code == 2 and "unknown input" in result.stderr


def test_bad_input_exits_2_with_one_line(files: dict[str, Path], tmp_path: Path) -> None:
    for args in (
        (files["ref"], files["other"]),
        (files["ref"], tmp_path / "missing.onnx"),
        (files["ref"], files["good"], "--provider", "cuda"),
    ):
        result = _run(*args)
        if args[-1] == "cuda" and result.exit_code == 0:
            continue  # a machine with CUDA
        assert result.exit_code == 2, result.output
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("bnfold: error:"), result.stderr


def test_help_imports_no_runtime() -> None:
    code = (
        "import sys; from click.testing import CliRunner; from bnfold.cli.main import cli;"
        "r = CliRunner().invoke(cli, ['verify', '--help']); assert r.exit_code == 0, r.output;"
        "assert '--floor-factor' in r.output and '--measure-floor' in r.output;"
        "print(sorted(m for m in ('onnxruntime', 'torch', 'onnx', 'numpy') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_assert_equivalent(files: dict[str, Path]) -> None:
    result = assert_equivalent(files["ref"], files["good"], seeds=2)
    assert result
    with pytest.raises(AssertionError, match="not equivalent") as info:
        assert_equivalent(files["ref"], files["bad"], seeds=2)
    assert "threshold" in str(info.value)
