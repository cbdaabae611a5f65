"""Faults while writing: nothing partial is ever left, inputs are never modified.

Writes go to a temporary folder beside the output and are renamed into place; a failure
or an interruption at any step leaves the previous state (no output, or the old output
with its own weights) and no temporary files.
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from click.testing import CliRunner
from support.robust_corpus import assert_one_line_error, good_model, save, save_external, snapshot

import bnfold
from bnfold.cli.main import cli
from bnfold.errors import OutputError, VerificationError
from bnfold.onnx.io import files as io

REAL_SAVE = ir.save
REAL_REPLACE = os.replace


def fold_cli(*args: str):
    return CliRunner().invoke(cli, [*args, "--no-verify"])


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if "bnfold-tmp" in p.name)


def bn_count(path: Path) -> int:
    return sum(n.op_type == "BatchNormalization" for n in onnx.load(path).graph.node)


@pytest.fixture
def model_path(tmp_path: Path) -> Path:
    folder = tmp_path / "in"
    folder.mkdir()
    return save(good_model(), folder / "m.onnx")


@pytest.fixture
def out_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "out"
    folder.mkdir()
    return folder


def break_saving(monkeypatch: pytest.MonkeyPatch, exc: BaseException) -> None:
    """Every model writer (inline or external data) writes half a file, then raises ``exc``."""

    def fake(model, path, **kwargs):
        Path(path).write_bytes(b"\x08\x08" + b"\0" * 1000)
        raise exc

    monkeypatch.setattr(io.ir, "save", fake)
    monkeypatch.setattr(io.stream_save, "write_inline", fake)


# -- failed and interrupted writes -----------------------------------------------------------
def test_disk_full_is_reported_and_nothing_is_written(
    model_path: Path, out_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = snapshot(model_path.parent)
    full = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(out_dir / "x"))
    break_saving(monkeypatch, full)
    result = fold_cli(str(model_path), "-o", str(out_dir / "f.onnx"))
    assert_one_line_error(result, "f.onnx", "no space left on device", "nothing written")
    assert list(out_dir.iterdir()) == []
    assert snapshot(model_path.parent) == before


def test_disk_full_on_rename_is_reported(
    model_path: Path, out_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def replace(src, dst):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "replace", replace)
    result = fold_cli(str(model_path), "-o", str(out_dir / "f.onnx"))
    assert_one_line_error(result, "no space left on device")
    assert list(out_dir.iterdir()) == []


def test_interrupted_write_leaves_no_output_and_no_temp_files(
    model_path: Path, out_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    break_saving(monkeypatch, KeyboardInterrupt())
    result = fold_cli(str(model_path), "-o", str(out_dir / "f.onnx"))
    assert result.exit_code == 130
    assert result.stderr.strip() == "bnfold: error: interrupted"
    assert list(out_dir.iterdir()) == []
    with pytest.raises(KeyboardInterrupt):
        bnfold.fold(model_path).save(out_dir / "g.onnx")
    assert list(out_dir.iterdir()) == []


def test_cancel_before_commit_writes_nothing(model_path: Path, out_dir: Path) -> None:
    seen: list[Path] = []

    def refuse(tmp_model: Path) -> None:
        seen.append(tmp_model)
        assert bn_count(tmp_model) == 0  # the fully written candidate is inspectable
        raise OutputError("cancelled by the check")

    with pytest.raises(OutputError, match="cancelled"):
        bnfold.fold(model_path).save(out_dir / "f.onnx", before_commit=refuse)
    assert seen and list(out_dir.iterdir()) == []


def test_crash_in_the_pre_commit_check_is_named_and_writes_nothing(
    model_path: Path, out_dir: Path
) -> None:
    def crash(tmp_model: Path) -> None:
        raise ValueError("verifier exploded")

    with pytest.raises(VerificationError, match=r"check before writing failed.*verifier exploded"):
        bnfold.fold(model_path).save(out_dir / "f.onnx", before_commit=crash)
    assert list(out_dir.iterdir()) == []


def test_failed_rerun_keeps_the_previous_output_intact(
    model_path: Path, out_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = out_dir / "f.onnx"
    assert fold_cli(str(model_path), "-o", str(out)).exit_code == 0
    old = out.read_bytes()
    break_saving(monkeypatch, OSError(errno.EIO, "I/O error"))
    result = fold_cli(str(model_path), "-o", str(out))
    assert_one_line_error(result, "I/O error")
    assert out.read_bytes() == old and leftovers(out_dir) == []


def test_rerun_with_external_data_never_pairs_old_model_with_new_weights(
    tmp_path: Path, out_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The commit renames data then model; a stop in between must not mix the two."""
    first = save_external(good_model(seed=1), tmp_path / "first.onnx")
    second = save_external(good_model(seed=2), tmp_path / "second.onnx")
    out = out_dir / "f.onnx"
    assert fold_cli(str(first), "-o", str(out)).exit_code == 0
    before = snapshot(out_dir)
    old_weights = {t.name: onnx.numpy_helper.to_array(t) for t in onnx.load(out).graph.initializer}

    def replace(src, dst):
        if Path(dst) == out:
            raise KeyboardInterrupt  # stop between the data rename and the model rename
        return REAL_REPLACE(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    assert fold_cli(str(second), "-o", str(out)).exit_code == 130
    monkeypatch.setattr(os, "replace", REAL_REPLACE)
    assert snapshot(out_dir) == before  # old model, old data, no orphan, no temp folder
    for t in onnx.load(out).graph.initializer:
        np.testing.assert_array_equal(onnx.numpy_helper.to_array(t), old_weights[t.name])


def test_sigint_during_a_real_write_leaves_nothing(tmp_path: Path, out_dir: Path) -> None:
    """A real process, interrupted while its temporary files are being written."""
    rng = np.random.default_rng(0)
    weight = rng.normal(0, 0.01, (6, 3, 3, 3)).astype(np.float32)
    model = good_model(weight=weight)
    big = rng.normal(0, 1, (4096, 4096)).astype(np.float32)  # 64 MB of unrelated weight
    model.graph.initializer.append(onnx.numpy_helper.from_array(big, "ballast"))
    path = save_external(model, tmp_path / "big.onnx")
    before = snapshot(tmp_path)
    entry = "from bnfold.cli.main import main; main()"
    out = out_dir / "f.onnx"
    for _ in range(5):
        proc = subprocess.Popen(
            [sys.executable, "-c", entry, str(path), "-o", str(out), "--no-verify"],
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + 120
        while proc.poll() is None and not leftovers(out_dir) and time.monotonic() < deadline:
            time.sleep(0.002)
        if proc.poll() is None and leftovers(out_dir):
            proc.send_signal(signal.SIGINT)
            _, err = proc.communicate(timeout=120)
            if not out.exists():  # stopped before the commit: the case under test
                break
            # The commit won the race with the signal (exit 0, or 130 once the held-back
            # Ctrl-C is delivered): the output must then be whole. Try again.
            onnx.checker.check_model(str(out), full_check=True)
        else:
            proc.communicate(timeout=120)
        for p in out_dir.iterdir():
            p.unlink()
    else:
        pytest.skip("the write finished before it could be interrupted")
    assert proc.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    assert list(out_dir.iterdir()) == []
    after = snapshot(tmp_path)
    assert {k: v for k, v in after.items() if not k.startswith("out")} == {
        k: v for k, v in before.items() if not k.startswith("out")
    }


def test_regression_sigint_between_the_data_and_model_renames_left_orphan_data(
    tmp_path: Path, out_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A real SIGINT right after the data file's rename raised KeyboardInterrupt before the
    model's rename: the data file stayed behind with no model (seen in CI). Ctrl-C is now
    held back until both are in place, then delivered."""
    path = save_external(good_model(), tmp_path / "m.onnx")
    out = out_dir / "f.onnx"

    def tick() -> None:  # a Python call: the interpreter runs pending signal handlers here
        pass

    def replace(src, dst):
        REAL_REPLACE(src, dst)
        if Path(dst) == out_dir / "f.onnx.data":  # the commit's first rename
            os.kill(os.getpid(), signal.SIGINT)
            tick()

    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        monkeypatch.setattr(os, "replace", replace)
        with pytest.raises(KeyboardInterrupt):
            bnfold.fold(path).save(out)
        monkeypatch.setattr(os, "replace", REAL_REPLACE)
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, previous)
    assert sorted(p.name for p in out_dir.iterdir()) == ["f.onnx", "f.onnx.data"]
    onnx.checker.check_model(str(out), full_check=True)
    assert bn_count(out) == 0


# -- the input is never modified ---------------------------------------------------------------
def test_input_with_external_data_is_untouched(tmp_path: Path) -> None:
    path = save_external(good_model(), tmp_path / "m.onnx")
    before = snapshot(tmp_path)
    assert fold_cli(str(path)).exit_code == 0
    after = snapshot(tmp_path)
    assert {k: after[k] for k in before} == before
    out = tmp_path / "m.folded.onnx"
    assert set(after) - set(before) == {"m.folded.onnx", "m.folded.onnx.data"}
    assert bn_count(out) == 0


def test_output_data_name_never_overwrites_the_inputs_data(tmp_path: Path) -> None:
    """Input a.onnx keeps its weights in b.onnx.data; writing b.onnx must not clobber them."""
    path = save_external(good_model(), tmp_path / "a.onnx", location="b.onnx.data")
    before = snapshot(tmp_path)
    assert fold_cli(str(path), "-o", str(tmp_path / "b.onnx")).exit_code == 0
    after = snapshot(tmp_path)
    assert {k: after[k] for k in before} == before
    assert "b.onnx.1.data" in after
    assert bn_count(tmp_path / "b.onnx") == 0 and bn_count(path) == 1


def test_in_place_with_external_data_is_atomic_and_tidy(tmp_path: Path) -> None:
    path = save_external(good_model(), tmp_path / "m.onnx")
    for _ in range(3):  # repeated runs: never an orphaned data file
        result = CliRunner().invoke(cli, [str(path), "--in-place", "--no-verify"])
        assert result.exit_code == 0, result.stderr
        names = sorted(p.name for p in tmp_path.iterdir())
        assert len(names) == 2 and names[0] == "m.onnx", names
        assert names[1] in ("m.onnx.data", "m.onnx.1.data")
        assert bn_count(path) == 0
    onnx.checker.check_model(str(path), full_check=True)


def test_in_place_without_the_flag_is_refused(model_path: Path) -> None:
    before = snapshot(model_path.parent)
    with pytest.raises(OutputError, match="input"):
        bnfold.fold(model_path).save(model_path)
    assert snapshot(model_path.parent) == before


# -- output folders that cannot be written ---------------------------------------------------
@pytest.mark.skipif(
    hasattr(os, "geteuid") and os.geteuid() == 0,
    reason="running as root: chmod does not stop root from writing (covered by the "
    "permission tests below, which fake the refusal)",
)
def test_read_only_folder_by_chmod(model_path: Path, out_dir: Path) -> None:
    out_dir.chmod(0o500)
    try:
        result = fold_cli(str(model_path), "-o", str(out_dir / "f.onnx"))
    finally:
        out_dir.chmod(0o700)
    assert_one_line_error(result, str(out_dir), "not writable")
    assert list(out_dir.iterdir()) == []


def test_folder_without_write_permission(
    model_path: Path, out_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_access = os.access
    monkeypatch.setattr(
        os, "access", lambda p, mode: False if Path(p) == out_dir else real_access(p, mode)
    )
    result = fold_cli(str(model_path), "-o", str(out_dir / "f.onnx"))
    assert_one_line_error(result, str(out_dir), "not writable", "permission denied")
    assert list(out_dir.iterdir()) == []


def test_permission_refused_by_the_file_system(
    model_path: Path, out_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """os.access can say yes and the file system still say no (ACLs, read-only mounts)."""

    real_mkdir = Path.mkdir

    def mkdir(self: Path, *args: object, **kwargs: object) -> None:
        if self.name.endswith(".bnfold-tmp"):  # the temporary folder beside the output
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))
        real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", mkdir)
    result = fold_cli(str(model_path), "-o", str(out_dir / "f.onnx"))
    assert_one_line_error(result, str(out_dir), "permission denied")


def test_read_only_file_system(
    model_path: Path, out_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    break_saving(monkeypatch, OSError(errno.EROFS, "Read-only"))
    result = fold_cli(str(model_path), "-o", str(out_dir / "f.onnx"))
    assert_one_line_error(result, "read-only file system")
    assert list(out_dir.iterdir()) == []


@pytest.mark.parametrize(
    ("make", "fragment"),
    [
        (lambda d: d / "plain-file", "is a file, not a folder"),
        (lambda d: d / "absent-folder", "does not exist"),
    ],
    ids=["folder-is-a-file", "folder-missing"],
)
def test_output_folder_that_is_not_a_folder(model_path: Path, tmp_path: Path, make, fragment):
    folder = make(tmp_path)
    if folder.name == "plain-file":
        folder.write_text("not a folder")
    result = fold_cli(str(model_path), "-o", str(folder / "f.onnx"))
    assert_one_line_error(result, str(folder), fragment)


def test_output_path_that_is_a_folder(model_path: Path, out_dir: Path) -> None:
    with pytest.raises(OutputError, match="is a directory"):
        bnfold.fold(model_path).save(out_dir)


def test_hard_linked_external_data_is_refused_clearly(tmp_path: Path) -> None:
    path = save_external(good_model(), tmp_path / "m.onnx")
    os.link(tmp_path / "m.onnx.data", tmp_path / "alias.data")
    result = fold_cli(str(path))
    assert_one_line_error(result, "m.onnx.data", "hard links")


def test_regression_ctrl_c_turned_into_another_error_by_a_writer_is_an_interrupt(
    model_path: Path, out_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A writer whose clean-up failed after Ctrl-C (a TypeError chained on the
    KeyboardInterrupt) was reported as "write failed", exit 2, instead of an interrupt."""

    def fake(model, path, **kwargs):
        Path(path).write_bytes(b"\x08\x08" + b"\0" * 1000)
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt:
            raise TypeError("expected str, bytes or os.PathLike object") from None

    monkeypatch.setattr(io.ir, "save", fake)
    monkeypatch.setattr(io.stream_save, "write_inline", fake)
    result = fold_cli(str(model_path), "-o", str(out_dir / "f.onnx"))
    assert result.exit_code == 130
    assert result.stderr.strip() == "bnfold: error: interrupted"
    assert list(out_dir.iterdir()) == []
