"""Every bad input gives one line naming the problem, exit code 2, no traceback, no output.

The input (and every file beside it) is left byte-for-byte untouched.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from support.robust_corpus import (
    CORPUS,
    BadInput,
    assert_one_line_error,
    good_model,
    save,
    snapshot,
)

import bnfold
from bnfold.cli.main import cli
from bnfold.errors import InputError

_OPENED: list[str] = []
_WATCH: set[str] = set()


def _audit(event: str, args: tuple) -> None:  # type: ignore[type-arg]
    if event == "open" and _WATCH and args and str(args[0]) in _WATCH:
        _OPENED.append(str(args[0]))


sys.addaudithook(_audit)


@pytest.fixture(params=sorted(CORPUS), ids=sorted(CORPUS))
def bad(request: pytest.FixtureRequest, tmp_path: Path) -> BadInput:
    folder = tmp_path / "models"
    folder.mkdir()
    return CORPUS[request.param](folder)


def test_bad_input_is_refused_cleanly(bad: BadInput, tmp_path: Path) -> None:
    out = tmp_path / "out" / "folded.onnx"
    out.parent.mkdir()
    before = snapshot(tmp_path)
    result = CliRunner().invoke(cli, [str(bad.path), "-o", str(out)])
    assert_one_line_error(result, *bad.expect)
    assert snapshot(tmp_path) == before, "the input folder or the output folder changed"
    assert not any(out.parent.iterdir())


def test_python_api_raises_input_error(bad: BadInput) -> None:
    with pytest.raises(InputError) as info:
        bnfold.fold(bad.path)
    for fragment in bad.expect:
        assert fragment in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "case", ["external-parent-dir", "external-absolute", "external-symlink-escape"]
)
def test_escaping_external_data_is_never_opened(case: str, tmp_path: Path) -> None:
    folder = tmp_path / "models"
    folder.mkdir()
    bad = CORPUS[case](folder)
    outside = {str(p) for p in tmp_path.glob("*.data")}
    assert outside
    _WATCH.update(outside | {str(p.resolve()) for p in tmp_path.glob("*.data")})
    try:
        with pytest.raises(InputError):
            bnfold.fold(bad.path)
        result = CliRunner().invoke(cli, [str(bad.path), "--no-verify"])
    finally:
        _WATCH.clear()
    assert result.exit_code == 2
    assert _OPENED == []


def test_output_equal_to_input_is_refused(tmp_path: Path) -> None:
    path = save(good_model(), tmp_path / "m.onnx")
    before = snapshot(tmp_path)
    result = CliRunner().invoke(cli, [str(path), "-o", str(path)])
    assert_one_line_error(result, "m.onnx", "input")
    same_via_other_spelling = tmp_path / "." / "sub" / ".." / "m.onnx"
    (tmp_path / "sub").mkdir()
    result = CliRunner().invoke(cli, [str(path), "-o", str(same_via_other_spelling)])
    assert_one_line_error(result, "input")
    before["sub/"] = "dir"
    assert snapshot(tmp_path) == before


def test_output_equal_to_input_through_a_hard_link_is_refused(tmp_path: Path) -> None:
    path = save(good_model(), tmp_path / "m.onnx")
    (tmp_path / "alias.onnx").hardlink_to(path)
    before = snapshot(tmp_path)
    result = CliRunner().invoke(cli, [str(path), "-o", str(tmp_path / "alias.onnx")])
    assert_one_line_error(result, "input")
    assert snapshot(tmp_path) == before


def test_real_process_prints_one_line_and_exits_2(tmp_path: Path) -> None:
    """Not just CliRunner: the installed entry point, real stderr, real exit status."""
    bad = CORPUS["negative-variance"](tmp_path)
    entry = "from bnfold.cli.main import main; main()"
    proc = subprocess.run(
        [sys.executable, "-c", entry, str(bad.path)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("bnfold: error: ")
    assert "variance is negative" in proc.stderr
    assert proc.stdout == ""
