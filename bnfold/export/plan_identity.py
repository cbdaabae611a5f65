"""``conv(x) + BN(x)``: the BN is an identity branch the conv absorbs (RepGhost, RepVGG).

``conv(x) + s·x + t = conv'(x)`` with ``W' = W + s·δ(tap)`` and ``b' = b + t``
(``patterns.fold_identity_branch``), exact when the conv keeps the channels and the spatial
size at stride 1 so that one kernel tap reads the output's own pixel
(``patterns.identity_tap``). The ``add`` is then replaced by the conv.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import fx

from bnfold import patterns
from bnfold.export.plan import LayerFold, cast_layer_fold, layer_arrays, value_users
from bnfold.export.program import Program, layer_of

aten = torch.ops.aten
ADDS = {aten.add.Tensor, aten.add_.Tensor}


def plan_identity(
    program: Program, bn_out: fx.Node, x: fx.Node, scale: np.ndarray, shift: np.ndarray
) -> tuple[LayerFold, str, str] | str:
    """(new conv weights, the add to replace, what replaces it), or why not."""
    term = bn_out
    while True:  # timm's ``out = 0; out += identity(x)`` adds a zero first
        users = value_users(term)
        if len(users) != 1 or users[0].target not in ADDS or program.is_user_output(term):
            return "the BN output is not one term of a sum"
        if _zero_add(users[0]) is None:
            break
        term = users[0]
    add = users[0]
    terms = [a for a in add.args[:2] if isinstance(a, fx.Node)]
    if len(terms) != 2 or add.kwargs.get("alpha", 1) != 1 or terms[0] is terms[1]:
        return "the sum is not of two tensors"
    rest = terms[1] if terms[0] is term else terms[0]
    other = _conv_term(program, rest, x)
    if isinstance(other, str):
        return other
    layer = layer_of(other)
    assert not isinstance(layer, str)
    val, out = bn_out.meta.get("val"), other.meta.get("val")
    if val is None or out is None or tuple(val.shape) != tuple(out.shape):
        return "the convolution changes the shape"
    arrays = layer_arrays(program, layer)
    if isinstance(arrays, str):
        return arrays
    weight, w, bias = arrays
    channels = scale.shape[0]
    why = patterns.identity_branch_reason(w.shape[1] * layer.groups, w.shape[0], channels)
    if why:
        return why
    tap = _tap(other, w)
    if tap is None:
        return f"{other.name} is strided or does not keep the spatial size"
    new_w64, new_b64 = patterns.fold_identity_branch(w, bias, scale, shift, layer.groups, tap)
    fold = cast_layer_fold(program, layer, weight, w, new_w64, new_b64, 0)
    if isinstance(fold, str):
        return fold
    return fold, add.name, rest.name


def _zero_add(node: fx.Node) -> fx.Node | None:
    """``t + 0`` or ``0 + t`` (a number zero): the tensor t, else None."""
    if node.target not in ADDS or len(node.args) < 2:
        return None
    a, b = node.args[:2]
    if isinstance(a, fx.Node) and isinstance(b, (int, float)) and b == 0:
        return a
    if isinstance(b, fx.Node) and isinstance(a, (int, float)) and a == 0:
        return b
    return None


def _conv_term(program: Program, rest: fx.Node, x: fx.Node, depth: int = 8) -> fx.Node | str:
    """A convolution of ``x`` among the terms of ``rest`` (a conv, or a sum of terms
    each read only there: MobileOne's parallel branches), or why there is none."""
    if len(value_users(rest)) != 1 or program.is_user_output(rest):
        return f"{rest.name} has other users"
    inner = _zero_add(rest)
    if inner is not None and depth:
        return _conv_term(program, inner, x, depth - 1)
    layer = layer_of(rest)
    if not isinstance(layer, str):
        if layer.kind == "Conv" and rest.args[0] is x:
            return rest
        return "the other term is not a convolution of the BN's input"
    if rest.target not in ADDS or rest.kwargs.get("alpha", 1) != 1 or depth == 0:
        return "the other term is not a convolution of the BN's input"
    why = "the other term is not a convolution of the BN's input"
    for term in rest.args[:2]:
        if isinstance(term, fx.Node):
            found = _conv_term(program, term, x, depth - 1)
            if not isinstance(found, str):
                return found
            why = found
    return why


def _tap(conv: fx.Node, w: np.ndarray) -> tuple[int, ...] | None:
    """The identity tap of an ``aten.conv*d`` / ``aten.convolution`` call, if any."""
    stride, dilation, mode, pads = conv_geometry(conv, w)
    kernel = list(w.shape[2:])
    begins, ends = patterns.pad_extents(kernel, dilation, mode, pads)
    return patterns.identity_tap(kernel, stride, dilation, begins, ends)


def conv_geometry(conv: fx.Node, w: np.ndarray) -> tuple[list[int], list[int], str, list[int]]:
    """(strides, dilations, ONNX-style auto_pad mode, pads) of a convolution call."""
    n = w.ndim - 2
    args = list(conv.args)
    if conv.target == aten.convolution.default:
        stride, padding, dilation = args[3], args[4], args[5]
    else:
        args += [None] * (7 - len(args))
        stride = args[3] if args[3] is not None else conv.kwargs.get("stride", 1)
        padding = args[4] if args[4] is not None else conv.kwargs.get("padding", 0)
        dilation = args[5] if args[5] is not None else conv.kwargs.get("dilation", 1)
    if isinstance(padding, str):
        mode, pads = ("SAME_UPPER" if padding == "same" else "VALID"), []
    else:
        mode, pads = "NOTSET", _ints(padding, n) * 2
    return _ints(stride, n), _ints(dilation, n), mode, pads


def _ints(value: object, n: int) -> list[int]:
    if isinstance(value, (list, tuple)):
        values = [int(v) for v in value]
        return values * n if len(values) == 1 else values
    return [int(value)] * n  # type: ignore[call-overload]
