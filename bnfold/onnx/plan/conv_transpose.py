"""ConvTranspose adapter: ``s·ConvTranspose(x) + t`` as one ConvTranspose (output side only).

Weights ``(C_in, C_out/g, k…)``: output channel o = gi·(C_out/g) + j lives in the rows of
group gi at column j, so s is applied on the grouped view (``foldmath``).
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from bnfold import foldmath
from bnfold.onnx.context import FoldContext
from bnfold.onnx.plan.conv import set_output_fold
from bnfold.onnx.plan.plan import Plan
from bnfold.onnx.plan.weights import cast_like, conv_bias, layer_constant

fold_input = None  # no input-side fold: a transposed convolution spreads each input pixel


def fold_output(
    ctx: FoldContext, layer: ir.Node, s: np.ndarray, t: np.ndarray, bias_add: ir.Node | None
) -> Plan | str:
    """Plan ``s·ConvTranspose(x) + t`` as one ConvTranspose."""
    del bias_add  # a ConvTranspose carries its own bias
    w = layer_constant(ctx, layer, 1, "weight")
    if isinstance(w, str):
        return w
    if w.ndim < 3:
        return f"ConvTranspose weight has rank {w.ndim}, expected ≥ 3"
    group = layer.attributes.get_int("group", 1)
    channels = w.shape[1] * group
    if s.shape[0] != channels:
        return f"{s.shape[0]} channels do not match ConvTranspose's {channels} outputs"
    b = conv_bias(ctx, layer, channels)
    if isinstance(b, str):
        return b
    grouped = foldmath.grouped_conv_transpose(
        foldmath.scale_conv_transpose_output(w, s, group), group
    )
    like = foldmath.grouped_conv_transpose(w, group)
    new_w = cast_like(grouped, like, "weight", foldmath.CONV_TRANSPOSE_AXES)
    if isinstance(new_w, str):
        return new_w
    return set_output_fold(ctx, layer, new_w.reshape(w.shape), b, s, t, w.dtype)
