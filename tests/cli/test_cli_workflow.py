"""``bnfold MODEL`` for one file: the size line and --bench, in place and with external data."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import onnx
import pytest
from click.testing import CliRunner
from support.robust_corpus import good_model, save, save_external

import bnfold.latency.api as latency_api
from bnfold.cli.main import cli
from bnfold.workflow import FoldFileOptions, fold_file


def disk_bytes(*paths: Path) -> int:
    return sum(p.stat().st_size for p in paths)


def fold_json(*args: str) -> dict[str, Any]:
    result = CliRunner().invoke(cli, [*args, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_regression_in_place_size_line_reported_the_output_as_the_input(tmp_path: Path) -> None:
    """Sizes were measured after the write, so --in-place showed input bytes == output bytes."""
    path = tmp_path / "m.onnx"
    save(good_model(), path)
    before = disk_bytes(path)
    sizes = fold_json(str(path), "--in-place", "--no-verify")["sizes"]
    assert sizes == {"input_bytes": before, "output_bytes": disk_bytes(path)}
    assert sizes["output_bytes"] < sizes["input_bytes"]


def test_regression_size_count_missed_data_files_not_named_name_dot_data(
    tmp_path: Path,
) -> None:
    """Only ``<name>.data`` was counted: ``weights.bin`` (input) and ``<name>.1.data`` (the
    in-place output, named so as not to overwrite data the input still reads) were missed."""
    path = tmp_path / "m.onnx"
    save_external(good_model(), path, location="weights.bin")
    sizes = fold_json(str(path), "--no-verify")["sizes"]
    assert sizes["input_bytes"] == disk_bytes(path, tmp_path / "weights.bin")

    path2 = tmp_path / "n.onnx"
    data = tmp_path / "n.onnx.data"
    save_external(good_model(), path2)  # every tensor in n.onnx.data
    before = disk_bytes(path2, data)
    sizes = fold_json(str(path2), "--in-place", "--no-verify")["sizes"]
    written = [p for p in tmp_path.iterdir() if p.name.startswith("n.onnx.")]
    assert [p.name for p in written] == ["n.onnx.1.data"]  # the old data file is gone
    assert sizes == {"input_bytes": before, "output_bytes": disk_bytes(path2, *written)}


def test_regression_in_place_bench_timed_the_folded_model_against_itself(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--in-place --bench benchmarked the overwritten file twice; the original must be timed."""
    real_bench = latency_api.bench

    def short_bench(model: Any, **kwargs: Any) -> Any:
        return real_bench(model, **kwargs, iters=3, warmup=1)

    monkeypatch.setattr(latency_api, "bench", short_bench)
    path = tmp_path / "m.onnx"
    save(good_model(), path)
    outcome = fold_file(path, FoldFileOptions(in_place=True, bench=True, seeds=1))
    assert outcome.error is None and outcome.written
    original, folded = outcome.bench.models
    assert (original.batchnorm, folded.batchnorm) == (1, 0)
    assert original.label == "m.onnx (original)" and folded.label == "m.onnx (folded)"
    assert sum(n.op_type == "BatchNormalization" for n in onnx.load(path).graph.node) == 0
