"""Many models in one run: parallel workers, one bad model never stops the others.

The shape a model-zoo CI job needs: every good model written, every bad one reported,
a summary table (or ``--json``) at the end, readable at 80 columns, exit 2 when anything
failed, and no output folder when nothing was written.
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
from bnfold.ci.cases import reason_of
from bnfold.cli.main import cli
from bnfold.cli.render import fit
from bnfold.workflow import FoldFileOptions, fold_file

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
    assert "variance is" in proc.stderr  # the bad model's reason, under the table
    assert table.splitlines()[-1] == "3 models: 2 folded, 0 not equivalent, 1 failed"


def table_statuses(table: str) -> list[str]:
    """The status cell of each row of the summary table (model names have no spaces)."""
    statuses = []
    for line in table.splitlines():
        cells = line.split()
        if len(cells) > 2 and cells[1] in ("ok", "error", "not-equivalent"):
            statuses.append(cells[1])
    return statuses


BROKEN = (
    "empty-file",
    "truncated",
    "random-bytes",
    "image-renamed",
    "checker-failure",
    "bn-param-wrong-length",
    "bn-params-vs-channels",
    "negative-variance",
    "nan-bn-param",
    "inf-weight",
    "missing-initializer",
    "unknown-opset",
)


@pytest.fixture
def broken_folder(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """12 broken models deep in a folder; file name → its one-line reason."""
    folder = tmp_path / "team" / "shared" / "exported" / "onnx" / "models"
    folder.mkdir(parents=True)
    expected = {}
    for name in BROKEN:
        path = CORPUS[name](folder).path
        outcome = fold_file(path, FoldFileOptions(output=tmp_path / "never.onnx"))
        assert outcome.error and not outcome.written
        expected[path.name] = reason_of(str(path), outcome.error)
    return folder, expected


def test_regression_broken_folder_at_80_columns_is_unreadable_and_writes_a_folder(
    broken_folder: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    """12 broken models at 100 columns: every model cell showed the same ellipsised folder
    prefix, each error wrapped one word per line, everything went to stdout, and the empty
    output folder was created. Now: names in full, one line per failure on stderr within
    80 columns, a count line, nothing written."""
    folder, expected = broken_folder
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-c", ENTRY, str(folder), "-o", str(out), "-j", "2"],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "COLUMNS": "80"},
    )
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    for line in (proc.stdout + proc.stderr).splitlines():
        assert len(line) <= 80, line
    assert "…" not in proc.stdout  # model names are never shortened
    rows = [line.split() for line in proc.stdout.splitlines()]
    assert sorted(r[0] for r in rows if len(r) > 1 and r[1] == "error") == sorted(expected)
    failures = [line for line in proc.stderr.splitlines() if not line.startswith("(")]
    assert len(failures) == 12, proc.stderr
    for line, (name, reason) in zip(failures, sorted(expected.items()), strict=True):
        assert line == fit(f"{name}: {reason}", 80)[0]  # named, its reason, one line
    assert proc.stdout.splitlines()[-1] == "12 models: 0 folded, 0 not equivalent, 12 failed"
    assert not out.exists()


def first_column(table: str) -> list[str]:
    """The model cells of the summary table, wrapped pieces joined."""
    lines = table.splitlines()
    header = next(i for i, line in enumerate(lines) if line.split()[:2] == ["model", "status"])
    at = lines[header].index("status")
    names: list[str] = []
    for line in lines[header + 2 :]:
        if not line.strip():
            break
        if line[at:].strip():
            names.append(line[:at].strip())
        else:
            names[-1] += line[:at].strip()
    return names


def test_long_names_wrap_whole_at_80_columns(tmp_path: Path) -> None:
    """Long model names wrap inside their cell and keep every character (an output-path
    column once made rich crop the table at 80 columns, losing characters)."""
    names = [
        "ppyoloe_plus_crn_l_80e_coco_with_a_very_long_export_name.onnx",
        "resnet50_imagenet_v1.onnx",
        "m.onnx",
    ]
    for i, name in enumerate(names):
        save(good_model(seed=i), tmp_path / name)
    result = CliRunner().invoke(
        cli, [str(tmp_path), "-o", str(tmp_path / "out"), "-j", "1"], env={"COLUMNS": "80"}
    )
    assert result.exit_code == 0, result.output
    assert all(len(line) <= 80 for line in result.stdout.splitlines())
    assert first_column(result.stdout) == sorted(names)


def test_regression_a_model_failing_verification_left_an_empty_output_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The output folder was made before folding; a run that wrote nothing (here: the only
    model is not equivalent) left it behind. It is now made on the first write, and a
    folder the run made for a temporary file is removed again when it stays empty."""
    import bnfold.foldmath

    real = bnfold.foldmath.bn_scale_shift
    monkeypatch.setattr(
        bnfold.foldmath, "bn_scale_shift", lambda *a: (real(*a)[0], real(*a)[1] + 0.5)
    )
    for i in (1, 2):
        save(good_model(seed=i), tmp_path / f"m{i}.onnx")
    out = tmp_path / "new" / "out"
    result = CliRunner().invoke(
        cli, [str(tmp_path / "m1.onnx"), str(tmp_path / "m2.onnx"), "-o", str(out), "-j", "1"]
    )
    assert result.exit_code == 1, result.output  # the worst per-model code
    assert result.stdout.splitlines()[-1] == "2 models: 0 folded, 2 not equivalent, 0 failed"
    assert not (tmp_path / "new").exists()


def test_exit_code_is_the_worst_per_model_code(tmp_path: Path) -> None:
    save(good_model(seed=1), tmp_path / "a.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"")
    ok = CliRunner().invoke(cli, [str(tmp_path / "a.onnx"), str(tmp_path / "a.onnx"), "-j", "1"])
    assert ok.exit_code == 0, ok.output
    worst = CliRunner().invoke(cli, [str(tmp_path), "-j", "1", "--no-verify"])
    assert worst.exit_code == 2
    assert worst.stderr.splitlines() == ["junk.onnx: file is empty"]


def test_regression_batch_progress_bar_was_drawn_on_stdout(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """rich's Progress defaulted to stdout; on a terminal it now draws on stderr only."""
    from bnfold.cli import render

    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    with render.batch_progress(3, enabled=True) as (advance, stage):
        stage("a.onnx", "fold")
        advance("a.onnx")
    assert capsys.readouterr().out == ""
    with render.batch_progress(3, enabled=False) as (advance, stage):
        advance("a.onnx")
    assert capsys.readouterr() == ("", "")


def test_stage_progress_only_for_big_models_on_a_terminal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from bnfold.cli import render

    path = save(good_model(), tmp_path / "m.onnx")
    with render.stage_progress(path, enabled=True) as on_stage:
        assert on_stage is None  # not a terminal
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    with render.stage_progress(path, enabled=True) as on_stage:
        assert on_stage is None  # small
    monkeypatch.setattr(render, "BIG_MODEL_BYTES", 0)
    seen: list[str] = []
    with render.stage_progress(path, enabled=True) as on_stage:
        assert on_stage is not None
        outcome = fold_file(path, None, lambda s: (seen.append(s), on_stage(s)))
    assert outcome.written
    assert seen == ["load", "fold", "write", "verify", "write"]


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
    assert not out.exists()  # the output folder is made only when something is written


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
    for i in range(5):  # equal sizes: they start in this order
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
    left = list(out.iterdir()) if out.is_dir() else []  # removed when nothing was written
    assert not any("bnfold-tmp" in p.name for p in left)
    written = {p.name for p in left if p.suffix == ".onnx"}
    # A commit already in flight when the signal lands may finish (the rename is atomic);
    # whatever is there must be whole. Nothing queued may start: beyond the models already
    # written, only the two running and one handed out as the signal was sent may be there.
    assert len(written - written_before) <= 2, (written_before, written)
    for name in written:
        onnx.checker.check_model(str(out / name), full_check=True)
    data = {p.name for p in left if p.suffix == ".data"}
    assert data == {f"{name}.data" for name in written}  # no weights without their model
    last_started = len(written_before) + 2
    started_late = {f"m{i}.folded.onnx" for i in range(last_started + 1, len(models))}
    assert not written & started_late, (written_before, written)


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


def test_biggest_models_start_first_so_workers_finish_together(tmp_path: Path) -> None:
    """A big model started last would fold alone at the end while the other worker idles."""
    sizes = {"a.onnx": 10, "b.onnx": 300, "c.onnx": 20, "d.onnx": 300}
    for name, size in sizes.items():
        (tmp_path / name).write_bytes(b"x" * size)
    options = FoldFileOptions()
    tasks = [(tmp_path / n, options) for n in [*sizes, "gone.onnx"]]
    assert batch.largest_first(tasks) == [1, 3, 2, 0, 4]  # ties keep their order
