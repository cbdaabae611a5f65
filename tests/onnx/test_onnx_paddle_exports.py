"""Real paddle2onnx exports (tests/fixtures/paddle, made by make_paddle_models.py): every BN
folds, Dropout goes, the output is equivalent, valid and keeps its interface — through the
API and through the ``bnfold`` command."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest
from click.testing import CliRunner
from helpers import assert_equivalent, assert_hygiene, op_count

import bnfold
from bnfold.cli.main import cli

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "paddle"
MODELS = sorted(p.stem for p in FIXTURES.glob("*.onnx"))


def test_the_paddle_fixtures_are_there() -> None:
    assert MODELS == ["conv3d", "decoder", "hybrid", "mobilev2", "resnet"]


@pytest.mark.parametrize("name", MODELS)
def test_paddle_export_folds_every_batchnorm(name: str) -> None:
    path = FIXTURES / f"{name}.onnx"
    original = onnx.load(path)
    assert op_count(original, "BatchNormalization") > 0
    result = bnfold.fold(path)
    folded = result.model
    assert op_count(folded, "BatchNormalization") == 0
    assert op_count(folded, "Dropout") == 0
    assert all(
        e.status == "folded" for e in result.report.entries if e.kind == "BatchNormalization"
    )
    assert_equivalent(original, folded)
    assert_hygiene(original, folded)


@pytest.mark.parametrize("name", ["decoder", "hybrid"])
def test_paddle_export_through_the_cli(name: str, tmp_path: Path) -> None:
    out = tmp_path / f"{name}.folded.onnx"
    result = CliRunner().invoke(cli, [str(FIXTURES / f"{name}.onnx"), "-o", str(out), "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.output)
    counts = payload["report"]["counts"]["batchnorm"]
    assert counts["left"] == 0 and counts["folded"] == counts["found"] > 0
    assert payload["verification"]["equivalent"] is True
    assert op_count(onnx.load(out), "BatchNormalization") == 0
