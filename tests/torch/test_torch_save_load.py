"""The folded module: safetensors save / load_folded round trips, torch.export and TorchScript."""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("safetensors")

import torch.nn.functional as F  # noqa: E402
from support.torch_helpers import prepared  # noqa: E402
from support.torch_lookalikes import MobileOneBlock, RepVggBlock, TinyLevit  # noqa: E402
from torch import nn  # noqa: E402

import bnfold  # noqa: E402
from bnfold.errors import InputError  # noqa: E402
from bnfold.torch import load_folded  # noqa: E402
from bnfold.torch.saving import read_manifest  # noqa: E402


def _rep_net() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), RepVggBlock(8, 8), MobileOneBlock(8)
    )


@pytest.mark.parametrize("with_inputs", [True, False])
@pytest.mark.parametrize("make", [_rep_net, TinyLevit])
def test_save_and_load_round_trip(tmp_path: Path, with_inputs: bool, make: type) -> None:
    model = prepared(make(), 21)
    x = torch.randn(2, 3, 8, 8)
    result = bnfold.fold(model, example_inputs=x if with_inputs else None)
    path = result.save(tmp_path / "folded.safetensors")
    assert read_manifest(path)["regions"][0]["folded"]
    torch.manual_seed(99)  # the factory's fresh weights differ; the file's must win
    for source in (make, make()):
        loaded = load_folded(source, path)
        with torch.no_grad():
            torch.testing.assert_close(loaded(x), result.model(x), rtol=0, atol=0)
        assert list(loaded.state_dict()) == list(result.model.state_dict())
    statuses = {getattr(e, "evidence", None) for e in result.report.batchnorms}
    assert statuses == {"verified" if with_inputs else "proven"}


def test_state_dict_keys_follow_the_original_module_tree() -> None:
    model = prepared(_rep_net(), 22)
    folded = bnfold.fold(model).model
    original = set(model.state_dict())
    keys = set(folded.state_dict())
    new = keys - original  # only biases that folding gave bias-free Convs
    assert all(k.endswith(".bias") and k[: -len("bias")] + "weight" in original for k in new)
    assert not any("running_mean" in k for k in keys)


def test_loading_into_a_different_model_is_an_input_error(tmp_path: Path) -> None:
    result = bnfold.fold(prepared(_rep_net(), 23))
    path = result.save(tmp_path / "f.safetensors")
    with pytest.raises(InputError):
        load_folded(lambda: nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8)), path)


def test_a_file_not_written_by_bnfold_is_an_input_error(tmp_path: Path) -> None:
    from safetensors.torch import save_model

    plain = tmp_path / "plain.safetensors"
    save_model(nn.Linear(2, 2), str(plain))
    with pytest.raises(InputError, match="not written by bnfold"):
        load_folded(lambda: nn.Linear(2, 2), plain)


class _Untraceable(nn.Module):
    """Data-dependent control flow: folded by adjacency, saved as BN module swaps."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn(self.conv(x))
        return F.relu(y) if float(y.sum()) > -1e9 else y


def test_adjacency_folds_round_trip(tmp_path: Path) -> None:
    model = prepared(_Untraceable(), 24)
    x = torch.randn(1, 3, 6, 6)
    result = bnfold.fold(model, example_inputs=x)
    assert result.report.batchnorms[0].status == "folded"
    path = result.save(tmp_path / "a.safetensors")
    assert read_manifest(path)["bn_swaps"] == [{"paths": ["bn"], "remainder": False}]
    loaded = load_folded(_Untraceable, path)
    assert isinstance(loaded.bn, nn.Identity)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), result.model(x), rtol=0, atol=0)


@pytest.mark.parametrize("make", [_rep_net, TinyLevit])
def test_folded_module_exports_and_scripts(make: type) -> None:
    model = prepared(make(), 25)
    x = torch.randn(2, 3, 8, 8)
    folded = bnfold.fold(model).model
    exported = torch.export.export(folded, (x,))
    scripted = torch.jit.script(folded)
    with torch.no_grad():
        expected = model(x)
        torch.testing.assert_close(exported.module()(x), expected, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(scripted(x), expected, rtol=1e-5, atol=1e-5)
