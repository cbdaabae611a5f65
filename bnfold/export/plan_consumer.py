"""BN → [averaging, layout ops] → linear/addmm/mm/conv: fold the BN into the layers' *input* side.

A per-channel affine map commutes with averaging over non-channel axes (``mean``, adaptive
and unpadded average pooling), with max pooling when every ``s > 0``, and with layout ops,
which only move (and may repeat, as a flatten of C×H×W does) the channel axis. The walk
follows every reader of the BN output through such ops to the layers that read it, tracking
the channel axis and the channel index of each position along it (``patterns.map_flat``),
as the module path's ``bnfold.torch.fx_consumer`` does; each layer absorbs the map
(``foldmath.fold_matrix_input_affine`` / ``fold_conv_input_affine``) in its own copy.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
from torch import fx

from bnfold import foldmath, patterns
from bnfold.export.plan import (
    COPIES,
    MATRIX_KINDS,
    RESHAPES,
    LayerFold,
    _dims,
    cast_layer_fold,
    layer_arrays,
    value_users,
)
from bnfold.export.program import Layer, Program, layer_of
from bnfold.torch.fx_graph import permutation

aten = torch.ops.aten
ADAPTIVE_AVERAGES = {
    aten.adaptive_avg_pool1d.default: 1,
    aten.adaptive_avg_pool2d.default: 2,
    aten._adaptive_avg_pool2d.default: 2,
    aten.adaptive_avg_pool3d.default: 3,
    aten._adaptive_avg_pool3d.default: 3,
}
AVG_POOLS = {aten.avg_pool1d.default: 1, aten.avg_pool2d.default: 2, aten.avg_pool3d.default: 3}
MAX_POOLS = {aten.max_pool1d.default: 1, aten.max_pool2d.default: 2, aten.max_pool3d.default: 3}
PERMUTES = {aten.transpose.int, aten.permute.default}
MATRIX_LAYERS = ("Linear", "Addmm", "Mm", "Bmm")
MAX_DEPTH = 12


@dataclasses.dataclass
class _Reader:
    """A layer reading the BN's values, with the channel of each position on ``axis``."""

    layer: Layer
    input: fx.Node
    axis: int
    idx: np.ndarray


def plan_consumer(
    program: Program, bn_out: fx.Node, scale: np.ndarray, shift: np.ndarray
) -> list[LayerFold] | str:
    """New weights for every layer the BN output reaches (see the module doc), or a reason."""
    readers = _walk(program, bn_out, 1, np.arange(len(scale)), bool(np.all(scale > 0)), 0)
    if isinstance(readers, str):
        return readers
    folds = []
    for r in readers:
        fold = _fold_reader(program, r, scale[r.idx], shift[r.idx])
        if isinstance(fold, str):
            return fold
        folds.append(fold)
    return folds


def _walk(
    program: Program, node: fx.Node, axis: int, idx: np.ndarray, positive: bool, depth: int
) -> list[_Reader] | str:
    users = value_users(node)
    if program.is_user_output(node):
        return "the BN output is a program output"
    if not users or depth > MAX_DEPTH:
        return "the BN output reaches no layer"
    readers: list[_Reader] = []
    for user in users:
        layer = layer_of(user)
        if not isinstance(layer, str):
            readers.append(_Reader(layer, node, axis, idx))
            continue
        moved = _through(user, node, axis, idx, positive)
        if isinstance(moved, str):
            return moved
        found = _walk(program, user, *moved, positive, depth + 1)
        if isinstance(found, str):
            return found
        readers.extend(found)
    return readers


def _through(
    node: fx.Node, src: fx.Node, axis: int, idx: np.ndarray, positive: bool
) -> tuple[int, np.ndarray] | str:
    """(axis, channel per position) on ``node``'s output, or why the BN does not commute."""
    name = node.name
    if not node.args or node.args[0] is not src:
        return f"the BN output reaches {name}, which is not a layer or a layout op"
    before, after = src.meta.get("val"), node.meta.get("val")
    if not isinstance(before, torch.Tensor) or not isinstance(after, torch.Tensor):
        return "the shapes after the BN are unknown"
    rank, target = before.dim(), node.target
    if target in COPIES or (target == aten.expand.default and after.shape == before.shape):
        return axis, idx
    if target in PERMUTES:
        perm = permutation(node, rank)
        return (perm.index(axis), idx) if perm else f"{name} is not a known permutation"
    if target in RESHAPES:
        found = patterns.map_flat(_dims(before), axis, len(idx), _dims(after))
        if len(found) != 1:
            return f"the BN's channel axis does not survive {name}"
        new_axis, positions = found[0]
        return new_axis, idx[positions]
    spatial = ADAPTIVE_AVERAGES.get(target) or AVG_POOLS.get(target) or MAX_POOLS.get(target)
    if spatial:
        if axis != rank - spatial - 1:
            return f"{name} pools over the BN's channel axis"
        if target in AVG_POOLS and not _exact_average(node):
            return f"{name} counts padding in its averages"
        if target in MAX_POOLS and not positive:
            return f"{name} is a max pool and the BN has a negative scale"
        return axis, idx
    if target == aten.mean.dim:
        return _mean(node, rank, axis, idx)
    return f"the BN output reaches {name}, which is not a layer or a layout op"


def _exact_average(node: fx.Node) -> bool:
    """avg_pool's divisor is the count of real elements: no padding, or padding not counted."""
    args = list(node.args) + [None] * 7
    padding, ceil_mode, include_pad, divisor = args[3], args[4], args[5], args[6]
    padding = padding if padding is not None else node.kwargs.get("padding", 0)
    ceil_mode = ceil_mode if ceil_mode is not None else node.kwargs.get("ceil_mode", False)
    include_pad = (
        include_pad if include_pad is not None else node.kwargs.get("count_include_pad", True)
    )
    divisor = divisor if divisor is not None else node.kwargs.get("divisor_override")
    pads = padding if isinstance(padding, (list, tuple)) else [padding]
    if divisor is not None:
        return False
    return not include_pad or (not any(pads) and not ceil_mode)


def _mean(node: fx.Node, rank: int, axis: int, idx: np.ndarray) -> tuple[int, np.ndarray] | str:
    dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
    keep = node.args[2] if len(node.args) > 2 else node.kwargs.get("keepdim", False)
    if dims is None:
        return f"{node.name} averages over every axis"
    reduced = {int(d) % rank for d in dims}  # type: ignore[union-attr]
    moved = patterns.axis_after_reduce(axis, reduced, bool(keep))
    if moved is None:
        return "the BN output is averaged over its channels"
    return moved, idx


def _fold_reader(
    program: Program, r: _Reader, scale: np.ndarray, shift: np.ndarray
) -> LayerFold | str:
    layer, rank = r.layer, r.input.meta["val"].dim()
    if layer.kind == "Conv":
        if layer.node.args[0] is not r.input or r.axis != 1:
            return f"{layer.node.name} does not read the BN's channels as its input channels"
        return _fold_conv_input(program, layer, scale, shift, rank)
    if layer.kind not in MATRIX_LAYERS or _matrix_input(layer) is not r.input:
        return "the BN output is not the input of a linear layer or unpadded convolution"
    if r.axis != rank - 1:
        return "the BN's channels do not map onto the linear layer's input features"
    return _fold_input(program, layer, scale, shift)


def _fold_conv_input(
    program: Program, layer: Layer, scale: np.ndarray, shift: np.ndarray, rank: int
) -> LayerFold | str:
    """``conv(s·x + t)`` for a convolution that reads no padding (exact only then)."""
    from bnfold.export.plan_identity import conv_geometry

    arrays = layer_arrays(program, layer)
    if isinstance(arrays, str):
        return arrays
    weight, w, bias = arrays
    if w.ndim != rank:
        return f"{layer.node.name} reads an unbatched input"
    if w.shape[1] * layer.groups != scale.shape[0]:
        return f"{layer.node.name} reads {w.shape[1] * layer.groups} channels, BN has {len(scale)}"
    _stride, _dilation, mode, pads = conv_geometry(layer.node, w)
    why = patterns.input_padding_reason(list(w.shape[2:]), mode, pads)
    if why:
        return f"the convolution {why}"
    new_w64, new_b64 = foldmath.fold_conv_input_affine(w, bias, scale, shift, layer.groups)
    return cast_layer_fold(program, layer, weight, w, new_w64, new_b64, 0)


def _matrix_input(layer: Layer) -> fx.Node:
    return layer.node.args[1 if layer.kind == "Addmm" else 0]  # type: ignore[return-value]


def _fold_input(
    program: Program, layer: Layer, scale: np.ndarray, shift: np.ndarray
) -> LayerFold | str:
    arrays = layer_arrays(program, layer)
    if isinstance(arrays, str):
        return arrays
    weight, w, bias = arrays
    in_axis = 0 if layer.kind in MATRIX_KINDS and not layer.transposed_weight else 1
    if w.ndim != 2 or w.shape[in_axis] != scale.shape[0]:
        return f"{layer.node.name} reads {w.shape[in_axis]} features, the BN has {len(scale)}"
    out_features = w.shape[1 - in_axis]
    if bias is not None:
        if bias.size not in (1, out_features) or (bias.ndim == 2 and bias.shape[0] != 1):
            return f"the bias of {layer.node.name} is not one value per feature"
        bias = np.broadcast_to(bias.reshape(-1), (out_features,)) * layer.beta
    new_w64, new_b64 = foldmath.fold_matrix_input_affine(w, bias, scale, shift, in_axis)
    return cast_layer_fold(program, layer, weight, w, new_w64, new_b64, 1 - in_axis)
