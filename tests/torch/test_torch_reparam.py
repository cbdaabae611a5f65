"""Re-parameterised blocks: RepVGG / MobileOne identity branches, 1×1 branches, identity terms."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

import numpy as np  # noqa: E402
from support.torch_helpers import fold_checked, modules_of, prepared, statuses  # noqa: E402
from support.torch_lookalikes import MobileOneBlock, RepVggBlock, RepVitMixer, conv_bn  # noqa: E402
from torch import nn  # noqa: E402

import bnfold  # noqa: E402
from bnfold import patterns  # noqa: E402


def _close(result: bnfold.torch.TorchFoldResult, model: nn.Module, x: torch.Tensor) -> None:
    with torch.no_grad():
        torch.testing.assert_close(result.model(x), model(x), rtol=1e-5, atol=1e-5)


def _evidence(result: bnfold.torch.TorchFoldResult) -> set[str]:
    return {getattr(e, "evidence", None) for e in result.report.batchnorms if e.status == "folded"}


@pytest.mark.parametrize("with_inputs", [True, False])
@pytest.mark.parametrize("groups", [1, 2])
def test_repvgg_block_becomes_one_conv(with_inputs: bool, groups: int) -> None:
    model = prepared(nn.Sequential(RepVggBlock(4, 4, groups=groups), RepVggBlock(4, 4, 2)), 3)
    x = torch.randn(2, 4, 9, 9)
    result = bnfold.fold(model, example_inputs=x if with_inputs else None)
    assert set(statuses(result).values()) == {"folded"}
    _close(result, model, x)
    assert len(modules_of(result.model, nn.Conv2d)) == 2  # one Conv per block
    assert not modules_of(result.model, nn.BatchNorm2d)
    assert _evidence(result) == {"verified" if with_inputs else "proven"}
    identity = next(e for e in result.report.batchnorms if e.name == "0.identity")
    assert "identity" in identity.pattern


@pytest.mark.parametrize("with_inputs", [True, False])
@pytest.mark.parametrize(("branches", "groups", "k"), [(1, 1, 3), (3, 4, 3), (2, 1, 1)])
def test_mobileone_block_sum_started_at_zero(
    with_inputs: bool, branches: int, groups: int, k: int
) -> None:
    model = prepared(MobileOneBlock(4, branches, groups, k), 5)
    x = torch.randn(2, 4, 7, 7)
    result = bnfold.fold(model, example_inputs=x if with_inputs else None)
    assert set(statuses(result).values()) == {"folded"}
    _close(result, model, x)
    assert len(modules_of(result.model, nn.Conv2d)) == 1


def test_regression_identity_bn_before_its_sibling_conv_bn_in_graph_order() -> None:
    """RepVGG computes identity(x) first: its Conv sibling still had its own BN then."""
    model = prepared(RepVggBlock(4, 4), 1)
    result = fold_checked(model, torch.randn(1, 4, 6, 6))
    assert statuses(result)["identity"] == "folded"


def test_regression_mobileone_branch_sum_starting_at_zero_blocked_the_identity_fold() -> None:
    """``out = 0; out += ck(x)`` traces to ``add(0, …)``, which hid the Conv terms."""
    model = prepared(MobileOneBlock(4, 1), 2)
    result = fold_checked(model, torch.randn(1, 4, 6, 6))
    assert statuses(result)["identity"] == "folded"


@pytest.mark.parametrize("with_inputs", [True, False])
def test_identity_term_in_a_sum_read_by_bn_repvit(with_inputs: bool) -> None:
    model = prepared(RepVitMixer(6), 4)
    x = torch.randn(2, 6, 5, 5)
    result = bnfold.fold(model, example_inputs=x if with_inputs else None)
    assert statuses(result) == {"conv.1": "folded", "bn": "folded"}
    _close(result, model, x)
    assert result.report.batchnorms[-1].pattern.startswith("Add(")
    assert len(modules_of(result.model, nn.Conv2d)) == 1


class _SumOfTwo(nn.Module):
    """BN after a sum of two different layers' outputs (each absorbs s, one also t)."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 6, 3, padding=1)
        self.b = nn.Conv2d(3, 6, 3, padding=2, dilation=2)  # not mergeable into a
        self.bn = nn.BatchNorm2d(6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.a(x) + self.b(x))


@pytest.mark.parametrize("with_inputs", [True, False])
def test_bn_after_add_of_layer_outputs(with_inputs: bool) -> None:
    model = prepared(_SumOfTwo(), 6)
    x = torch.randn(2, 3, 5, 5)
    result = bnfold.fold(model, example_inputs=x if with_inputs else None)
    assert statuses(result) == {"bn": "folded"}
    _close(result, model, x)
    assert set(result.report.batchnorms[0].into.split(", ")) == {"a", "b"}
    assert len(modules_of(result.model, nn.Conv2d)) == 2


class _Shared(nn.Module):
    """The 1×1 branch's output is also returned: the branches must stay apart."""

    def __init__(self) -> None:
        super().__init__()
        self.k = conv_bn(4, 4, 3)
        self.one = conv_bn(4, 4, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        one = self.one(x)
        return self.k(x) + one, one


def test_branch_used_elsewhere_is_not_merged() -> None:
    model = prepared(_Shared(), 7)
    result = fold_checked(model, torch.randn(1, 4, 6, 6))
    assert len(modules_of(result.model, nn.Conv2d)) == 2


def test_bn_on_a_sum_with_a_broadcast_term_is_left() -> None:
    class Broadcast(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Conv2d(3, 4, 3, padding=1)
            self.b = nn.Conv2d(3, 1, 1)
            self.bn = nn.BatchNorm2d(4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.bn(self.a(x) + self.b(x))

    result = fold_checked(prepared(Broadcast(), 8), torch.randn(1, 3, 5, 5))
    entry = result.report.batchnorms[0]
    assert entry.status == "left"
    assert "broadcast" in entry.reason


def test_embed_kernel_places_the_small_kernel_on_the_aligned_tap() -> None:
    small = np.arange(4.0).reshape(2, 2, 1, 1)
    big = patterns.embed_kernel(small, (0, 0), [3, 5], (1, 2))
    assert big is not None and big.shape == (2, 2, 3, 5)
    assert big[:, :, 1, 2].tolist() == small[:, :, 0, 0].tolist()
    assert np.count_nonzero(big) == np.count_nonzero(small)
    assert patterns.embed_kernel(np.ones((1, 1, 3, 3)), (1, 1), [3, 3], (0, 0)) is None


def test_aligned_tap_allows_strides_identity_tap_does_not() -> None:
    assert patterns.aligned_tap([3, 3], [1, 1], [1, 1], [1, 1]) == (1, 1)
    assert patterns.identity_tap([3, 3], [2, 2], [1, 1], [1, 1], [1, 1]) is None
    assert patterns.aligned_tap([3], [1], [0], [0]) is None


def test_split_sum_shifts_only_the_first_term() -> None:
    s, t = np.array([2.0, 3.0]), np.array([1.0, -1.0])
    (s0, t0), (s1, t1) = patterns.split_sum(s, t, 2)
    assert s0.tolist() == s1.tolist() == [2.0, 3.0]
    assert t0.tolist() == [1.0, -1.0] and t1.tolist() == [0.0, 0.0]


class _ZeroThenInPlace(nn.Module):
    """``y = 0 + x`` followed by an in-place op on ``y`` must not write into ``x``."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 1)
        self.bn = nn.BatchNorm2d(3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = 0 + x
        y.mul_(2.0)
        return self.bn(self.conv(x)) + y


def test_zero_add_before_an_in_place_op_is_kept() -> None:
    model = prepared(_ZeroThenInPlace(), 9)
    result = fold_checked(model, torch.randn(1, 3, 4, 4))
    assert statuses(result) == {"bn": "folded"}
