"""Consumer folds: BN → (average pooling, layout ops) → Linear / unpadded Conv, in an fx graph.

A per-channel affine map commutes with averaging over other axes (AdaptiveAvgPool, AvgPool
without padding, ``mean`` over non-channel dims) and with max pooling when every ``s > 0``;
layout ops move (and may repeat, as ``flatten`` of C×H×W does) the channel axis. The walk
follows single-use nodes forward to the first Linear or Conv and folds ``L(s·x + t)`` into it
(``layers.fold_into_consumer``, with ``s`` and ``t`` spread over its input features).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch.nn.functional as F
from torch import fx, nn

from bnfold import patterns
from bnfold.torch import layers
from bnfold.torch.fx_axes import map_axis_forward
from bnfold.torch.fx_graph import is_layout, op_name, output_nodes, permutation, real_users
from bnfold.torch.fx_shapes import PREFIX_KEY

if TYPE_CHECKING:
    from bnfold.torch.fx_fold import GraphFolder
    from bnfold.torch.registry import BNMatch

_AVG_MODULES = (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d)
_MAX_MODULES = (nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d)
_MAX_MODULES += (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d)
_AVG_POOL = (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d)
_AVG_FUNCS = {F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d}
MAX_STEPS = 8


def fold_into_consumer(f: GraphFolder, bn: fx.Node, match: BNMatch) -> tuple[str, str] | None:
    """Fold ``bn`` into every Linear/Conv its output reaches through pooling and layout ops.

    With several readers (SwiftFormer's ``head`` and ``head_dist``) each must absorb the map
    and gets its own folded copy; one that cannot keeps the BN.
    """
    if match.remainder is not None:
        return None
    assert match.params is not None
    s, t = match.params.scale_shift()
    plan = _plan(f, bn, 1, np.arange(len(s)), s, t, [], 0)
    if not plan:
        return None
    into = [f.install(node, new) for node, new, _ in plan]
    f.drop_bn(bn, None)
    return ", ".join(into), " + ".join(sorted({path for _, _, path in plan}))


Install = tuple[fx.Node, nn.Module, str]


def _plan(
    f: GraphFolder,
    cur: fx.Node,
    axis: int,
    idx: np.ndarray,
    s: np.ndarray,
    t: np.ndarray,
    steps: list[str],
    depth: int,
) -> list[Install] | None:
    users = real_users(cur)
    if not users or depth > MAX_STEPS or cur in output_nodes(f.gm.graph):
        return None
    plan: list[Install] = []
    for user in users:
        if user.op == "call_module" and layers.layer_kind(f.mod(user)) in ("Conv", "Linear"):
            found = _fold(f, cur, user, axis, s[idx], t[idx], steps)
            if found is None:
                return None
            plan.append(found)
            continue
        moved = _through(f, user, cur, axis, idx, bool(np.all(s > 0)))
        if moved is None:
            return None
        step = op_name(user) if user.op != "call_module" else type(f.mod(user)).__name__
        sub = _plan(f, user, *moved, s, t, [*steps, step], depth + 1)
        if sub is None:
            return None
        plan.extend(sub)
    return plan


def _fold(
    f: GraphFolder,
    cur: fx.Node,
    user: fx.Node,
    axis: int,
    s: np.ndarray,
    t: np.ndarray,
    steps: list[str],
) -> Install | None:
    layer = f.mod(user)
    kind = layers.layer_kind(layer)
    if len(user.args) != 1 or user.kwargs or user.args[0] is not cur:
        return None
    rank = f.ndim(cur)
    if rank is None:
        return None
    if (axis != rank - 1) if kind == "Linear" else (axis != 1 or rank != layer.weight.dim()):
        return None
    new = layers.fold_into_consumer(layer, s, t)
    if isinstance(new, str):
        return None
    if layers.overrides_forward(layer):  # e.g. timm's Linear: prove it on a probe input
        shape = _probe_shape(f.shape(cur), kind, layer)
        if shape is None or not layers.probe_consumer(layer, new, shape, s, t):
            return None
    via = "".join(f"→{step}" for step in steps)
    return user, new, f"BN{via}→{kind} (consumer)"


def _probe_shape(
    dims: tuple[int | None, ...] | None, kind: str | None, layer: nn.Module
) -> tuple[int, ...] | None:
    if kind == "Linear":
        return (3, layers.in_channels(layer))
    if dims is None or None in dims[1:]:
        return None
    return (2, *dims[1:])  # type: ignore[return-value]


def _through(
    f: GraphFolder, node: fx.Node, src: fx.Node, axis: int, idx: np.ndarray, positive: bool
) -> tuple[int, np.ndarray] | None:
    """(axis, channel index per position) on ``node``'s output, or None when it does not commute."""
    if not node.args or node.args[0] is not src:
        return None
    if node.op == "call_module":
        m = f.mod(node)
        if isinstance(m, nn.Identity) or (isinstance(m, _AVG_MODULES) and axis == 1):
            return axis, idx
        if isinstance(m, _AVG_POOL) and axis == 1 and _unpadded_average(m):
            return axis, idx
        if isinstance(m, _MAX_MODULES) and axis == 1 and positive:
            return axis, idx
        if type(m) is nn.Flatten:
            return _layout(f, node, src, axis, idx)
        return None
    if node.op == "call_function" and node.target in _AVG_FUNCS and axis == 1:
        return axis, idx
    if op_name(node) == "mean" and node.op in ("call_method", "call_function"):
        return _mean(f, node, src, axis, idx)
    if is_layout(node):
        return _layout(f, node, src, axis, idx)
    return None


def _unpadded_average(m: nn.Module) -> bool:
    pads = m.padding if isinstance(m.padding, tuple) else (m.padding,)
    exact = not any(pads) or not m.count_include_pad
    return exact and getattr(m, "divisor_override", None) is None


def _mean(
    f: GraphFolder, node: fx.Node, src: fx.Node, axis: int, idx: np.ndarray
) -> tuple[int, np.ndarray] | None:
    rank = f.ndim(src)
    dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
    keep = node.args[2] if len(node.args) > 2 else node.kwargs.get("keepdim", False)
    if rank is None or dim is None or type(keep) is not bool:
        return None
    dims = dim if isinstance(dim, (list, tuple)) else [dim]
    if not all(type(d) is int and -rank <= d < rank for d in dims):
        return None
    moved = patterns.axis_after_reduce(axis, {d % rank for d in dims}, keep)
    return None if moved is None else (moved, idx)


def _layout(
    f: GraphFolder, node: fx.Node, src: fx.Node, axis: int, idx: np.ndarray
) -> tuple[int, np.ndarray] | None:
    name = op_name(node) if node.op != "call_module" else "flatten"
    if name == "contiguous":
        return axis, idx
    src_dims, out_dims = f.shape(src), f.shape(node)
    if src_dims is None or out_dims is None:
        return None
    if name in ("transpose", "permute"):
        perm = permutation(node, len(src_dims))
        return (perm.index(axis), idx) if perm else None
    if name in ("reshape", "view") and axis < node.meta.get(PREFIX_KEY, 0):
        return axis, idx  # the reshape keeps the leading dims through the channel axis
    if name == "unsqueeze" or (name == "flatten" and node.op != "call_module"):
        moved = map_axis_forward(node, len(src_dims), axis)
        if moved is not None:
            return moved, idx
    found = patterns.map_flat(src_dims, axis, len(idx), out_dims)
    if len(found) != 1:
        return None
    new_axis, positions = found[0]
    return new_axis, idx[positions]
