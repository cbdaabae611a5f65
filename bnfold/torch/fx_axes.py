"""Which input axis of a layout op carries the channels found on one of its output axes.

Exact index arithmetic where the op says where axes go (transpose, permute, (un)squeeze,
flatten of the other axes), so unknown sizes do not matter; reshape-like merges and splits
go through ``patterns.same_channel_axis`` (row-major order, sizes after the axis known).
Only one-to-one mappings count: each channel index must meet exactly one BN channel.
"""

from __future__ import annotations

from typing import Any

from torch import fx, nn

from bnfold import patterns
from bnfold.torch.fx_graph import op_name, permutation
from bnfold.torch.fx_shapes import PREFIX_KEY

Dims = tuple[int | None, ...]


def map_axis_back(
    node: fx.Node, out: Dims, inp: Dims, axis: int, channels: int, module: Any = None
) -> int | None:
    """The axis of ``node``'s input whose index equals the output's channel index on ``axis``.

    ``module`` is the called module for ``call_module`` nodes (``nn.Flatten``).
    """
    if isinstance(module, nn.Flatten):
        start, end = (_norm(v, len(inp)) for v in (module.start_dim, module.end_dim))
        return _flatten_back(start, end, inp, axis, channels)
    name = op_name(node)
    if name == "contiguous":
        return axis
    if name in ("transpose", "permute"):
        perm = permutation(node, len(inp))
        return perm[axis] if perm else None
    if name == "unsqueeze":
        d = _dim(node, 1, "dim", len(out))
        return None if d is None or d == axis else axis - (axis > d)
    if name == "squeeze" and _arg(node, 1, "dim") is not None:
        d = _dim(node, 1, "dim", len(inp))
        if d is None or inp[d] is None:
            return None
        return axis + (axis >= d) if inp[d] == 1 else axis
    if name == "flatten":
        start = _dim(node, 1, "start_dim", len(inp), default=0)
        end = _dim(node, 2, "end_dim", len(inp), default=-1)
        return _flatten_back(start, end, inp, axis, channels)
    if axis < node.meta.get(PREFIX_KEY, 0):
        return axis  # a reshape that keeps the leading dims up to the channel axis
    return _reshape_back(out, inp, axis, channels)


def map_axis_forward(node: fx.Node, rank: int, axis: int) -> int | None:
    """Where input ``axis`` lands on the output of an unsqueeze or a flatten that keeps it.

    None when the axis is merged with others by the flatten (then sizes decide).
    """
    name = op_name(node)
    if name == "unsqueeze":
        d = _dim(node, 1, "dim", rank + 1)
        return None if d is None else axis + (axis >= d)
    start = _dim(node, 1, "start_dim", rank, default=0)
    end = _dim(node, 2, "end_dim", rank, default=-1)
    if start is None or end is None or start > end:
        return None
    if axis < start:
        return axis
    if axis > end:
        return axis - (end - start)
    return start if start == end else None


def _flatten_back(
    start: int | None, end: int | None, inp: Dims, axis: int, channels: int
) -> int | None:
    if start is None or end is None or start > end:
        return None
    if axis < start:
        return axis
    if axis > start:
        return axis + (end - start)
    # The merged axis holds exactly `channels` entries for every input the model accepts (the
    # BN checks its channel count), so one merged dim known to be `channels` forces the rest
    # to 1 (unknown ones included): the merge is then one to one.
    merged = inp[start : end + 1]
    hits = [i for i, d in enumerate(merged) if d == channels]
    if len(hits) == 1 and all(d in (1, None) for i, d in enumerate(merged) if i != hits[0]):
        return start + hits[0]
    return None


def _reshape_back(out: Dims, inp: Dims, axis: int, channels: int) -> int | None:
    for b in range(len(inp)):
        if patterns.same_channel_axis(out, axis, channels, inp, b):
            return b
    return None


def _arg(node: fx.Node, index: int, key: str) -> Any:
    return node.args[index] if len(node.args) > index else node.kwargs.get(key)


def _dim(node: fx.Node, index: int, key: str, rank: int, default: int | None = None) -> int | None:
    value = _arg(node, index, key)
    return _norm(default if value is None else value, rank)


def _norm(value: Any, rank: int) -> int | None:
    if type(value) is not int or not -max(rank, 1) <= value < max(rank, 1):
        return None
    return value % max(rank, 1)
