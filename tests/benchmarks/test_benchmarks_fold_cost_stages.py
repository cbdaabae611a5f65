"""The fold-cost stage profile: every stage measured, nothing counted twice, library restored."""

from __future__ import annotations

from pathlib import Path

import fold_cost_stages

from bnfold import foldmath
from bnfold.onnx.io import mapped


def test_stages_cover_the_call_without_overlap(conv_bn_path: str, tmp_path: Path) -> None:
    before = (foldmath.scale_output_channels_cast, mapped.read_mapped)
    got = fold_cost_stages.profile(Path(conv_bn_path), tmp_path / "out.onnx", repeat=2)
    assert set(got) == {*fold_cost_stages.STAGES, "total"}
    # "rest" is the total minus every stage: negative only if two stages overlapped
    assert all(got[k] >= 0 for k in fold_cost_stages.STAGES)
    assert got["conv scaling"] > 0 and got["save"] > 0 and got["deserialize"] > 0
    assert (foldmath.scale_output_channels_cast, mapped.read_mapped) == before
    assert not (tmp_path / "out.onnx").exists()
