"""CI formats: GitHub annotations + step summary, and JUnit XML valid against a JUnit schema.

The schema is tests/fixtures/junit.xsd (the Jenkins / Ant JUnit layout; no network in tests).
A not-equivalent model is made by a fold-math bug injected in-process (``-j 1``).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import onnx
import pytest
import xmlschema
from click.testing import CliRunner, Result
from support.robust_corpus import CORPUS, good_model, save

import bnfold
import bnfold.foldmath
from bnfold.ci.github import escape_data, escape_property
from bnfold.cli.main import cli

SCHEMA = Path(__file__).parents[1] / "fixtures" / "junit.xsd"


@pytest.fixture(scope="module")
def junit_schema() -> xmlschema.XMLSchema:
    return xmlschema.XMLSchema(SCHEMA)


@pytest.fixture
def zoo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """drift.onnx (folds, but the fold is made wrong: not equivalent), plain.onnx (no BN:
    ok) and negvar.onnx (bad input), with the BN shift bug active in this process."""
    folder = tmp_path / "zoo"
    folder.mkdir()
    save(good_model(1), folder / "drift.onnx")
    onnx.save(bnfold.fold(good_model(2)).model, folder / "plain.onnx")
    CORPUS["negative-variance"](folder)
    real = bnfold.foldmath.bn_scale_shift

    def shifted(*args, **kwargs):
        s, t = real(*args, **kwargs)
        return s, t + 0.5

    monkeypatch.setattr(bnfold.foldmath, "bn_scale_shift", shifted)
    monkeypatch.delenv("GITHUB_ACTIONS", raising=False)
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)
    return folder


def invoke(*args: str | Path, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(cli, [*map(str, args)], env=env)


def test_github_escaping_follows_the_toolkit_rules() -> None:
    assert escape_data("100% wrong\r\nnext: a,b") == "100%25 wrong%0D%0Anext: a,b"
    assert escape_property("dir:x/a,b%.onnx\n") == "dir%3Ax/a%2Cb%25.onnx%0A"


def test_fold_github_annotations_and_step_summary(zoo: Path, tmp_path: Path) -> None:
    summary = tmp_path / "summary.md"
    summary.write_text("earlier step\n")
    env = {"GITHUB_ACTIONS": "true", "GITHUB_STEP_SUMMARY": str(summary)}
    result = invoke(zoo, "-o", tmp_path / "out", "-j", "1", env=env)
    assert result.exit_code == 2, result.output
    notes = [line for line in result.stdout.splitlines() if line.startswith("::")]
    drift, negvar = (escape_property(str(zoo / n)) for n in ("drift.onnx", "negvar.onnx"))
    assert len(notes) == 2, result.stdout
    assert notes[0].startswith(f"::error file={drift},title=bnfold fold::drift.onnx: NOT equiv")
    assert notes[1].startswith(f"::error file={negvar},title=bnfold fold::negvar.onnx: ")
    assert "variance is negative" in notes[1]
    text = summary.read_text()
    assert text.startswith("earlier step\n### bnfold fold\n")  # appended, not replaced
    assert "3 models: 1 folded, 1 not equivalent, 1 failed" in text
    rows = [line for line in text.splitlines() if line.startswith("| `")]
    names = [r.split("|")[1].strip() for r in rows]
    assert names == ["`drift.onnx`", "`negvar.onnx`", "`plain.onnx`"]


def test_github_format_is_chosen_only_under_github_actions(zoo: Path) -> None:
    plain = invoke(zoo / "negvar.onnx", zoo / "plain.onnx", "--no-verify", "-j", "1")
    assert "::error" not in plain.stdout + plain.stderr
    forced = invoke(zoo / "negvar.onnx", zoo / "plain.onnx", "--no-verify", "--format", "github")
    assert "::error file=" in forced.stdout


def test_github_annotations_go_to_stderr_with_json(zoo: Path) -> None:
    env = {"GITHUB_ACTIONS": "true"}
    result = invoke(zoo / "negvar.onnx", "--json", "--no-verify", env=env)
    assert result.stdout.lstrip().startswith("{")  # stdout stays parseable JSON
    assert "::error file=" in result.stderr


def test_fold_junit_xml_validates_and_has_one_testcase_per_model(
    zoo: Path, tmp_path: Path, junit_schema: xmlschema.XMLSchema
) -> None:
    report = tmp_path / "fold.xml"
    result = invoke(zoo, "-o", tmp_path / "out", "-j", "1", "--junit-xml", report)
    assert result.exit_code == 2, result.output
    junit_schema.validate(str(report))
    suite = ET.parse(report).getroot().find("testsuite")
    assert suite is not None
    assert (suite.get("tests"), suite.get("failures"), suite.get("errors")) == ("3", "1", "1")
    cases = {c.get("name"): c for c in suite.iter("testcase")}
    assert sorted(cases) == ["drift.onnx", "negvar.onnx", "plain.onnx"]
    failure = cases["drift.onnx"].find("failure")
    assert failure is not None and failure.get("message", "").startswith("NOT equivalent")
    error = cases["negvar.onnx"].find("error")
    assert error is not None and "\n" not in error.get("message", "")
    assert "variance is negative" in error.get("message", "")
    assert cases["plain.onnx"].find("failure") is None and cases["plain.onnx"].find("error") is None


def test_check_junit_xml_and_github(
    zoo: Path, tmp_path: Path, junit_schema: xmlschema.XMLSchema
) -> None:
    report = tmp_path / "check.xml"
    env = {"GITHUB_ACTIONS": "true"}
    result = invoke("check", zoo, "--junit-xml", report, env=env)
    assert result.exit_code == 2, result.output
    junit_schema.validate(str(report))
    cases = {c.get("name"): c for c in ET.parse(report).getroot().iter("testcase")}
    failure = cases["drift.onnx"].find("failure")
    assert failure is not None
    assert failure.get("message") == "1 foldable: 1 Conv→BN; 1 Dropout"
    assert cases["negvar.onnx"].find("error") is not None
    assert cases["plain.onnx"].find("failure") is None and cases["plain.onnx"].find("error") is None
    notes = [line for line in result.stdout.splitlines() if line.startswith("::error")]
    assert len(notes) == 2 and "title=bnfold check::drift.onnx: 1 foldable" in notes[0]


def test_junit_schema_rejects_what_it_should(
    tmp_path: Path, junit_schema: xmlschema.XMLSchema
) -> None:
    """The fixture schema is not a rubber stamp: a testcase without a name fails."""
    bad = tmp_path / "bad.xml"
    bad.write_text('<testsuites><testsuite name="s" tests="1"><testcase/></testsuite></testsuites>')
    assert not junit_schema.is_valid(str(bad))
