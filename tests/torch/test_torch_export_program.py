"""bnfold.fold(ExportedProgram): every BN spelling, layer kind, shared weights, training BN,
dynamic shapes, dead state removal, rollback, and the input program left untouched."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from support.export_models import (  # noqa: E402
    BNThenConv,
    ConcatBN,
    ConvBN,
    DeconvBN,
    GhostIdentity,
    HeadBN,
    LinearBN,
    MobileOneBlock,
    PooledKeysBN,
    SharedConv,
    SumBN,
    TimmZeroSum,
    TokenLinearBN,
    TokenLinearWrongAxis,
    TwoHeads,
    export,
    randomise_bn,
)
from torch import nn  # noqa: E402

import bnfold  # noqa: E402
from bnfold.export import fold_program  # noqa: E402
from bnfold.export.program import BN_OPS  # noqa: E402

DECOMPOSE = pytest.mark.parametrize("decompose", [False, True], ids=["training-ir", "decomposed"])


def bn_calls(ep) -> list[str]:
    return [n.name for n in ep.graph_module.graph.nodes if n.target in BN_OPS]


def assert_close(ep, model: nn.Module, *inputs: torch.Tensor) -> None:
    with torch.no_grad():
        got, want = ep.module()(*inputs), model(*inputs)
    for g, w in zip(
        torch.utils._pytree.tree_leaves(got), torch.utils._pytree.tree_leaves(want), strict=True
    ):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5)


def folded(model: nn.Module, *inputs: torch.Tensor, decompose: bool = False, **options):
    ep = export(randomise_bn(model).eval(), *inputs, decompose=decompose)
    result = fold_program(ep, **options)
    return ep, result


@DECOMPOSE
@pytest.mark.parametrize("dims", [1, 2, 3])
def test_conv_nd_batchnorm_folds(dims: int, decompose: bool) -> None:
    model = ConvBN(dims)
    x = torch.randn(2, 3, *([5] * dims))
    ep, result = folded(model, x, decompose=decompose)
    assert result.report.counts()["batchnorm"]["folded"] == 1
    assert bn_calls(result.program) == []
    assert bn_calls(ep), "the input program keeps its BN"
    assert result.verification
    assert_close(result.program, model, torch.randn(2, 3, *([5] * dims)))


@DECOMPOSE
@pytest.mark.parametrize(("c_in", "c_out", "groups"), [(4, 6, 1), (4, 6, 2), (4, 8, 4)])
def test_conv_transpose_groups_folds(c_in: int, c_out: int, groups: int, decompose: bool) -> None:
    model = DeconvBN(c_in, c_out, groups)
    _ep, result = folded(model, torch.randn(2, c_in, 5, 5), decompose=decompose)
    assert result.report.entries[0].pattern == "ConvTranspose→BN"
    assert bn_calls(result.program) == []
    assert_close(result.program, model, torch.randn(2, c_in, 5, 5))


@DECOMPOSE
@pytest.mark.parametrize("bias", [True, False])
def test_linear_batchnorm1d_folds(bias: bool, decompose: bool) -> None:
    model = LinearBN(bias)
    _ep, result = folded(model, torch.randn(4, 8), decompose=decompose)
    counts = result.report.counts()
    assert counts["batchnorm"]["folded"] == 1
    assert bn_calls(result.program) == []
    assert_close(result.program, model, torch.randn(4, 8))
    if not decompose:
        assert counts["dropout"]["removed"] == 1


def test_biasless_conv_gets_a_new_bias() -> None:
    model = ConvBN(2, bias=False)
    _ep, result = folded(model, torch.randn(1, 3, 6, 6))
    graph = result.program.graph_module.graph
    conv = next(n for n in graph.nodes if n.op == "call_function" and "conv" in n.name)
    assert conv.args[2] is not None
    names = set(result.program.state_dict)
    assert {"conv.weight_bnfolded", "conv.bias_bnfolded"} <= names
    assert "conv.weight" not in names  # nothing else reads it


@DECOMPOSE
def test_shared_weight_keeps_its_original(decompose: bool) -> None:
    model = SharedConv()
    x = torch.randn(2, 3, 6, 6)
    _ep, result = folded(model, x, decompose=decompose)
    sd = result.program.state_dict
    assert "conv.weight" in sd and "conv.weight_bnfolded" in sd
    assert torch.equal(sd["conv.weight"], model.conv.weight)
    assert_close(result.program, model, torch.randn(2, 3, 6, 6))


@DECOMPOSE
def test_concat_split_folds_into_each_input(decompose: bool) -> None:
    model = ConcatBN()
    _ep, result = folded(model, torch.randn(2, 3, 6, 6), decompose=decompose)
    entry = result.report.batchnorms[0]
    assert entry.status == "folded" and entry.pattern == "Concat→BN (split)"
    assert_close(result.program, model, torch.randn(2, 3, 6, 6))


@DECOMPOSE
def test_training_mode_bn_refused(decompose: bool) -> None:
    model = randomise_bn(ConvBN(2)).train()
    ep = export(model, torch.randn(4, 3, 5, 5), decompose=decompose)
    result = fold_program(ep)
    (entry,) = result.report.batchnorms
    assert entry.status == "left" and "training mode" in entry.reason
    assert len(bn_calls(result.program)) == 1


@DECOMPOSE
def test_training_mode_bn_folds_with_assume_eval(decompose: bool) -> None:
    model = randomise_bn(ConvBN(2)).train()
    ep = export(model, torch.randn(4, 3, 5, 5), decompose=decompose)
    result = fold_program(ep, assume_eval=True)
    assert result.report.counts()["batchnorm"]["folded"] == 1
    assert result.verification
    sig = result.program.graph_signature
    assert not sig.buffers_to_mutate, "running-stat and num_batches_tracked updates are gone"
    assert not any("bn." in k for k in result.program.state_dict)
    assert_close(result.program, model.eval(), torch.randn(4, 3, 5, 5))


def test_dynamic_batch_dim_is_kept() -> None:
    model = randomise_bn(ConvBN(2)).eval()
    batch = torch.export.Dim("batch", min=1, max=32)
    ep = export(model, torch.randn(2, 3, 5, 5), dynamic={"x": {0: batch}})
    result = fold_program(ep)
    assert result.verification and len(result.verification.seeds) == 4  # one at another size
    assert len(result.program.range_constraints) == len(ep.range_constraints)
    for n in (1, 7, 32):
        assert_close(result.program, model, torch.randn(n, 3, 5, 5))


def test_dead_bn_state_and_signature() -> None:
    model = ConvBN(2)
    ep, result = folded(model, torch.randn(1, 3, 5, 5), decompose=True)
    program = result.program
    assert not any(k.startswith("bn.") for k in program.state_dict)
    placeholders = [n.name for n in program.graph_module.graph.nodes if n.op == "placeholder"]
    assert placeholders == [s.arg.name for s in program.graph_signature.input_specs]
    program.validate()
    assert set(ep.state_dict) >= {"bn.running_mean", "bn.num_batches_tracked"}  # untouched


def test_fold_dispatches_exported_programs() -> None:
    model = randomise_bn(ConvBN(2)).eval()
    ep = export(model, torch.randn(1, 3, 5, 5))
    result = bnfold.fold(ep)
    assert result.model is result.program
    assert result.report.counts()["batchnorm"]["folded"] == 1


def test_wrong_fold_is_rolled_back(monkeypatch: pytest.MonkeyPatch) -> None:
    """A plan with a channel off by 1e-3 is caught by verification and rolled back."""
    from bnfold.export import plan as plan_mod

    real = plan_mod.fold_layer

    def broken(*args, **kwargs):
        fold = real(*args, **kwargs)
        fold.weight = fold.weight.clone()
        fold.weight[0] *= 1.001
        return fold

    monkeypatch.setattr(plan_mod, "fold_layer", broken)
    model = ConvBN(2)
    _ep, result = folded(model, torch.randn(2, 3, 5, 5))
    (entry,) = result.report.batchnorms
    assert entry.status == "left" and entry.reason.startswith("rolled back")
    assert bn_calls(result.program)
    assert result.verification


def test_save_and_load_round_trip(tmp_path) -> None:
    model = ConvBN(2)
    _ep, result = folded(model, torch.randn(2, 3, 5, 5))
    path = result.save(tmp_path / "m.pt2")
    loaded = torch.export.load(path)
    assert bn_calls(loaded) == []
    assert_close(loaded, model, torch.randn(2, 3, 5, 5))


def test_regression_input_named_input_keeps_its_name() -> None:
    """nn.Sequential's placeholder is ``input``; a deep copy renamed it and broke the signature."""
    model = randomise_bn(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))).eval()
    ep = export(model, torch.randn(1, 3, 5, 5))
    result = fold_program(ep)
    assert result.report.counts()["batchnorm"]["folded"] == 1
    assert result.program.graph_signature.user_inputs == ep.graph_signature.user_inputs


def test_regression_bn_output_that_is_a_program_output() -> None:
    """The output node's arguments were rebuilt from stale nodes once BN was replaced."""
    model = ConvBN(2)
    model.forward = lambda x: model.bn(model.conv(x))  # type: ignore[method-assign]
    _ep, result = folded(model, torch.randn(1, 3, 5, 5), decompose=True)
    assert result.report.counts()["batchnorm"]["folded"] == 1
    out = result.program.graph_module.graph.output_node()
    assert list(result.program.graph_signature.user_outputs) == [out.args[0][0].name]


@DECOMPOSE
def test_regression_verification_leaves_the_input_program_alone(decompose: bool) -> None:
    """Running a training program for verification updated the caller's running statistics."""
    model = randomise_bn(ConvBN(2)).train()
    ep = export(model, torch.randn(4, 3, 5, 5), decompose=decompose)
    before = {k: v.clone() for k, v in ep.state_dict.items()}
    fold_program(ep, assume_eval=True)
    for k, v in ep.state_dict.items():
        assert torch.equal(v, before[k]), k


@DECOMPOSE
def test_linear_on_tokens_folds_through_flatten(decompose: bool) -> None:
    model = TokenLinearBN()
    _ep, result = folded(model, torch.randn(2, 5, 8), decompose=decompose)
    assert result.report.counts()["batchnorm"]["folded"] == 1
    assert_close(result.program, model, torch.randn(2, 5, 8))


def test_regression_decomposed_biasless_token_linear_became_bmm_and_kept_its_bn() -> None:
    """run_decompositions spells a bias-less Linear on (N, L, C) as bmm(x, view(expand(Wᵀ))):
    LeViT's attention kept 5 of 52 BN."""
    model = TokenLinearBN(bias=False, transposed=True)
    ep, result = folded(model, torch.randn(2, 8, 5), decompose=True)
    assert any(n.target == torch.ops.aten.bmm.default for n in ep.graph_module.graph.nodes)
    assert result.report.counts()["batchnorm"]["folded"] == 1
    assert result.verification
    assert_close(result.program, model, torch.randn(2, 8, 5))


@DECOMPOSE
def test_regression_bn_read_through_transposes_by_several_linears_was_left(
    decompose: bool,
) -> None:
    """NextViT: BN → transpose → q, and BN → AvgPool1d → BN → transpose → k, v (7 of 61 BN
    were left: the consumer walk followed one chain of single readers, without transposes)."""
    model = PooledKeysBN()
    x = torch.randn(2, 8, 6)
    _ep, result = folded(model, x, decompose=decompose)
    assert result.report.counts()["batchnorm"]["folded"] == 2
    assert bn_calls(result.program) == []
    assert result.verification
    assert_close(result.program, model, torch.randn(2, 8, 6))


class _BNThenLinearOnLength(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.bn = nn.BatchNorm1d(4)
        self.fc = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.bn(x))  # (N, C, L): the linear mixes L, not the BN's channels


@DECOMPOSE
def test_bn_read_by_a_linear_over_another_axis_is_left(decompose: bool) -> None:
    model = _BNThenLinearOnLength()
    _ep, result = folded(model, torch.randn(2, 4, 6), decompose=decompose)
    (entry,) = result.report.batchnorms
    assert entry.status == "left"


@DECOMPOSE
def test_linear_features_on_another_axis_are_refused(decompose: bool) -> None:
    model = TokenLinearWrongAxis()
    _ep, result = folded(model, torch.randn(2, 4, 6), decompose=decompose)
    (entry,) = result.report.batchnorms
    assert entry.status == "left"
    assert "axis" in entry.reason or "not a convolution" in entry.reason


@DECOMPOSE
@pytest.mark.parametrize("keepdim", [True, False], ids=["adaptive-pool", "mean"])
def test_bn_before_pool_and_linear_folds_into_the_linear(keepdim: bool, decompose: bool) -> None:
    model = HeadBN(keepdim)
    _ep, result = folded(model, torch.randn(2, 3, 6, 6), decompose=decompose)
    entries = {e.name: e for e in result.report.batchnorms}
    patterns = {str(e.pattern) for e in entries.values() if e.status == "folded"}
    kind = "Addmm" if decompose else "Linear"
    assert patterns == {f"BN→{kind} (consumer)", f"{kind}→BN"}  # two rounds, one layer
    assert_close(result.program, model, torch.randn(2, 3, 6, 6))


@DECOMPOSE
def test_identity_branch_bn_folds_into_the_conv(decompose: bool) -> None:
    model = GhostIdentity()
    _ep, result = folded(model, torch.randn(2, 3, 6, 6), decompose=decompose)
    assert result.report.counts()["batchnorm"]["folded"] == 3
    patterns = {e.pattern for e in result.report.batchnorms}
    assert "Conv+BN(identity)→Conv (re-param)" in patterns
    assert bn_calls(result.program) == []
    assert_close(result.program, model, torch.randn(2, 3, 6, 6))


def test_identity_branch_refused_when_strided() -> None:
    model = GhostIdentity(stride=2)
    model.forward = lambda x: model.cheap_bn(model.cheap(x)) + model.fusion_bn(x)[..., ::2, ::2]  # type: ignore[method-assign]
    model.cheap = nn.Conv2d(3, 3, 3, stride=2, padding=1, groups=3, bias=False)
    model.cheap_bn, model.fusion_bn = nn.BatchNorm2d(3), nn.BatchNorm2d(3)
    _ep, result = folded(model, torch.randn(2, 3, 6, 6))
    left = [e for e in result.report.batchnorms if e.status == "left"]
    assert [e.name for e in left] == ["batch_norm_1"]
    assert_close(result.program, model, torch.randn(2, 3, 6, 6))


class PooledBNHead(nn.Module):
    """EfficientViT / iFormer heads: pool → flatten → BatchNorm1d → Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3)
        self.bn = nn.BatchNorm1d(6)
        self.drop = nn.Dropout(0.2)  # a clone once decomposed
        self.fc = nn.Linear(6, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.conv(x)).mean((2, 3))
        return self.fc(self.drop(self.bn(y)))


@DECOMPOSE
def test_regression_bn_after_pool_folds_through_a_decomposed_dropout(decompose: bool) -> None:
    model = PooledBNHead()
    _ep, result = folded(model, torch.randn(2, 3, 6, 6), decompose=decompose)
    (entry,) = result.report.batchnorms
    assert entry.status == "folded" and "(consumer)" in str(entry.pattern)
    assert_close(result.program, model, torch.randn(2, 3, 6, 6))


def test_keep_matches_module_paths_and_node_names() -> None:
    model = HeadBN(keepdim=False)
    _ep, result = folded(model, torch.randn(2, 3, 6, 6), keep=["bn1"])
    status = {e.name: e.status for e in result.report.batchnorms}
    assert sorted(status.values()) == ["folded", "kept"]
    _ep, result = folded(model, torch.randn(2, 3, 6, 6), keep="batch_norm*")
    assert {e.status for e in result.report.batchnorms} == {"kept"}
    assert_close(result.program, model, torch.randn(2, 3, 6, 6))


class ConvTwoUsers(nn.Module):
    """The conv's output feeds the BN and a second branch: folding would change that branch."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return self.bn(y) + torch.sigmoid(y)


@DECOMPOSE
def test_conv_output_read_elsewhere_keeps_its_bn(decompose: bool) -> None:
    model = ConvTwoUsers()
    _ep, result = folded(model, torch.randn(2, 3, 5, 5), decompose=decompose)
    (entry,) = result.report.batchnorms
    assert entry.status == "left" and "other users" in entry.reason
    assert_close(result.program, model, torch.randn(2, 3, 5, 5))


@DECOMPOSE
def test_bn_before_an_unpadded_conv_folds_into_its_input(decompose: bool) -> None:
    model = BNThenConv()
    _ep, result = folded(model, torch.randn(2, 3, 5, 5), decompose=decompose)
    (entry,) = result.report.batchnorms
    assert entry.status == "folded" and entry.pattern == "BN→Conv (consumer)"
    assert_close(result.program, model, torch.randn(2, 3, 5, 5))


def test_bn_before_a_padded_conv_is_left() -> None:
    model = BNThenConv(padding=1)
    _ep, result = folded(model, torch.randn(2, 3, 5, 5))
    (entry,) = result.report.batchnorms
    assert entry.status == "left"
    assert_close(result.program, model, torch.randn(2, 3, 5, 5))


@DECOMPOSE
def test_bn_before_two_linear_heads_folds_into_both(decompose: bool) -> None:
    model = TwoHeads()
    _ep, result = folded(model, torch.randn(2, 3, 6, 6), decompose=decompose)
    (entry,) = result.report.batchnorms
    assert entry.status == "folded" and "(consumer)" in str(entry.pattern)
    assert len(entry.into.split(", ")) == 2
    assert_close(result.program, model, torch.randn(2, 3, 6, 6))


@DECOMPOSE
def test_identity_bn_folds_into_one_of_several_parallel_convs(decompose: bool) -> None:
    model = MobileOneBlock()
    _ep, result = folded(model, torch.randn(2, 4, 5, 5), decompose=decompose)
    assert result.report.counts()["batchnorm"]["folded"] == 3
    assert bn_calls(result.program) == []
    assert_close(result.program, model, torch.randn(2, 4, 5, 5))


@DECOMPOSE
def test_regression_identity_bn_after_a_zero_start(decompose: bool) -> None:
    """timm sums branches from ``out = 0``: the identity BN's sum is ``(bn(x) + 0) + conv``."""
    model = TimmZeroSum()
    _ep, result = folded(model, torch.randn(2, 4, 5, 5), decompose=decompose)
    assert result.report.counts()["batchnorm"]["folded"] == 2
    assert bn_calls(result.program) == []
    assert_close(result.program, model, torch.randn(2, 4, 5, 5))


@DECOMPOSE
def test_bn_after_a_sum_of_convs_folds_into_both(decompose: bool) -> None:
    model = SumBN()
    _ep, result = folded(model, torch.randn(2, 3, 5, 5), decompose=decompose)
    (entry,) = result.report.batchnorms
    assert entry.status == "folded" and entry.pattern == "Add(Conv terms)→BN"
    assert_close(result.program, model, torch.randn(2, 3, 5, 5))


def test_regression_unbounded_dynamic_dim() -> None:
    """``Dim("batch")`` without a maximum has an infinite upper bound that broke input sizing."""
    model = randomise_bn(ConvBN(2)).eval()
    ep = export(model, torch.randn(2, 3, 5, 5), dynamic={"x": {0: torch.export.Dim("batch")}})
    result = fold_program(ep)
    assert result.verification and len(result.verification.seeds) == 4
    assert_close(result.program, model, torch.randn(6, 3, 5, 5))
