"""The public result: report, verification (and that it catches injected bugs), save, the zoo."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from support.torch_helpers import fold_checked, prepared  # noqa: E402
from torch import nn  # noqa: E402

import bnfold  # noqa: E402
from bnfold.testing.zoo import ZOO, is_bn_like  # noqa: E402
from bnfold.torch import TorchFoldResult  # noqa: E402
from bnfold.torch.compare import Reference  # noqa: E402


def _small() -> nn.Module:
    return prepared(
        nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Dropout(0.1))
    )


def test_fold_dispatches_nn_modules_and_reports() -> None:
    x = torch.randn(2, 3, 6, 6)
    result = bnfold.fold(_small(), example_inputs=x)
    assert isinstance(result, TorchFoldResult)
    counts = result.report.counts()
    assert counts["batchnorm"]["folded"] == 1
    assert counts["dropout"]["removed"] == 1
    assert result.max_error is not None and result.max_error < 1e-5
    text = result.describe()
    assert "BatchNorm: 1 found, 1 folded" in text
    assert "equivalent" in text


def test_save_writes_safetensors_and_reloads_from_the_model_class(tmp_path: object) -> None:
    x = torch.randn(1, 3, 6, 6)
    result = bnfold.fold(_small(), example_inputs=(x,))
    path = result.save(tmp_path / "m.safetensors")  # type: ignore[operator]
    assert path.read_bytes()[8:9] == b"{"  # a safetensors JSON header, not a pickle
    loaded = bnfold.torch.load_folded(_small, path)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), result.model(x))
    assert set(loaded.state_dict()) == set(result.model.state_dict())


@pytest.mark.parametrize("bug", ["channel", "eps", "scale_twice"])
def test_torch_comparison_catches_injected_bugs(bug: str) -> None:
    model = _small()
    x = torch.randn(2, 3, 6, 6)
    result = fold_checked(model, x)
    ref = Reference(model, (x,))
    assert ref.compare(result.model)
    conv = next(m for m in result.model.modules() if isinstance(m, nn.Conv2d))
    bn = model[1]
    with torch.no_grad():
        if bug == "channel":  # one channel off by 1e-3 relative
            conv.weight[3] *= 1.001
            conv.bias[3] *= 1.001
        elif bug == "eps":  # folded with the wrong epsilon
            wrong = torch.sqrt(bn.running_var + 1e-5) / torch.sqrt(bn.running_var + 1e-3)
            conv.weight *= wrong.view(-1, 1, 1, 1)
        else:  # the BN scale applied twice
            s = bn.weight / torch.sqrt(bn.running_var + bn.eps)
            conv.weight *= s.view(-1, 1, 1, 1)
    comparison = ref.compare(result.model)
    assert not comparison
    assert "FAIL" in comparison.describe()


def test_bad_example_inputs_are_an_input_error() -> None:
    with pytest.raises(bnfold.InputError):
        bnfold.fold(_small(), example_inputs="not a tensor")


@pytest.mark.parametrize("name", sorted(ZOO))
def test_zoo_model_folds_and_matches(name: str) -> None:
    """Every zoo model: verified equal, nothing fails, every leftover BN has a reason."""
    model, inputs = ZOO[name]()
    result = fold_checked(model, *inputs)
    executed = _executed_bn(model, inputs)
    remaining = _executed_bn(result.model, inputs)
    assert remaining <= executed
    for entry in result.report.left:
        assert entry.reason
    folded = result.report.counts()["batchnorm"]["folded"]
    assert executed - remaining <= folded


def _executed_bn(model: nn.Module, inputs: tuple[torch.Tensor, ...]) -> int:
    calls = []
    handles = [
        m.register_forward_hook(lambda *_: calls.append(1))
        for m in model.modules()
        if is_bn_like(m)
    ]
    with torch.no_grad():
        model(*inputs)
    for h in handles:
        h.remove()
    return len(calls)


def test_folded_graph_is_scriptable_despite_future_annotations() -> None:
    """Regression: string annotations used to come out as ``_torch_Tensor_`` in fx code."""
    model, inputs = ZOO["twice_conv"]()  # zoo.py uses ``from __future__ import annotations``
    result = fold_checked(model, *inputs)
    scripted = torch.jit.script(result.model)
    with torch.no_grad():
        torch.testing.assert_close(scripted(*inputs), result.model(*inputs))


class _WithAttrs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.num_classes = 3
        self.conv = nn.Conv2d(3, 3, 3)
        self.bn = nn.BatchNorm2d(3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x))


def test_plain_attributes_survive_on_the_folded_graph() -> None:
    result = fold_checked(prepared(_WithAttrs()), torch.randn(1, 3, 5, 5))
    assert result.model.num_classes == 3
    assert type(result.model).__name__ == "_WithAttrs"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_model_folds_on_its_device() -> None:
    model, inputs = ZOO["resnet_basic"]()
    model = model.cuda()
    inputs = tuple(x.cuda() for x in inputs)
    result = fold_checked(model, *inputs)
    assert all(p.is_cuda for p in result.model.parameters())
