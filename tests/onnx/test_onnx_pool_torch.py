"""Pooling heads exported from torch: ``BN → mean / AdaptiveAvgPool2d → Linear`` folds away.

Both exporters keep BN (dynamo with ``optimize=False``; legacy with
``do_constant_folding=False``). Each head's BN follows a ReLU, so only the consumer side
(through the pooling) can absorb it; the Conv → BN before it folds into the Conv.
"""

from __future__ import annotations

import contextlib
import io
import warnings

import numpy as np
import onnx
import pytest
from support.fold_checks import assert_equivalent, fold, ops, randomize_bn, run

torch = pytest.importorskip("torch")
nn = torch.nn


class Head(nn.Module):
    """Conv → BN → ReLU → BN → pool over H, W → Linear."""

    def __init__(self, pool: str) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn_conv = nn.BatchNorm2d(8)
        self.bn_head = nn.BatchNorm2d(8)
        self.avg = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 5)
        self.pool = pool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn_head(torch.relu(self.bn_conv(self.conv(x))))
        pooled = y.mean((2, 3)) if self.pool == "mean" else torch.flatten(self.avg(y), 1)
        return self.fc(pooled)


def export(module: nn.Module, x: torch.Tensor, exporter: str) -> onnx.ModelProto:
    buf = io.BytesIO()
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        if exporter == "dynamo":
            program = torch.onnx.export(module, (x,), dynamo=True, optimize=False)
            return program.model_proto
        torch.onnx.export(module, (x,), buf, dynamo=False, do_constant_folding=False)
    return onnx.load_from_string(buf.getvalue())


HEAD_PATTERNS = {  # what each exporter makes of the pooling and flatten (torch 2.13)
    ("mean", "dynamo"): "ReduceMean→Gemm",
    ("mean", "legacy"): "ReduceMean→Gemm",
    ("adaptive_avg", "dynamo"): "ReduceMean→Reshape→Gemm",
    ("adaptive_avg", "legacy"): "GlobalAveragePool→Flatten→Gemm",
}


@pytest.mark.parametrize("exporter", ["dynamo", "legacy"])
@pytest.mark.parametrize("pool", ["mean", "adaptive_avg"])
def test_torch_pooling_head_folds_every_bn(pool: str, exporter: str) -> None:
    torch.manual_seed(0)
    module = randomize_bn(Head(pool), seed=1).eval()
    x = torch.randn(2, 3, 6, 6)
    model = export(module, x, exporter)
    assert ops(model)["BatchNormalization"] == 2
    folded, result = fold(model)
    assert ops(folded)["BatchNormalization"] == 0, result.report.describe()
    counts = result.report.counts()["batchnorm"]
    assert counts == {"found": 2, "folded": 2, "rewritten": 0, "left": 0, "kept": 0}
    patterns = sorted(e.pattern or "" for e in result.report.batchnorms)
    assert patterns == ["BN→" + HEAD_PATTERNS[pool, exporter] + " (consumer)", "Conv→BN"]
    assert_equivalent(model, folded, rtol=1e-5, seeds=3)
    with torch.no_grad():
        expected = module(x).numpy()
    got = run(folded, {folded.graph.input[0].name: x.numpy()})[0]
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
