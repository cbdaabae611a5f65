"""Explaining every BN left after folding: the exact blocker on each side.

A BN stays only when neither its producer side (the layer, layout ops or Concat feeding
it) nor its consumer side (the layer it feeds) can absorb it. The reason names both, e.g.
``producer: Relu 'r1' is not a linear layer; consumer: Conv 'c2' has padding [1, 1, 1, 1]…``.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx_ir as ir

from bnfold.onnx.batchnorm import read_batchnorm
from bnfold.onnx.constants import is_onnx_op
from bnfold.onnx.context import FoldContext, display_name
from bnfold.onnx.plan.consumers import plan_input_affine
from bnfold.onnx.plan.producers import plan_output_affine

logger = logging.getLogger(__name__)


def explain_left(ctx: FoldContext) -> None:
    """Record a two-sided reason for every BN still in the model."""
    for node in ctx.all_nodes():
        if node.graph is None or not is_onnx_op(node, "BatchNormalization") or ctx.kept(node):
            continue
        bn = read_batchnorm(ctx, node)
        if isinstance(bn, str):
            ctx.skip(node, bn)
            continue
        ctx.skip(node, two_sided_reason(ctx, node, bn.scale, bn.shift))


def two_sided_reason(ctx: FoldContext, node: ir.Node, scale: np.ndarray, shift: np.ndarray) -> str:
    """``producer: …; consumer: …`` for a readable BN that no pass folded."""
    x = node.inputs[0]
    assert x is not None
    producer = plan_output_affine(ctx, x, 1, scale, shift)
    consumer = plan_input_affine(ctx, node.outputs[0], 1, scale, shift)
    if not isinstance(producer, str) or not isinstance(consumer, str):
        logger.warning("BN %s looks foldable but was left; please report", display_name(node))
        producer = producer if isinstance(producer, str) else "foldable (not applied)"
        consumer = consumer if isinstance(consumer, str) else "foldable (not applied)"
    return f"producer: {producer}; consumer: {consumer}"
