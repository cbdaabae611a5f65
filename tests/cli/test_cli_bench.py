"""`bnfold bench` command: output, JSON, levels, one-line errors, light start-up."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from click.testing import CliRunner

from bnfold.cli.main import cli


def invoke(*args: str):
    return CliRunner().invoke(cli, ["bench", *args])


def test_text_output_with_comparison(conv_bn_path):
    result = invoke(conv_bn_path, "--vs", conv_bn_path, "--iters", "2", "--warmup", "0")
    assert result.exit_code == 0, result.output
    assert "disable" in result.output and "all" in result.output
    assert "speed-up" in result.output
    assert result.output.rstrip().splitlines()[-1].startswith(conv_bn_path)


def test_json_output_and_default_levels(conv_bn_path):
    result = invoke(conv_bn_path, "--iters", "2", "--threads", "1", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert [lev["level"] for lev in data["levels"]] == ["disable", "all"]
    assert data["threads"] == 1
    assert data["levels"][0]["rounds"] == 2


@pytest.mark.parametrize(
    ("args", "levels"),
    [
        (["--all-levels"], ["disable", "basic", "extended", "all"]),
        (["--level", "basic,extended"], ["basic", "extended"]),
        (["--level", "all", "--level", "disable"], ["all", "disable"]),
        (["--level", "all"], ["all"]),
    ],
)
def test_level_options(conv_bn_path, args, levels):
    result = invoke(conv_bn_path, "--iters", "1", "--warmup", "0", "--json", *args)
    assert result.exit_code == 0, result.output
    assert [lev["level"] for lev in json.loads(result.output)["levels"]] == levels


def test_shape_option(conv_bn_path):
    result = invoke(conv_bn_path, "--iters", "1", "--json", "--shape", "x:2x3x8x8")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["inputs"]["x"]["shape"] == [2, 3, 8, 8]


@pytest.mark.parametrize("content", [None, b"this is not onnx"])
def test_bad_model_file_exits_2_with_one_line(tmp_path, content):
    path = tmp_path / "model.onnx"
    if content is not None:
        path.write_bytes(content)
    result = invoke(str(path))
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("bnfold: error: ")


def test_cuda_unavailable_exits_2_with_one_line(monkeypatch, conv_bn_path):
    import onnxruntime as ort

    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    result = invoke(conv_bn_path, "--provider", "cuda")
    assert result.exit_code == 2
    assert result.output.strip() == (
        "bnfold: error: CUDA provider not available "
        "(install onnxruntime-gpu on a machine with a GPU)"
    )


def test_unknown_level_is_a_usage_error(conv_bn_path):
    result = invoke(conv_bn_path, "--level", "max")
    assert result.exit_code == 2
    assert "'max' is not one of" in result.output


def test_command_module_imports_no_heavy_library():
    code = (
        "import sys, bnfold.cli.bench_cmd; "
        "print(sorted(m for m in ('onnxruntime', 'onnx', 'numpy', 'torch') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
