"""Models torch.fx cannot trace: submodule regions, proven adjacency, and rollback."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

import torch.nn.functional as F  # noqa: E402
from support.torch_helpers import fold_checked, prepared, statuses  # noqa: E402
from torch import fx, nn  # noqa: E402

import bnfold  # noqa: E402
from bnfold.torch import register_batchnorm, unregister_batchnorm  # noqa: E402


def _conv_bn(c: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU())


class _Branchy(nn.Module):
    """Data-dependent branch at the root; traceable blocks below; direct conv/bn children."""

    def __init__(self) -> None:
        super().__init__()
        self.a = _conv_bn(4)
        self.b = _conv_bn(4)
        self.conv = nn.Conv2d(4, 4, 1)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.a(x) if x.sum() > -1e9 else self.b(x)
        return self.bn(self.conv(x))


def test_untraceable_root_falls_back_to_regions_and_adjacency() -> None:
    model = prepared(_Branchy())
    result = fold_checked(model, torch.randn(1, 4, 5, 5))
    assert "<root>" in result.trace_failures
    by_name = statuses(result)
    assert by_name["a.1"] == "folded"  # inside a traced region
    assert by_name["b.1"] == "folded"  # traced, though not executed on these inputs
    assert by_name["bn"] == "folded"  # proven adjacency
    patterns = {e.name: e.pattern for e in result.report.batchnorms}
    assert "adjacency" in patterns["bn"]
    assert isinstance(result.model.a, fx.GraphModule)


class _UntracedTap(nn.Module):
    """Untraceable, and the conv output is also read by plain Python arithmetic."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, bias=False)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        if y.shape[-1] > 2:
            return F.relu(self.bn(y)) + 0.25 * y
        return y


def test_adjacency_sees_python_uses_of_the_conv_output() -> None:
    result = fold_checked(prepared(_UntracedTap()), torch.randn(1, 3, 6, 6))
    entry = result.report.batchnorms[0]
    assert entry.status == "left"
    assert "outside" in entry.reason


class _UntracedTwice(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(4)
        self.bn2 = nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for _ in range(int(x.shape[0])):  # data-dependent loop count
            x = self.bn(self.conv(x))
        return self.bn2(x)


def test_adjacency_never_folds_a_module_called_more_than_once() -> None:
    result = fold_checked(prepared(_UntracedTwice()), torch.randn(2, 4, 5, 5))
    entry = next(e for e in result.report.batchnorms if e.name == "bn")
    assert entry.status == "left"
    assert "2 times" in entry.reason


class _UntracedConcat(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(2, 2, k, padding=k // 2) for k in (1, 3))
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = [conv(p) for conv, p in zip(self.convs, x.chunk(2, 1), strict=True)]
        return self.bn(torch.cat(parts, 1))


def test_adjacency_splits_a_bn_after_concat() -> None:
    result = fold_checked(prepared(_UntracedConcat()), torch.randn(1, 4, 5, 5))
    assert "<root>" in result.trace_failures
    entry = result.report.batchnorms[0]
    assert entry.status == "folded"
    assert "Concat" in entry.pattern


class _LyingNorm(nn.BatchNorm2d):
    """Looks like BN, but adds a constant the registration below does not know about."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) + 1.0


@pytest.mark.parametrize("traceable", [True, False])
def test_a_fold_that_changes_outputs_is_rolled_back(traceable: bool) -> None:
    register_batchnorm(_LyingNorm)  # wrong on purpose: the remainder "+1" is forgotten
    try:
        inner = nn.Sequential(nn.Conv2d(3, 4, 3), _LyingNorm(4))
        model = prepared(inner if traceable else _Untraceable(inner))
        result = fold_checked(model, torch.randn(1, 3, 6, 6))
    finally:
        unregister_batchnorm(_LyingNorm)
    assert [e.status for e in result.report.batchnorms] == ["left"]
    assert result.report.warnings or "changed the outputs" in result.report.batchnorms[0].reason


class _Untraceable(nn.Module):
    def __init__(self, inner: nn.Sequential) -> None:
        super().__init__()
        self.conv, self.bn = inner[0], inner[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn(self.conv(x))
        return y if y.shape[0] > 0 else -y


def test_without_example_inputs_untraceable_parts_are_reported() -> None:
    result = bnfold.fold(prepared(_Branchy()))
    entry = next(e for e in result.report.batchnorms if e.name == "bn")
    assert entry.status == "left"
    assert "example_inputs" in entry.reason


class _InPlaceInput(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x.relu_()  # modifies the caller's tensor
        return self.bn(self.conv(x))


def test_model_that_modifies_its_input_in_place_still_verifies() -> None:
    x = torch.randn(1, 3, 6, 6)
    before = x.clone()
    result = bnfold.fold(prepared(_InPlaceInput()), example_inputs=x)
    assert torch.equal(x, before)  # bnfold ran the model on copies
    assert statuses(result) == {"bn": "folded"}
    assert result.verification


class _Noisy(nn.Module):
    """Draws random numbers at inference (Monte-Carlo dropout style)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn(self.conv(x))
        return F.dropout(y, 0.5, training=True)


def test_random_model_is_compared_with_the_same_random_draws() -> None:
    result = bnfold.fold(prepared(_Noisy()), example_inputs=torch.randn(1, 3, 6, 6))
    assert statuses(result) == {"bn": "folded"}
    assert result.verification
    assert [e.status for e in result.report.dropouts] == ["left"]


def test_modules_with_forward_hooks_are_not_traced_through() -> None:
    inner = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    inner.register_forward_pre_hook(lambda m, args: (args[0] * 2,))
    model = prepared(nn.Sequential(inner, nn.ReLU()))
    result = fold_checked(model, torch.randn(1, 3, 6, 6))  # equal outputs: the hook still runs
    assert any("hooks" in why for why in result.trace_failures.values())
    assert statuses(result) == {"0.1": "folded"}
