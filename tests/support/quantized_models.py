"""Real quantized models for tests: a small torch CNN, exported unfolded and quantized.

``export_small_cnn`` writes Conv→BN→ReLU blocks (random BN statistics) with the dynamo
exporter (``optimize=False``); ``quantize`` runs onnxruntime's ``quantize_static`` in QDQ
format (not ``quant_pre_process``: it fails on dynamo exports).
"""

from __future__ import annotations

import contextlib
import io
import warnings
from pathlib import Path

import numpy as np
import torch
from onnxruntime import quantization
from torch import nn

from support.torch_helpers import randomise_bn

SHAPE = (1, 3, 8, 8)


class SmallCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.b1 = nn.BatchNorm2d(8)
        self.c2 = nn.Conv2d(8, 8, 3, padding=1)
        self.b2 = nn.BatchNorm2d(8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.b1(self.c1(x)))
        return torch.relu(self.b2(self.c2(y)))


class _Reader(quantization.CalibrationDataReader):  # type: ignore[misc]
    def __init__(self) -> None:
        rng = np.random.default_rng(0)
        self._feeds = iter([{"x": rng.standard_normal(SHAPE).astype(np.float32)} for _ in range(4)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._feeds, None)


def export_small_cnn(path: Path) -> Path:
    """The float model, BN left unfolded (seeded: the same weights every run)."""
    torch.manual_seed(0)
    module = randomise_bn(SmallCNN(), seed=5)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module, (torch.randn(SHAPE),), str(path), input_names=["x"], dynamo=True, optimize=False
        )
    return path


def quantize(src: Path, dst: Path, per_channel: bool, **kwargs: object) -> Path:
    """``quantize_static``, QDQ format (not ``quant_pre_process``: it fails on dynamo exports)."""
    quantization.quantize_static(
        str(src),
        str(dst),
        _Reader(),
        quant_format=quantization.QuantFormat.QDQ,
        per_channel=per_channel,
        **kwargs,
    )
    return dst
