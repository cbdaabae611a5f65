"""Real paddle2onnx exports (tests/fixtures/paddle, made by make_paddle_models.py): every BN
folds, Dropout goes, the output is equivalent, valid and keeps its interface — through the
API and through the ``bnfold`` command. ``constant_weights/`` holds paddle2onnx 1.x exports
of the same models, in which every weight is a ``Constant`` node."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest
from click.testing import CliRunner
from support.onnx_checks import assert_equivalent, assert_hygiene, op_count

import bnfold
from bnfold.cli.main import cli

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "paddle"
CONSTANT_WEIGHTS = FIXTURES / "constant_weights"
MODELS = sorted(FIXTURES.glob("*.onnx")) + sorted(CONSTANT_WEIGHTS.glob("*.onnx"))


def test_the_paddle_fixtures_are_there() -> None:
    names = [str(p.relative_to(FIXTURES).with_suffix("")) for p in MODELS]
    assert names == [
        *("conv3d", "decoder", "hybrid", "mobilev2", "resnet"),
        *(f"constant_weights/{n}" for n in ("conv3d", "decoder", "hybrid", "mobilev2")),
    ]


@pytest.mark.parametrize("path", sorted(CONSTANT_WEIGHTS.glob("*.onnx")), ids=lambda p: p.stem)
def test_constant_weight_fixtures_hold_no_initializer(path: Path) -> None:
    model = onnx.load(path)
    assert len(model.graph.initializer) == 0
    assert op_count(model, "Constant") > 0


@pytest.mark.parametrize("path", MODELS, ids=lambda p: str(p.relative_to(FIXTURES).with_suffix("")))
def test_paddle_export_folds_every_batchnorm(path: Path) -> None:
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


@pytest.mark.parametrize(
    "path", [FIXTURES / "decoder.onnx", CONSTANT_WEIGHTS / "decoder.onnx"], ids=["p2o-2", "p2o-1"]
)
def test_paddle_decoder_through_the_cli(path: Path, tmp_path: Path) -> None:
    out = tmp_path / "decoder.folded.onnx"
    result = CliRunner().invoke(cli, [str(path), "-o", str(out), "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.output)
    counts = payload["report"]["counts"]["batchnorm"]
    assert counts["left"] == 0 and counts["folded"] == counts["found"] > 0
    assert payload["verification"]["equivalent"] is True
    assert op_count(onnx.load(out), "BatchNormalization") == 0
