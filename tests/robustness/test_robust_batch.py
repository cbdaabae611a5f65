"""Many models in one run: parallel workers, one bad model never stops the others.

The shape a model-zoo CI job needs: every good model written, every bad one reported,
a summary table (or ``--json``) at the end, exit 2 when anything failed.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from support.robust_corpus import CORPUS, good_model, save, save_external

from bnfold import batch
from bnfold.cli.main import cli
from bnfold.workflow import fold_file

ENTRY = "from bnfold.cli.main import main; main()"


def bn_count(path: Path) -> int:
    return sum(n.op_type == "BatchNormalization" for n in onnx.load(path).graph.node)


@pytest.fixture
def zoo(tmp_path: Path) -> Path:
    """a.onnx, b.onnx (good) and bad.onnx (negative variance) in one folder."""
    folder = tmp_path / "zoo"
    folder.mkdir()
    save(good_model(seed=1), folder / "a.onnx")
    save(good_model(seed=2), folder / "b.onnx")
    bad = CORPUS["negative-variance"](folder)
    bad.path.rename(folder / "bad.onnx")
    return folder


def test_bad_model_among_good_ones_with_two_workers(zoo: Path) -> None:
    """The real CLI in a real process: verification on, worker processes, summary table."""
    models = [str(zoo / n) for n in ("a.onnx", "bad.onnx", "b.onnx")]
    proc = subprocess.run(
        [sys.executable, "-c", ENTRY, *models, "-j", "2"],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "COLUMNS": "250"},
    )
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    assert bn_count(zoo / "a.folded.onnx") == 0 and bn_count(zoo / "b.folded.onnx") == 0
    assert not (zoo / "bad.folded.onnx").exists()
    table = proc.stdout
    assert "bnfold summary" in table
    assert sorted(table_statuses(table)) == ["error", "ok", "ok"], table
    assert "variance is" in table  # the bad model's reason is in its row


def table_statuses(table: str) -> list[str]:
    """The status cell of each row of the rich summary table (cells may wrap)."""
    statuses = []
    for line in table.splitlines():
        cells = [c.strip() for c in line.split("│")]
        if len(cells) > 3 and cells[2] in ("ok", "error", "FAIL"):
            statuses.append(cells[2])
    return statuses


def test_json_has_one_entry_per_model(zoo: Path) -> None:
    models = [str(zoo / n) for n in ("a.onnx", "bad.onnx", "b.onnx")]
    result = CliRunner().invoke(cli, [*models, "-j", "2", "--json", "--no-verify"])
    assert result.exit_code == 2, result.stderr
    data = json.loads(result.stdout)
    entries = data["models"]
    assert [Path(e["model"]).name for e in entries] == ["a.onnx", "bad.onnx", "b.onnx"]
    status = {Path(e["model"]).name: e for e in entries}
    assert status["a.onnx"]["status"] == "ok" and status["a.onnx"]["written"] is True
    assert status["b.onnx"]["report"]["counts"]["batchnorm"]["folded"] == 1
    assert status["bad.onnx"]["status"] == "error" and status["bad.onnx"]["exit_code"] == 2
    assert "variance is negative" in status["bad.onnx"]["error"]
    assert status["bad.onnx"]["written"] is False


def test_folder_argument_folds_every_model_into_the_output_folder(
    zoo: Path, tmp_path: Path
) -> None:
    out = tmp_path / "folded"
    result = CliRunner().invoke(cli, [str(zoo), "-o", str(out), "-j", "2", "--no-verify"])
    assert result.exit_code == 2, result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["a.folded.onnx", "b.folded.onnx"]
    assert sorted(table_statuses(result.stdout)) == ["error", "ok", "ok"], result.stdout
    rerun = CliRunner().invoke(cli, [str(zoo / "a.onnx"), str(zoo / "b.onnx"), "-o", str(out)])
    assert rerun.exit_code == 0, rerun.stderr


def test_all_good_models_exit_zero_and_skip_earlier_outputs(zoo: Path) -> None:
    (zoo / "bad.onnx").unlink()
    first = CliRunner().invoke(cli, [str(zoo), "--no-verify", "--json"])
    assert first.exit_code == 0, first.stderr
    assert len(json.loads(first.stdout)["models"]) == 2
    again = CliRunner().invoke(cli, [str(zoo), "--no-verify", "--json"])  # *.folded.onnx skipped
    assert [Path(e["model"]).name for e in json.loads(again.stdout)["models"]] == [
        "a.onnx",
        "b.onnx",
    ]


def test_the_same_model_named_twice_is_folded_once(zoo: Path) -> None:
    a = str(zoo / "a.onnx")
    result = CliRunner().invoke(cli, [a, str(zoo), a, "--json", "--no-verify"])
    names = [Path(e["model"]).name for e in json.loads(result.stdout)["models"]]
    assert names == ["a.onnx", "b.onnx", "bad.onnx"]


def test_two_models_writing_the_same_output_are_refused(tmp_path: Path) -> None:
    for sub in ("x", "y"):
        (tmp_path / sub).mkdir()
        save(good_model(), tmp_path / sub / "m.onnx")
    out = tmp_path / "out"
    result = CliRunner().invoke(
        cli, [str(tmp_path / "x/m.onnx"), str(tmp_path / "y/m.onnx"), "-o", str(out)]
    )
    assert result.exit_code == 2
    assert "would both be written to" in result.stderr
    assert not any(out.iterdir())


def test_missing_and_corrupt_files_in_a_batch(zoo: Path, tmp_path: Path) -> None:
    (zoo / "junk.onnx").write_bytes(b"\x89PNG\r\n\x1a\n....")
    models = [str(zoo / "a.onnx"), str(tmp_path / "nope.onnx"), str(zoo / "junk.onnx")]
    result = CliRunner().invoke(cli, [*models, "--json", "--no-verify", "-j", "2"])
    assert result.exit_code == 2
    errors = {
        Path(e["model"]).name: e.get("error", "") for e in json.loads(result.stdout)["models"]
    }
    assert errors["a.onnx"] == ""
    assert "no such file" in errors["nope.onnx"] and "PNG image" in errors["junk.onnx"]


def _crash_on_bad(path, options):
    if Path(path).name == "bad.onnx":
        os._exit(9)  # a worker dying in native code or by the OOM killer
    return fold_file(path, options)


@pytest.mark.skipif(
    multiprocessing.get_start_method(allow_none=False) != "fork",
    reason="the crash is injected by patching the parent before workers fork",
)
def test_a_crashing_worker_is_pinned_on_its_model(
    zoo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(batch, "fold_file", _crash_on_bad)
    models = [str(zoo / n) for n in ("a.onnx", "bad.onnx", "b.onnx")]
    result = CliRunner().invoke(cli, [*models, "-j", "2", "--json", "--no-verify"])
    assert result.exit_code == 2, result.stderr
    entries = {Path(e["model"]).name: e for e in json.loads(result.stdout)["models"]}
    assert entries["a.onnx"]["status"] == "ok" and entries["b.onnx"]["status"] == "ok"
    assert "worker process died" in entries["bad.onnx"]["error"]
    assert (zoo / "a.folded.onnx").exists() and (zoo / "b.folded.onnx").exists()


def test_ctrl_c_stops_the_batch_and_writes_nothing_more(tmp_path: Path) -> None:
    """Ctrl-C (SIGINT to the process group): running models abort, queued ones are skipped."""
    rng = np.random.default_rng(0)
    models = []
    for i in range(4):
        model = good_model(seed=i)
        ballast = rng.normal(0, 1, (2048, 4096)).astype(np.float32)  # slow enough to catch
        model.graph.initializer.append(onnx.numpy_helper.from_array(ballast, "ballast"))
        models.append(str(save_external(model, tmp_path / f"m{i}.onnx")))
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [sys.executable, "-c", ENTRY, *models, "-j", "2", "--no-verify", "-o", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if out.is_dir() and any("bnfold-tmp" in p.name for p in out.iterdir()):
            break
        time.sleep(0.005)
    if proc.poll() is not None:
        pytest.skip("the batch finished before it could be interrupted")
    written_before = {p.name for p in out.iterdir() if p.suffix == ".onnx"}
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert err.strip() == "bnfold: error: interrupted"
    assert not any("bnfold-tmp" in p.name for p in out.iterdir())
    written = {p.name for p in out.iterdir() if p.suffix == ".onnx"}
    # A commit already in flight when the signal lands may finish (the rename is atomic);
    # whatever is there must be whole, and the queued last model must never start.
    assert len(written - written_before) <= 2, (written_before, written)
    for name in written:
        onnx.checker.check_model(str(out / name), full_check=True)
    assert "m3.folded.onnx" not in written


def test_regression_ctrl_c_in_an_idle_worker_printed_a_traceback(tmp_path: Path) -> None:
    """An idle pool worker died of SIGINT inside multiprocessing's loop (a traceback on
    stderr) and could still start a queued model; now it only notes the interrupt."""
    from bnfold import batch
    from bnfold.workflow import FoldFileOptions

    previous = signal.getsignal(signal.SIGINT)
    try:
        batch._init_worker()
        os.kill(os.getpid(), signal.SIGINT)  # handled at once: no KeyboardInterrupt
        outcome = batch._fold_unless_stopped(tmp_path / "queued.onnx", FoldFileOptions())
    finally:
        signal.signal(signal.SIGINT, previous)
        batch._INTERRUPTED = False
    assert outcome.error == "not folded: the run was interrupted"
    assert not (tmp_path / "queued.folded.onnx").exists()
