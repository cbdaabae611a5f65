"""export_and_fold: torch → ONNX (BN kept) → ONNX fold → onnxruntime verification."""

from __future__ import annotations

import importlib.util

import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from support.torch_helpers import prepared  # noqa: E402
from torch import nn  # noqa: E402

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("bnfold.onnx.api") is None
    or importlib.util.find_spec("bnfold.equivalence.api") is None,
    reason="bnfold.onnx.api / bnfold.equivalence.api not available",
)


def _model() -> nn.Module:
    return prepared(
        nn.Sequential(
            nn.Conv2d(3, 8, 3, bias=False),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.Dropout(0.2),
            nn.Conv2d(8, 4, 3, groups=2),
            nn.BatchNorm2d(4),
        )
    )


def _op_types(path: object) -> list[str]:
    return [n.op_type for n in onnx.load(str(path)).graph.node]


def test_export_and_fold_legacy_removes_every_bn(tmp_path: object) -> None:
    from bnfold.torch.export import export_and_fold

    unfolded = tmp_path / "raw.onnx"  # type: ignore[operator]
    folded = tmp_path / "folded.onnx"  # type: ignore[operator]
    result = export_and_fold(
        _model(), torch.randn(1, 3, 8, 8), folded, exporter="legacy", unfolded_path=unfolded
    )
    assert result.exporter == "legacy"
    assert _op_types(unfolded).count("BatchNormalization") == 2  # the export kept them
    assert "BatchNormalization" not in _op_types(folded)
    assert result.verification
    assert result
    assert "folded" in result.describe()


def test_export_failure_is_a_clear_error(tmp_path: object) -> None:
    from bnfold.torch.export import ExportError, export_and_fold

    class Untraceable(nn.Module):
        def forward(self, x: torch.Tensor) -> object:
            return {"not", "a tensor"}

    with pytest.raises(ExportError, match="legacy"):
        export_and_fold(Untraceable(), torch.randn(1), tmp_path / "x.onnx", exporter="legacy")  # type: ignore[operator]


@pytest.mark.slow
def test_export_and_fold_dynamo(tmp_path: object) -> None:
    from bnfold.torch.export import export_and_fold

    folded = tmp_path / "folded.onnx"  # type: ignore[operator]
    result = export_and_fold(_model(), torch.randn(1, 3, 8, 8), folded, exporter="dynamo")
    assert result.exporter == "dynamo"
    assert "BatchNormalization" not in _op_types(folded)
    assert result.verification
