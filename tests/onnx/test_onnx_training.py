"""Training-mode exports: explained by default, converted to inference under ``assume_eval``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner
from support.fold_checks import export_torch, fold, ops, randomize_bn, run
from torch import nn

from bnfold.cli.main import cli
from bnfold.onnx.eval_mode import inference_reference


class Net(nn.Module):
    """Conv → BN → Dropout → ReLU → BN (the last BN folds nowhere)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn1 = nn.BatchNorm2d(4)
        self.drop = nn.Dropout(0.3)
        self.bn2 = nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn2(torch.relu(self.drop(self.bn1(self.conv(x)))))


@pytest.fixture(scope="module")
def trained() -> tuple[nn.Module, onnx.ModelProto]:
    torch.manual_seed(0)
    module = randomize_bn(Net())
    model = export_torch(
        module.train(), (torch.randn(2, 3, 8, 8),), training=torch.onnx.TrainingMode.TRAINING
    )
    module.eval()
    return module, model


def test_export_really_is_in_training_mode(trained) -> None:
    _, model = trained
    modes = [
        a.i
        for n in model.graph.node
        for a in n.attribute
        if n.op_type == "BatchNormalization" and a.name == "training_mode"
    ]
    assert modes == [1, 1]
    assert ops(model)["Dropout"] == 1


def test_default_leaves_everything_and_explains(trained) -> None:
    _, model = trained
    folded, result = fold(model)
    assert ops(folded)["BatchNormalization"] == 2 and ops(folded)["Dropout"] == 1
    for e in result.report.entries:
        assert e.status == "left"
        assert "training mode" in e.reason and "--assume-eval" in e.reason
    assert not result.report.warnings


def test_assume_eval_folds_with_running_statistics(trained) -> None:
    module, model = trained
    folded, result = fold(model, assume_eval=True)
    assert ops(folded)["Dropout"] == 0
    assert ops(folded)["BatchNormalization"] == 1  # bn2 after ReLU folds nowhere
    bn = next(n for n in folded.graph.node if n.op_type == "BatchNormalization")
    assert all(a.name != "training_mode" or a.i == 0 for a in bn.attribute)
    assert len(bn.output) == 1
    by_status = {e.name: e for e in result.report.entries}
    assert sum(e.status == "folded" for e in by_status.values()) == 1
    left = [e for e in result.report.batchnorms if e.status == "left"]
    assert "switched to running statistics" in left[0].reason
    assert any("running statistics" in w for w in result.report.warnings)
    x = np.random.default_rng(0).normal(size=(2, 3, 8, 8)).astype(np.float32)
    with torch.no_grad():
        expected = module(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(run(folded, {"input.1": x})[0], expected, rtol=1e-4, atol=1e-5)
    reference = inference_reference(model)
    np.testing.assert_allclose(run(reference, {"input.1": x})[0], expected, rtol=1e-4, atol=1e-5)


def test_cli_assume_eval_end_to_end(trained, tmp_path: Path) -> None:
    _, model = trained
    src, out = tmp_path / "train.onnx", tmp_path / "out.onnx"
    onnx.save(model, src)
    result = CliRunner().invoke(cli, [str(src), "-o", str(out), "--assume-eval"])
    assert result.exit_code == 0, result.output
    assert out.exists()
    assert "warning: --assume-eval" in result.output and "running statistics" in result.output
    assert ops(onnx.load(out))["Dropout"] == 0


def test_dropout_training_mode_is_kept_without_assume_eval() -> None:
    torch.manual_seed(1)
    module = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5))
    model = export_torch(
        module.train(), (torch.randn(2, 4),), training=torch.onnx.TrainingMode.TRAINING
    )
    folded, result = fold(model)
    assert ops(folded)["Dropout"] == 1
    assert "training mode" in result.report.dropouts[0].reason
    folded, result = fold(model, assume_eval=True)
    assert ops(folded)["Dropout"] == 0
    assert result.report.dropouts[0].status == "removed"
