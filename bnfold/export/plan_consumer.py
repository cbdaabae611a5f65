"""BN → [averaging] → reshapes → linear/addmm/mm: fold the BN into the layer's *input* side.

A per-channel affine map commutes with averaging over non-channel axes (``mean``,
``adaptive_avg_pool``), and reshapes only move the channel axis (checked with
``patterns.same_channel_axis``), so ``L(pool(s·x + t)) = L'(pool(x))`` with
``foldmath.fold_matrix_input_affine`` giving W' and b'. The classifier heads of most CNNs.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import fx

from bnfold import foldmath, patterns
from bnfold.export.plan import COPIES, RESHAPES, LayerFold, _dims, layer_arrays, value_users
from bnfold.export.program import Layer, Program, layer_of
from bnfold.torch.layers import _cast

aten = torch.ops.aten
AVERAGES = {
    aten.mean.dim,
    aten.adaptive_avg_pool2d.default,
    aten._adaptive_avg_pool2d.default,
    aten.adaptive_avg_pool1d.default,
    aten.adaptive_avg_pool3d.default,
    aten._adaptive_avg_pool3d.default,
}
MATRIX_LAYERS = ("Linear", "Addmm", "Mm")


def plan_consumer(
    program: Program, bn_out: fx.Node, scale: np.ndarray, shift: np.ndarray
) -> list[LayerFold] | str:
    """New weights for every layer reading ``bn_out`` (through averaging), or a reason.

    Linear / addmm / mm read it as their input after any averaging and reshapes (each of
    several heads absorbs the BN); an unpadded convolution reads it directly.
    """
    node, pooled = bn_out, None
    while True:
        users = value_users(node)
        if not users or program.is_user_output(node):
            return "the BN output is a program output"
        user = users[0]
        if len(users) == 1 and user.target in AVERAGES and user.args[0] is node:
            if not _keeps_channels(user):
                return "the BN output is averaged over its channels"
            pooled = user
        elif len(users) == 1 and user.target in RESHAPES | COPIES and user.args[0] is node:
            pass
        else:
            break
        node = user
    folds = []
    for user in users:
        fold = _fold_user(program, user, node, pooled or bn_out, scale, shift)
        if isinstance(fold, str):
            return fold
        folds.append(fold)
    return folds


def _fold_user(
    program: Program,
    user: fx.Node,
    node: fx.Node,
    pooled: fx.Node,
    scale: np.ndarray,
    shift: np.ndarray,
) -> LayerFold | str:
    layer = layer_of(user)
    if isinstance(layer, str):
        return "a layer reading the BN output is not a convolution or linear layer"
    if layer.kind == "Conv" and node is pooled and user.args[0] is node:
        return _fold_conv_input(program, layer, scale, shift)
    if layer.kind not in MATRIX_LAYERS or _matrix_input(layer) is not node:
        return "the BN output is not the input of a linear layer or unpadded convolution"
    why = _axis_reason(pooled, node, scale.shape[0])
    if why:
        return why
    return _fold_input(program, layer, scale, shift)


def _fold_conv_input(
    program: Program, layer: Layer, scale: np.ndarray, shift: np.ndarray
) -> LayerFold | str:
    """``conv(s·x + t)`` for a convolution that reads no padding (exact only then)."""
    from bnfold.export.plan_identity import conv_geometry

    arrays = layer_arrays(program, layer)
    if isinstance(arrays, str):
        return arrays
    weight, w, bias = arrays
    if w.shape[1] * layer.groups != scale.shape[0]:
        return f"{layer.node.name} reads {w.shape[1] * layer.groups} channels, BN has {len(scale)}"
    _stride, _dilation, mode, pads = conv_geometry(layer.node, w)
    why = patterns.input_padding_reason(list(w.shape[2:]), mode, pads)
    if why:
        return f"the convolution {why}"
    new_w64, new_b64 = foldmath.fold_conv_input_affine(w, bias, scale, shift, layer.groups)
    return _layer_fold(program, layer, weight, w, new_w64, new_b64, 0)


def _keeps_channels(node: fx.Node) -> bool:
    if node.target != aten.mean.dim:
        return True  # adaptive pooling averages each channel on its own
    val = node.args[0].meta.get("val")  # type: ignore[union-attr]
    dims = node.args[1] if len(node.args) > 1 else None
    if val is None or dims is None:
        return False
    return all(int(d) % val.dim() != 1 for d in dims)


def _matrix_input(layer: Layer) -> fx.Node:
    return layer.node.args[1 if layer.kind == "Addmm" else 0]  # type: ignore[return-value]


def _axis_reason(pooled: fx.Node, layer_input: fx.Node, channels: int) -> str | None:
    """None when the averaged tensor's axis 1 is the layer's input-feature (last) axis."""
    before, after = pooled.meta.get("val"), layer_input.meta.get("val")
    if before is None or after is None:
        return "the shapes between the BN and the linear layer are unknown"
    new = _dims(after)
    if patterns.same_channel_axis(_dims(before), 1, channels, new, len(new) - 1):
        return None
    return "the BN's channels do not map onto the linear layer's input features"


def _fold_input(
    program: Program, layer: Layer, scale: np.ndarray, shift: np.ndarray
) -> LayerFold | str:
    arrays = layer_arrays(program, layer)
    if isinstance(arrays, str):
        return arrays
    weight, w, bias = arrays
    in_axis = 0 if layer.kind in ("Addmm", "Mm") and not layer.transposed_weight else 1
    if w.ndim != 2 or w.shape[in_axis] != scale.shape[0]:
        return f"{layer.node.name} reads {w.shape[in_axis]} features, the BN has {len(scale)}"
    out_features = w.shape[1 - in_axis]
    if bias is not None:
        if bias.size not in (1, out_features) or (bias.ndim == 2 and bias.shape[0] != 1):
            return f"the bias of {layer.node.name} is not one value per feature"
        bias = np.broadcast_to(bias.reshape(-1), (out_features,)) * layer.beta
    new_w64, new_b64 = foldmath.fold_matrix_input_affine(w, bias, scale, shift, in_axis)
    return _layer_fold(program, layer, weight, w, new_w64, new_b64, 1 - in_axis)


def _layer_fold(
    program: Program,
    layer: Layer,
    weight: torch.Tensor,
    w: np.ndarray,
    new_w64: np.ndarray,
    new_b64: np.ndarray,
    out_axis: int,
) -> LayerFold | str:
    """Cast the float64 results back (``foldmath``'s refusals) into a LayerFold."""
    new_w, why = _cast(new_w64, weight.dtype, w, out_axis)
    if why:
        return f"{layer.node.name}: {why}"
    new_b, why = _cast(new_b64, weight.dtype, None)
    if why:
        return f"{layer.node.name}: {why}"
    target = program.target(layer.weight) if layer.weight.op == "placeholder" else None
    device = weight.device
    return LayerFold(layer.node.name, layer.kind, new_w.to(device), new_b.to(device), target)
