"""PyTorch side: never unpickle untrusted files; a module that raises is reported, not hidden."""

from __future__ import annotations

import ast
import pickle
from pathlib import Path
from typing import ClassVar

import pytest
from click.testing import CliRunner

import bnfold
from bnfold.cli.main import cli
from bnfold.errors import InputError, NotEquivalentError

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

PACKAGE = Path(bnfold.__file__).parent


class _Payload:
    """Unpickling this creates ``marker``: proof that a file was unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


# -- never unpickle ------------------------------------------------------------------------
def _calls(tree: ast.AST, dotted: str) -> list[ast.Call]:
    mod, _, attr = dotted.rpartition(".")
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            value = node.func.value
            if node.func.attr == attr and isinstance(value, ast.Name) and value.id == mod:
                found.append(node)
    return found


def test_source_never_unpickles_without_weights_only() -> None:
    """Every torch.load passes weights_only=True; pickle/dill loads are never used."""
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        tree = ast.parse(path.read_text(), str(path))
        for call in _calls(tree, "torch.load"):
            kw = {k.arg: k.value for k in call.keywords}
            flag = kw.get("weights_only")
            if not (isinstance(flag, ast.Constant) and flag.value is True):
                offenders.append(f"{path}:{call.lineno} torch.load without weights_only=True")
        for name in ("pickle.load", "pickle.loads", "dill.load", "joblib.load"):
            offenders += [f"{path}:{c.lineno} {name}" for c in _calls(tree, name)]
    assert offenders == []


@pytest.fixture
def evil_checkpoint(tmp_path: Path) -> tuple[Path, Path]:
    """A torch.save file whose unpickling would create ``marker``."""
    marker = tmp_path / "UNPICKLED"
    path = tmp_path / "model.pt"
    torch.save({"state": _Payload(marker)}, path)
    return path, marker


def test_checkpoint_passed_to_the_cli_is_refused_unread(evil_checkpoint) -> None:
    path, marker = evil_checkpoint
    for args in ([str(path), "--no-verify"], ["check", str(path)]):
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 2, result.output
        assert result.stderr.startswith("bnfold: error: ")
        assert "PyTorch" in result.stderr and result.stderr.count("\n") == 1
    assert not marker.exists()


def test_checkpoint_passed_to_the_api_is_refused_unread(evil_checkpoint) -> None:
    path, marker = evil_checkpoint
    with pytest.raises(InputError, match="ZIP archive"):
        bnfold.fold(path)
    with pytest.raises(InputError):
        bnfold.fold(str(path))
    assert not marker.exists()


def test_raw_pickle_renamed_onnx_is_refused_unread(tmp_path: Path) -> None:
    marker = tmp_path / "UNPICKLED"
    path = tmp_path / "model.onnx"
    path.write_bytes(pickle.dumps(_Payload(marker), protocol=4))
    result = CliRunner().invoke(cli, [str(path), "--no-verify"])
    assert result.exit_code == 2 and "pickle" in result.stderr
    assert not marker.exists()


# -- a module that raises ------------------------------------------------------------------
class _Raises(nn.Module):
    """Conv → BN whose forward raises from call number ``fail_from`` on."""

    calls: ClassVar[list[int]] = [0]  # shared by deep copies: counts every forward

    def __init__(self, fail_from: int) -> None:
        super().__init__()
        self.fail_from = fail_from
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        with torch.no_grad():
            self.bn.running_mean.uniform_(-1, 1)
            self.bn.running_var.uniform_(0.5, 2)
            self.bn.weight.uniform_(0.5, 2)
            self.bn.bias.uniform_(-1, 1)

    def forward(self, x):
        self.calls[0] += 1
        if self.calls[0] >= self.fail_from:
            raise RuntimeError(f"boom in forward (call {self.calls[0]})")
        return self.bn(self.conv(x))


def test_module_that_raises_in_forward_propagates() -> None:
    module = _Raises(fail_from=1).eval()
    before = {k: v.clone() for k, v in module.state_dict().items()}
    _Raises.calls[0] = 0
    with pytest.raises(RuntimeError, match="boom in forward"):
        bnfold.fold(module, example_inputs=torch.randn(1, 3, 8, 8))
    after = module.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "the caller's module changed"


@pytest.mark.parametrize("fail_from", [2, 3, 4])
def test_module_that_raises_later_is_reported_not_equivalent(fail_from: int) -> None:
    """A forward that fails mid-way (tracing, recording, comparing) never passes silently."""
    _Raises.calls[0] = 0
    result = bnfold.fold(_Raises(fail_from).eval(), example_inputs=torch.randn(1, 3, 8, 8))
    assert result.verification is not None and not result.verification
    assert "boom in forward" in result.describe()
    _Raises.calls[0] = 0
    with pytest.raises(NotEquivalentError, match="boom in forward"):
        bnfold.fold(_Raises(fail_from).eval(), example_inputs=torch.randn(1, 3, 8, 8), strict=True)
