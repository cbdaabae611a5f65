"""What the commands call is library code: batch folding and verify's two phases, no CLI."""

from __future__ import annotations

from pathlib import Path

import pytest
from support.robust_corpus import good_model, save

from bnfold.batch import expand_models, fold_many
from bnfold.equivalence.api import verify
from bnfold.equivalence.judge import judge
from bnfold.equivalence.run import run_pair
from bnfold.workflow import FoldFileOptions


def test_fold_many_returns_outcomes_and_reports_progress_without_printing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for i in range(2):
        save(good_model(seed=i), tmp_path / f"m{i}.onnx")
    seen: list[str] = []
    outcomes = fold_many(
        expand_models([tmp_path]), FoldFileOptions(verify=False), jobs=1, progress=seen.append
    )
    assert [o.status for o in outcomes] == ["ok", "ok"]
    assert seen == ["m0.onnx", "m1.onnx"]
    assert (tmp_path / "m1.folded.onnx").is_file()
    assert capsys.readouterr() == ("", "")


def test_run_pair_then_judge_gives_what_verify_gives(tmp_path: Path) -> None:
    path = tmp_path / "m.onnx"
    save(good_model(), path)
    folded = fold_many([path], FoldFileOptions(verify=False), jobs=1)[0].output
    run = run_pair(path, folded, seeds=2)
    assert [s.seed for s in run.sets] == [0, 1]
    assert set(run.sets[0].reference) == set(run.sets[0].candidate) >= {"y"}
    assert run.sets[0].perturbed  # the noise floor's runs are kept for the judge
    judged, direct = judge(run), verify(path, folded, seeds=2, measure_floor=True)
    assert judged and direct
    assert judged.to_dict() == direct.to_dict()
