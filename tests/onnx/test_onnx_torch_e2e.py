"""End to end: plain torch modules exported by both torch exporters, folded, checked in ORT.

Both exports keep BatchNormalization (dynamo with ``optimize=False``; legacy with
``do_constant_folding=False``). Every BN gets random running statistics and affine
parameters. Exports are cached per session.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Callable
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
import numpy as np  # noqa: E402
import onnx  # noqa: E402
from support.onnx_checks import (  # noqa: E402
    assert_close,
    assert_equivalent,
    assert_hygiene,
    op_count,
    ort_run,
    to_proto,
)
from support.torch_helpers import randomise_bn  # noqa: E402
from torch import nn  # noqa: E402

import bnfold  # noqa: E402


class ResBlock(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, stride=2, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(8)
        self.down = nn.Conv2d(3, 8, 1, stride=2, bias=False)
        self.bn_down = nn.BatchNorm2d(8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return torch.relu(y + self.bn_down(self.down(x)))


class DepthwiseSeparable(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.dw = nn.Conv2d(6, 6, 3, padding=2, dilation=2, groups=6, bias=False)
        self.bn_dw = nn.BatchNorm2d(6)
        self.drop = nn.Dropout(0.3)
        self.pw = nn.Conv2d(6, 10, 1)
        self.bn_pw = nn.BatchNorm2d(10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = nn.functional.relu6(self.bn_dw(self.dw(x)))
        return self.bn_pw(self.pw(self.drop(y)))


class GroupedDecoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.up1 = nn.ConvTranspose2d(8, 12, 3, stride=2, padding=1, output_padding=1, groups=2)
        self.bn1 = nn.BatchNorm2d(12)
        self.up2 = nn.ConvTranspose2d(12, 24, 2, stride=2, groups=12, bias=False)
        self.bn2 = nn.BatchNorm2d(24)
        self.up3 = nn.ConvTranspose2d(24, 5, 3, padding=1)
        self.bn3 = nn.BatchNorm2d(5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn1(self.up1(x)))
        y = torch.relu(self.bn2(self.up2(y)))
        return self.bn3(self.up3(y))


class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(16, 32)
        self.bn1 = nn.BatchNorm1d(32)
        self.drop = nn.Dropout(0.5)
        self.fc2 = nn.Linear(32, 8, bias=False)
        self.bn2 = nn.BatchNorm1d(8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.drop(torch.relu(self.bn1(self.fc1(x))))
        return self.bn2(self.fc2(y))


class Conv1dNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv1d(4, 8, 5, stride=2, padding=2)
        self.b1 = nn.BatchNorm1d(8)
        self.c2 = nn.Conv1d(8, 8, 3, dilation=2, groups=2, bias=False)
        self.b2 = nn.BatchNorm1d(8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b2(self.c2(torch.relu(self.b1(self.c1(x)))))


class Conv3dNet(nn.Module):
    def __init__(self, bias: bool = True) -> None:
        super().__init__()
        self.c1 = nn.Conv3d(2, 4, 3, padding=1, bias=bias)
        self.b1 = nn.BatchNorm3d(4)
        self.c2 = nn.Conv3d(4, 4, 3, stride=2, groups=4, bias=bias)
        self.b2 = nn.BatchNorm3d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b2(self.c2(torch.relu(self.b1(self.c1(x)))))


def conv3d_no_bias() -> nn.Module:
    return Conv3dNet(bias=False)


MODULES: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...], int]] = {
    # name: (factory, input shape, number of BNs)
    "resblock": (ResBlock, (2, 3, 8, 8), 3),
    "depthwise_separable": (DepthwiseSeparable, (2, 6, 7, 7), 2),
    "grouped_decoder": (GroupedDecoder, (2, 8, 3, 3), 3),
    "mlp": (MLP, (3, 16), 2),
    "conv1d": (Conv1dNet, (2, 4, 20), 2),
    "conv3d": (Conv3dNet, (1, 2, 5, 5, 5), 2),
    "conv3d_no_bias": (conv3d_no_bias, (1, 2, 5, 5, 5), 2),
}
EXPORTERS = ("dynamo", "legacy")
Exported = tuple[Path, nn.Module]


def export(module: nn.Module, shape: tuple[int, ...], path: Path, exporter: str) -> None:
    args = (torch.randn(*shape),)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        if exporter == "dynamo":
            torch.onnx.export(module, args, str(path), dynamo=True, optimize=False)
        else:
            torch.onnx.export(module, args, str(path), dynamo=False, do_constant_folding=False)


@pytest.fixture(scope="session")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str, str], Exported]:
    """``exported(name, exporter)`` → (path, module), exported once per session."""
    folder = tmp_path_factory.mktemp("torch_exports")
    cache: dict[tuple[str, str], Exported] = {}

    def get(name: str, exporter: str) -> Exported:
        key = (name, exporter)
        if key not in cache:
            factory, shape, _ = MODULES[name]
            torch.manual_seed(0)
            module = randomise_bn(factory(), seed=len(name))
            path = folder / f"{name}.{exporter}.onnx"
            export(module, shape, path, exporter)
            cache[key] = (path, module)
        return cache[key]

    return get


def assert_matches_torch(
    module: nn.Module, folded: onnx.ModelProto, shape: tuple[int, ...]
) -> None:
    """The folded model reproduces the torch module's own output."""
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        expected = module(x).numpy()
    got = ort_run(folded, {folded.graph.input[0].name: x.numpy()})[folded.graph.output[0].name]
    assert float(np.abs(expected).max()) > 0.1
    assert_close(expected, got, tol=1e-4, what="folded vs torch")


def check_folded(path: Path, n_bn: int) -> onnx.ModelProto:
    """Every BN and Dropout gone, report complete, hygiene kept; returns the folded model."""
    assert op_count(path, "BatchNormalization") == n_bn, "the export should keep every BN"
    result = bnfold.fold(path)
    folded = result.model
    assert op_count(folded, "BatchNormalization") == 0, result.report.describe()
    assert op_count(folded, "Dropout") == 0
    counts = result.report.counts()["batchnorm"]
    assert counts == {"found": n_bn, "folded": n_bn, "rewritten": 0, "left": 0, "kept": 0}
    assert len(folded.graph.node) < len(to_proto(path).graph.node)
    assert_hygiene(path, folded)
    return folded


ORT_CASES = [
    pytest.param(name, exporter, id=f"{name}-{exporter}")
    for name in MODULES
    for exporter in EXPORTERS
    if (name, exporter) != ("conv3d_no_bias", "dynamo")
]


@pytest.mark.parametrize(("name", "exporter"), ORT_CASES)
def test_exported_module_folds_exactly(
    exported: Callable[[str, str], Exported], name: str, exporter: str
) -> None:
    """Folded vs the original export (both ORT_DISABLE_ALL, 3 seeds) and vs torch itself."""
    path, module = exported(name, exporter)
    _, shape, n_bn = MODULES[name]
    folded = check_folded(path, n_bn)
    assert_equivalent(path, folded, seeds=(0, 1, 2))
    assert_matches_torch(module, folded, shape)


def test_dynamo_bias_free_conv3d_folds(exported: Callable[[str, str], Exported]) -> None:
    """torch's dynamo exporter (optimize=False) writes a bias-free Conv3d's computed zero
    bias with shape (C_out, 2), which onnxruntime rejects at run time; the folded model
    carries a proper bias and must match torch."""
    path, module = exported("conv3d_no_bias", "dynamo")
    _, shape, n_bn = MODULES["conv3d_no_bias"]
    folded = check_folded(path, n_bn)
    assert_matches_torch(module, folded, shape)
