"""``bnfold model.pt2`` and ``bnfold check model.pt2``: round trip, JSON, and the pickle rule."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from click.testing import CliRunner, Result  # noqa: E402
from support.export_models import ConvBN, LinearBN, export, randomise_bn  # noqa: E402

from bnfold.cli.main import cli  # noqa: E402
from bnfold.export.archive import pickled_entries  # noqa: E402
from bnfold.export.program import BN_OPS  # noqa: E402


def run(*args: str | Path) -> Result:
    return CliRunner().invoke(cli, list(map(str, args)))


@pytest.fixture
def pt2(tmp_path: Path) -> Path:
    model = randomise_bn(ConvBN(2)).eval()
    batch = torch.export.Dim("batch", min=1, max=16)
    ep = export(model, torch.randn(2, 3, 5, 5), dynamic={"x": {0: batch}})
    path = tmp_path / "model.pt2"
    torch.export.save(ep, path)
    return path


def pickled_copy(src: Path, dst: Path) -> Path:
    """``src`` with its first weight stored the way torch stores tensors it must pickle."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        names = zin.namelist()
        config_name = next(n for n in names if n.endswith("model_weights_config.json"))
        config = json.loads(zin.read(config_name))
        fqn, meta = next(iter(config["config"].items()))
        meta["use_pickle"] = True
        weight_name = config_name.rsplit("/", 1)[0] + "/" + meta["path_name"]
        for name in names:
            if name == config_name:
                zout.writestr(name, json.dumps(config))
            elif name == weight_name:
                import io

                buffer = io.BytesIO()
                torch.save(torch.export.load(src).state_dict[fqn], buffer)
                zout.writestr(name, buffer.getvalue())
            else:
                zout.writestr(name, zin.read(name))
    return dst


def test_pt2_round_trip_through_the_cli(pt2: Path) -> None:
    result = run(pt2)
    assert result.exit_code == 0, result.output
    out = pt2.with_name("model.folded.pt2")
    assert out.is_file() and "1 folded" in result.output
    ep = torch.export.load(out)
    assert not [n for n in ep.graph_module.graph.nodes if n.target in BN_OPS]
    ep.module()(torch.randn(5, 3, 5, 5))  # the dynamic batch dim survived the round trip
    assert run("check", out).exit_code == 0
    check = run("check", pt2)
    assert check.exit_code == 1 and "1 foldable: 1 Conv→BN" in check.output


def test_pt2_json_report(pt2: Path, tmp_path: Path) -> None:
    result = run(pt2, "-o", tmp_path / "small.pt2", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["report"]["counts"]["batchnorm"]["folded"] == 1
    assert data["verification"]["equivalent"] is True
    assert data["written"] and (tmp_path / "small.pt2").is_file()


def test_plain_archive_needs_no_unpickling(pt2: Path) -> None:
    assert pickled_entries(pt2) == []


def test_pickled_weights_refused_in_one_line(pt2: Path, tmp_path: Path) -> None:
    path = pickled_copy(pt2, tmp_path / "pickled.pt2")
    assert pickled_entries(path)
    result = run(path)
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "--trust-pickle" in lines[0]
    assert not path.with_name("pickled.folded.pt2").exists()
    assert run("check", path).exit_code == 2


def test_trust_pickle_accepts_it(pt2: Path, tmp_path: Path) -> None:
    path = pickled_copy(pt2, tmp_path / "pickled.pt2")
    result = run(path, "--trust-pickle")
    assert result.exit_code == 0, result.output
    assert path.with_name("pickled.folded.pt2").is_file()
    assert run("check", path, "--trust-pickle").exit_code == 1


def test_training_program_refused_then_assume_eval(tmp_path: Path) -> None:
    model = randomise_bn(LinearBN()).train()
    path = tmp_path / "train.pt2"
    torch.export.save(export(model, torch.randn(4, 8)), path)
    result = run(path)
    assert result.exit_code == 0 and "training mode" in result.output
    result = run(path, "--assume-eval", "-o", tmp_path / "eval.pt2")
    assert result.exit_code == 0 and "1 folded" in result.output, result.output


def test_pt2_shape_sizes_the_verification_inputs(pt2: Path, tmp_path: Path) -> None:
    out = tmp_path / "sized.pt2"
    result = run(pt2, "-o", out, "--shape", "x:7x3x5x5", "--json")
    assert result.exit_code == 0, result.output
    inputs = json.loads(result.stdout)["verification"]["inputs"]
    assert any("7x3x5x5" in text for text in inputs.values()), inputs


def test_pt2_inputs_feed_the_verification(pt2: Path, tmp_path: Path) -> None:
    data = tmp_path / "data.npz"
    import numpy as np

    np.savez(data, x=np.full((4, 3, 5, 5), 0.5, dtype=np.float32))
    result = run(pt2, "-o", tmp_path / "fed.pt2", "--inputs", data, "--json")
    assert result.exit_code == 0, result.output
    inputs = json.loads(result.stdout)["verification"]["inputs"]
    assert any("4x3x5x5" in text for text in inputs.values()), inputs


def test_pt2_inputs_naming_no_input_are_refused_in_one_line(pt2: Path, tmp_path: Path) -> None:
    data = tmp_path / "wrong.npz"
    import numpy as np

    np.savez(data, image=np.zeros((1, 3, 5, 5), dtype=np.float32))
    out = tmp_path / "never.pt2"
    result = run(pt2, "-o", out, "--inputs", data)
    assert result.exit_code == 2
    assert "not inputs of the program" in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not out.exists()


@pytest.mark.parametrize("how", ["--inputs", "--shape"])
def test_pt2_inputs_of_the_wrong_size_are_refused_in_one_line(
    pt2: Path, tmp_path: Path, how: str
) -> None:
    import numpy as np

    if how == "--inputs":
        data = tmp_path / "bad.npz"
        np.savez(data, x=np.zeros((1, 4, 5, 5), dtype=np.float32))
        extra = ["--inputs", str(data)]
    else:
        extra = ["--shape", "x:1x3x6x6"]
    out = tmp_path / "never.pt2"
    result = run(pt2, "-o", out, *extra)
    assert result.exit_code == 2
    assert "the program rejects the given --inputs/--shape" in result.output
    assert "internal error" not in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not out.exists()


def test_pt2_bench_times_both_programs(pt2: Path, tmp_path: Path) -> None:
    result = run(pt2, "-o", tmp_path / "timed.pt2", "--bench", "--json")
    assert result.exit_code == 0, result.output
    bench = json.loads(result.stdout)["bench"]
    assert bench["runtime"] == "torch eager"
    assert [r["label"] for r in bench["runs"]] == ["model.pt2", "timed.pt2"]
    assert all(r["runs"] >= 10 and r["median_ms"] > 0 for r in bench["runs"])
    assert bench["speedup"]["median"] > 0
    text = run(pt2, "-o", tmp_path / "timed2.pt2", "--bench").output
    assert "speed-up" in text and "torch eager" in text
