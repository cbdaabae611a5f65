"""Folds proven without example inputs: shapes from module attributes and every input rank."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from support.export_models import TwoHeads  # noqa: E402
from support.torch_helpers import prepared, statuses  # noqa: E402
from support.torch_lookalikes import LinearNorm, TinyLevit  # noqa: E402
from torch import nn  # noqa: E402

import bnfold  # noqa: E402
from bnfold.torch.fx_shapes import static_shapes  # noqa: E402
from bnfold.torch.tracing import trace  # noqa: E402


def _check(model: nn.Module, x: torch.Tensor, with_inputs: bool) -> bnfold.torch.TorchFoldResult:
    result = bnfold.fold(model, example_inputs=x if with_inputs else None)
    with torch.no_grad():
        torch.testing.assert_close(result.model(x), model(x), rtol=1e-5, atol=1e-5)
    return result


@pytest.mark.parametrize("with_inputs", [True, False])
def test_levit_lookalike_folds_every_bn(with_inputs: bool) -> None:
    model = prepared(TinyLevit(), 11)
    result = _check(model, torch.randn(2, 3, 8, 8), with_inputs)
    assert set(statuses(result).values()) == {"folded"}
    evidence = {e.evidence for e in result.report.batchnorms}  # type: ignore[attr-defined]
    assert evidence == {"verified" if with_inputs else "proven"}
    head = next(e for e in result.report.batchnorms if e.name == "head_bn")
    assert head.pattern == "BN→Linear (consumer)"
    assert "proven structurally" in result.describe() or with_inputs
    assert result.report.to_dict()["entries"][0]["evidence"] in ("verified", "proven")


def test_regression_levit_linear_bn_needed_example_inputs() -> None:
    """A Conv stem pins the input rank at 4, so flatten(0, 1) of the tokens keeps C last."""
    result = bnfold.fold(prepared(TinyLevit(), 12))
    qkv = next(e for e in result.report.batchnorms if e.name == "qkv.bn")
    assert qkv.status == "folded" and qkv.pattern == "Linear→BN"


def test_linear_norm_alone_is_not_proven_without_inputs() -> None:
    """On its own, a 4-D input is accepted too, and then BN normalises another axis."""
    model = prepared(LinearNorm(6, 8), 13)
    result = bnfold.fold(model)
    entry = result.report.batchnorms[0]
    assert entry.status == "left"
    assert "example_inputs" in entry.reason
    folded = bnfold.fold(model, example_inputs=torch.randn(2, 5, 6))
    assert folded.report.batchnorms[0].status == "folded"


class _Layouts(nn.Module):
    """Conv1d stem, then BN through transpose, view, unsqueeze/squeeze and permute chains."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv1d(3, 6, 3, padding=1)
        self.fc = nn.Linear(6, 6)
        self.bn1 = nn.BatchNorm1d(6)  # fc → transpose(1, 2)
        self.conv = nn.Conv1d(6, 6, 1)
        self.bn2 = nn.BatchNorm2d(6)  # conv → unsqueeze(-1)
        self.conv2 = nn.Conv2d(6, 4, 1)
        self.bn3 = nn.BatchNorm1d(4)  # conv2 → squeeze(-1) → contiguous
        self.fc2 = nn.Linear(4, 4)
        self.bn4 = nn.BatchNorm1d(4)  # fc2 on (B, L, C) → permute(0, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.stem(x)
        y = self.bn1(self.fc(y.transpose(1, 2)).transpose(1, 2))
        y = self.bn2(self.conv(y).unsqueeze(-1))
        y = self.bn3(self.conv2(y).squeeze(-1).contiguous())
        return self.bn4(self.fc2(y.transpose(1, 2)).permute(0, 2, 1))


@pytest.mark.parametrize("with_inputs", [True, False])
def test_bn_through_layout_ops(with_inputs: bool) -> None:
    model = prepared(_Layouts(), 14)
    result = _check(model, torch.randn(2, 3, 7), with_inputs)
    assert statuses(result) == dict.fromkeys(("bn1", "bn2", "bn3", "bn4"), "folded")


class _WrongAxis(nn.Module):
    """A Conv stem pins the rank; then BN1d normalises the token axis of a Linear output."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv1d(3, 8, 1)
        self.fc = nn.Linear(8, 8)
        self.bn = nn.BatchNorm1d(8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.fc(self.stem(x)))


def test_wrong_axis_is_left_without_inputs_too() -> None:
    result = _check(prepared(_WrongAxis(), 15), torch.randn(2, 3, 8), False)
    entry = next(e for e in result.report.batchnorms if e.name == "bn")
    assert entry.status == "left"
    assert "axis" in entry.reason


class _ConvFlattenBN(nn.Module):
    """``view(B, C, -1)`` keeps the leading dims: the channel index survives any H×W."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU())  # 4-D only
        self.conv = nn.Conv2d(4, 5, 3)
        self.bn = nn.BatchNorm1d(5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(self.stem(x))
        return self.bn(y.view(y.shape[0], y.shape[1], -1))


@pytest.mark.parametrize("with_inputs", [True, False])
def test_conv_view_bn1d(with_inputs: bool) -> None:
    result = _check(prepared(_ConvFlattenBN(), 16), torch.randn(2, 3, 8, 8), with_inputs)
    assert statuses(result) == {"stem.1": "folded", "bn": "folded"}


def test_unbatched_input_keeps_a_view_bn_unproven() -> None:
    """Without a 4-D-only layer, a 3-D (unbatched) input with H' = C is accepted too."""

    class ViewBN(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(4, 5, 3)
            self.bn = nn.BatchNorm1d(5)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.conv(x)
            return self.bn(y.view(y.shape[0], y.shape[1], -1))

    model = prepared(ViewBN(), 16)
    entry = bnfold.fold(model).report.batchnorms[0]
    assert entry.status == "left" and "example_inputs" in entry.reason


def test_static_shapes_rule_out_ranks_the_model_rejects() -> None:
    gm = trace(prepared(TinyLevit(), 17))
    assert not isinstance(gm, str)
    shapes = static_shapes(gm)
    x = next(n for n in gm.graph.nodes if n.op == "placeholder")
    assert shapes[x] == {(None, None, None, None)}  # only 4-D inputs survive
    flat = next(n for n in gm.graph.nodes if n.name == "flatten_1")
    assert shapes[flat] == {(None, 24)}


def test_static_shapes_of_an_untraceable_rank_are_unknown_not_wrong() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU())
    gm = trace(model)
    assert not isinstance(gm, str)
    shapes = static_shapes(gm)
    out = next(n for n in gm.graph.nodes if n.op == "call_module" and n.target == "1")
    assert len(shapes[out]) == 6  # ranks 1 … 6 all accepted: nothing proven about the rank


class _TimmLinear(nn.Linear):
    """timm's Linear: its own forward (casts the weight), still a linear map."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(x, self.weight.to(x.dtype), self.bias)


class _PooledHead(nn.Module):
    """StarNet's head: BN → AdaptiveAvgPool2d → Flatten → Linear (the BN follows a residual)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.norm = nn.BatchNorm2d(6)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.head = _TimmLinear(6, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return self.head(self.flatten(self.pool(self.norm(y + y.relu()))))


@pytest.mark.parametrize("with_inputs", [True, False])
def test_bn_through_pooling_into_a_custom_linear(with_inputs: bool) -> None:
    result = _check(prepared(_PooledHead(), 18), torch.randn(2, 3, 5, 5), with_inputs)
    entry = result.report.batchnorms[0]
    assert entry.status == "folded"
    assert entry.pattern == "BN→AdaptiveAvgPool2d→Flatten→Linear (consumer)"


def test_bn_through_max_pooling_needs_positive_scale() -> None:
    model = prepared(nn.Sequential(nn.BatchNorm2d(3), nn.MaxPool2d(2), nn.Conv2d(3, 4, 1)), 19)
    with torch.no_grad():
        model[0].weight.abs_()
    result = _check(model, torch.randn(1, 3, 4, 4), False)
    assert result.report.batchnorms[0].status == "folded"
    with torch.no_grad():
        model[0].weight[0] = -1.0
    assert bnfold.fold(model).report.batchnorms[0].status == "left"


class _ChunkAttention(nn.Module):
    """iFormer-like: ``chunk`` and ``scaled_dot_product_attention`` keep the rank known."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 12, 2, 2), nn.BatchNorm2d(12))
        self.bn = nn.BatchNorm1d(4)
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.stem(x).flatten(2).transpose(1, 2)
        q, k, v = tokens.chunk(3, dim=-1)
        y = nn.functional.scaled_dot_product_attention(q, k, v)
        return self.fc(self.bn(y.mean(1)))


def test_chunk_and_attention_shapes_prove_a_consumer_fold() -> None:
    result = _check(prepared(_ChunkAttention(), 20), torch.randn(2, 3, 6, 6), False)
    assert statuses(result) == {"stem.1": "folded", "bn": "folded"}


@pytest.mark.parametrize("with_inputs", [True, False])
def test_bn_read_by_two_consumers_folds_into_both(with_inputs: bool) -> None:
    result = _check(prepared(TwoHeads(), 21), torch.randn(2, 3, 6, 6), with_inputs)
    entry = result.report.batchnorms[0]
    assert entry.status == "folded"
    assert set(entry.into.split(", ")) == {"head", "head_dist"}
    assert entry.pattern == "BN→mean→Linear (consumer)"


def test_index_rules_keep_the_rank_where_torch_does() -> None:
    from bnfold.torch.fx_shape_rules import T, index_tensor

    dims = (4, None, 7)
    assert index_tensor(dims, (slice(None), 0), False).dims == (4, 7)
    assert index_tensor(dims, (slice(None), slice(None, None, 2)), False).dims == (4, None, 7)
    assert index_tensor(dims, (None, slice(None)), False).dims == (1, 4, None, 7)
    bias_index = T((5, 5))
    assert index_tensor((3, 9), (slice(None), bias_index), True).dims == (3, 5, 5)
    assert index_tensor((3, 9), (slice(None), bias_index), False) is None  # a mask: unknown


class _SplitCatFlatten(nn.Module):
    """InceptionNeXt's split → convs → cat → BN, a ``shape[:-1] + (-1,)`` reshape (MaxViT),
    and a BN after an ``nn.Flatten`` of a Conv (SHViT)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 1), nn.BatchNorm2d(8))
        self.hw = nn.Conv2d(4, 4, 3, padding=1, groups=4)
        self.norm = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 8)
        self.conv = nn.Conv2d(8, 6, 4)
        self.flat = nn.Flatten(1)
        self.bn = nn.BatchNorm1d(6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        a, b = torch.split(x, (4, 4), dim=1)
        x = self.norm(torch.cat((a, self.hw(b)), dim=1))  # → permute → Linear: consumer
        y = self.fc(x.permute(0, 2, 3, 1))
        y = y.reshape(y.shape[:-1] + (-1,)).permute(0, 3, 1, 2)  # noqa: RUF005
        return self.bn(self.flat(self.conv(y)))


@pytest.mark.parametrize("with_inputs", [True, False])
def test_split_cat_size_concat_and_flatten_module(with_inputs: bool) -> None:
    result = _check(prepared(_SplitCatFlatten(), 22), torch.randn(2, 3, 4, 4), with_inputs)
    assert set(statuses(result).values()) == {"folded"}
    assert next(e for e in result.report.batchnorms if e.name == "bn").pattern == "Conv→BN"


class _NextVitMixer(nn.Module):
    """NextViT: ``cat`` of two branches, a BN, ``reshape(B, C, -1)`` with B, C read from another
    tensor's shape, then Linear readers (one behind AvgPool1d and its own BN)."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 4, 1)
        self.b = nn.Conv2d(3, 4, 1)
        self.norm1 = nn.BatchNorm2d(8)
        self.q = nn.Linear(8, 8)
        self.sr = nn.AvgPool1d(2)
        self.norm = nn.BatchNorm1d(8)
        self.k = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(torch.cat([self.a(x), self.b(x)], dim=1))
        b, c, _, _ = y.shape
        t = self.norm1(y).reshape(b, c, -1).transpose(-1, -2)
        kv = self.norm(self.sr(t.transpose(1, 2))).transpose(1, 2)
        return self.q(t).sum() + self.k(kv).sum()


@pytest.mark.parametrize("with_inputs", [True, False])
def test_consumer_through_a_reshape_that_keeps_named_dims(with_inputs: bool) -> None:
    result = _check(prepared(_NextVitMixer(), 23), torch.randn(2, 3, 4, 4), with_inputs)
    assert statuses(result) == {"norm1": "folded", "norm": "folded"}
