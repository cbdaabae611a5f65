"""The pass order and the fixpoint loop of the ONNX folder."""

from __future__ import annotations

import logging

import onnx_ir as ir
from onnx_ir.passes.common import (
    RemoveUnusedNodesPass,
    ShapeInferencePass,
    TopologicalSortPass,
)

from bnfold.onnx.context import FoldContext, FoldOptions
from bnfold.onnx.explain import explain_left
from bnfold.onnx.passes.absorb_identity_term import AbsorbIdentityTermPass
from bnfold.onnx.passes.collapse_layout import CollapseLayoutChainsPass
from bnfold.onnx.passes.fold_batchnorm import FoldBatchNormIntoProducerPass
from bnfold.onnx.passes.fold_channel_affine import FoldChannelAffinePass
from bnfold.onnx.passes.fold_constants import FoldConstantsPass
from bnfold.onnx.passes.fold_consumer import FoldBatchNormIntoConsumerPass
from bnfold.onnx.passes.fold_identity_branch import FoldBatchNormIdentityBranchPass
from bnfold.onnx.passes.identity import KeepOutputNamesIdentityEliminationPass
from bnfold.onnx.passes.rewrite_standalone import RewriteStandaloneBatchNormPass
from bnfold.onnx.passes.split_to_sequence import SequenceSplitToSplitPass
from bnfold.onnx.passes.strip_dropout import StripDropoutPass
from bnfold.onnx.passes.switch_to_inference import SwitchToInferencePass
from bnfold.report import FoldReport

logger = logging.getLogger(__name__)

SHAPES_INFERRED = "bnfold_shapes_inferred"


def normalise_passes(ctx: FoldContext) -> list[ir.passes.PassBase]:
    """Passes that make exporter output matchable (identities, computed constants)."""
    return [
        KeepOutputNamesIdentityEliminationPass(),
        FoldConstantsPass(ctx),
        SequenceSplitToSplitPass(ctx),
        CollapseLayoutChainsPass(ctx),
    ]


def fold_passes(ctx: FoldContext) -> list[ir.passes.PassBase]:
    """Passes that remove Dropout and fold BN / affine maps, in order."""
    return [
        StripDropoutPass(ctx),
        FoldChannelAffinePass(ctx),
        AbsorbIdentityTermPass(ctx),  # Conv(x) + x → Conv', so the sum's BN can fold
        FoldBatchNormIntoProducerPass(ctx),  # directly, through layout ops, Concat or Add
        FoldBatchNormIntoConsumerPass(ctx),
        FoldBatchNormIdentityBranchPass(ctx),
    ]


def final_passes(ctx: FoldContext) -> list[ir.passes.PassBase]:
    """After the fixpoint: leftover training BN → inference (assume_eval), opt-in rewrite."""
    return [SwitchToInferencePass(ctx), RewriteStandaloneBatchNormPass(ctx)]


def run_pipeline(model: ir.Model, options: FoldOptions | None = None) -> FoldReport:
    """Fold ``model`` in place until nothing changes; return the report."""
    _infer_shapes(model)
    ctx = FoldContext(model, options)
    normalise = normalise_passes(ctx)
    _run(ir.passes.Sequential(*normalise), model)
    # The fixpoint: fold, then normalise what the folds exposed, until a round changes nothing.
    folds = fold_passes(ctx)
    steps = ctx.options.max_iterations
    rounds = _CountRounds()
    manager = ir.passes.PassManager([*folds, *normalise, rounds], steps=steps, early_stop=True)
    _run(manager, model)
    # Early stop means a round changed nothing. Only after all rounds ran can the model still
    # be changing; one more fold round tells (and costs nothing on the common path).
    if rounds.count == steps and _run(ir.passes.Sequential(*folds), model):
        ctx.report.warn(f"stopped after {steps} fold iterations")
    explain_left(ctx)
    _run(ir.passes.Sequential(*final_passes(ctx)), model)
    RemoveUnusedNodesPass()(model)
    TopologicalSortPass()(model)
    if ctx.options.assume_eval:
        ctx.report.warn(
            "--assume-eval: training-mode BN/Dropout were treated as inference; results now "
            "follow running statistics, not batch statistics"
        )
    return ctx.build_report()


class _CountRounds(ir.passes.InPlacePass):
    """Counts the fixpoint's rounds; never changes the model."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        self.count += 1
        return ir.passes.PassResult(model, modified=False)


def _run(passes: ir.passes.PassBase, model: ir.Model) -> bool:
    """Run ``passes``; an error inside comes out as itself, not wrapped in PassError."""
    try:
        return passes(model).modified
    except ir.passes.PassError as err:
        cause: BaseException = err
        while isinstance(cause, ir.passes.PassError) and cause.__cause__ is not None:
            cause = cause.__cause__
        raise cause from None


def _infer_shapes(model: ir.Model) -> None:
    """Best-effort shape inference (ranks let MatMul folds prove their feature axis)."""
    if model.graph.meta.get(SHAPES_INFERRED):
        return  # done on the protobuf at load time, without copying weights
    try:
        ShapeInferencePass(check_type=False, strict_mode=False, data_prop=True)(model)
    except Exception as err:  # never fatal: folds that need shapes then skip with a reason
        logger.debug("shape inference failed: %s", err)
