"""Moving a per-channel vector through layout ops (Transpose, Reshape, Flatten, Squeeze…).

A per-channel affine map ``v[i_a]`` along axis ``a`` of one tensor is a per-axis map along
axis ``b`` of a neighbouring tensor when the channel index ``i_a`` is a function of ``i_b``
alone. Reshape-like ops keep the row-major element order, so with ``S`` the product of the
dims after an axis and ``n``/``m`` the axis sizes, ``i_a = (i_b // r) mod n`` holds for
every element exactly when ``r = S_a / S_b`` is an integer and ``r·n`` divides ``m``. Only
the dims from the axis to the end must be static: a symbolic batch dim is fine.

Each mapping returns an index array ``idx`` so that ``v_new = v[idx]`` (the vector may be
repeated when the new axis merges the channel axis with trailing ones, as in Flatten).
"""

from __future__ import annotations

import math

import numpy as np
import onnx_ir as ir

from bnfold.onnx.constants import constant_array, is_onnx_op
from bnfold.patterns import map_flat

RESHAPE_LIKE = ("Reshape", "Flatten", "Squeeze", "Unsqueeze")
LAYOUT_OPS = ("Transpose", *RESHAPE_LIKE)

Mapping = tuple[int, np.ndarray]  # (axis on the new tensor, index array into the old vector)


def static_dims(value: ir.Value | None) -> list[int | None] | None:
    """The value's dims (None for symbolic/unknown ones), or None when the rank is unknown."""
    if value is None or value.shape is None:
        return None
    return [d if isinstance(d, int) else None for d in value.shape]


def is_layout_op(node: ir.Node) -> bool:
    """True for the data-movement ops a per-channel vector can be mapped through."""
    return is_onnx_op(node, LAYOUT_OPS)


def map_backward(node: ir.Node, axis: int, channels: int) -> list[Mapping] | str:
    """Axes of the op's input carrying the per-channel map known on output ``axis``."""
    return _map(node, axis, channels, forward=False)


def map_forward(node: ir.Node, axis: int, channels: int) -> list[Mapping] | str:
    """Axes of the op's output carrying the per-channel map known on input ``axis``."""
    return _map(node, axis, channels, forward=True)


def _map(node: ir.Node, axis: int, channels: int, *, forward: bool) -> list[Mapping] | str:
    x, y = node.inputs[0], node.outputs[0]
    known = x if forward else y
    name = f"{node.op_type} '{node.name or y.name}'"
    if is_onnx_op(node, "Transpose"):
        return _map_transpose(node, known, axis, channels, forward=forward, name=name)
    x_dims, y_dims = static_dims(x), output_dims(node)
    known_dims, new_dims = (x_dims, y_dims) if forward else (y_dims, x_dims)
    if known_dims is None or new_dims is None:
        return f"{name}: tensor ranks are unknown"
    found = map_flat(known_dims, axis, channels, new_dims)
    if not found:
        return (
            f"{name} does not keep the channel axis ({channels} channels on axis {axis} of "
            f"{_fmt(known_dims)} → {_fmt(new_dims)})"
        )
    return found


def _map_transpose(
    node: ir.Node, known: ir.Value | None, axis: int, channels: int, *, forward: bool, name: str
) -> list[Mapping] | str:
    dims = static_dims(known)
    perm_attr = node.attributes.get("perm")
    if perm_attr is not None:
        perm = [int(p) for p in perm_attr.as_ints()]
    elif dims is not None:
        perm = list(range(len(dims)))[::-1]
    else:
        return f"{name}: rank unknown and no perm"
    if not 0 <= axis < len(perm):
        return f"{name}: axis {axis} out of range"
    if dims is not None and dims[axis] not in (None, channels):
        return f"{name}: axis {axis} has {dims[axis]} entries, not {channels}"
    new_axis = perm.index(axis) if forward else perm[axis]
    return [(new_axis, np.arange(channels))]


def output_dims(node: ir.Node) -> list[int | None] | None:
    """The op's output dims; a Reshape's are computed where inference left them unknown."""
    dims = static_dims(node.outputs[0])
    if not is_onnx_op(node, "Reshape") or (dims is not None and None not in dims):
        return dims
    computed = reshape_output_dims(node)
    if computed is None or (dims is not None and len(dims) != len(computed)):
        return dims
    if dims is None:
        return computed
    return [d if d is not None else c for d, c in zip(dims, computed, strict=True)]


def reshape_output_dims(node: ir.Node) -> list[int | None] | None:
    """Output dims of a Reshape with a constant shape input (0 copies, −1 infers)."""
    shape = constant_array(node.inputs[1]) if len(node.inputs) > 1 else None
    in_dims = static_dims(node.inputs[0])
    if shape is None or in_dims is None:
        return None
    zero_copies = node.attributes.get_int("allowzero", 0) == 0
    out: list[int | None] = []
    for i, d in enumerate(int(v) for v in np.asarray(shape).reshape(-1)):
        if d == 0 and zero_copies:
            out.append(in_dims[i] if i < len(in_dims) else None)
        else:
            out.append(d)
    if -1 in out:
        known = [d for d in out if d not in (-1, None)]
        total = math.prod(in_dims) if all(d is not None for d in in_dims) else None
        fill = None if total is None or None in out else total // max(math.prod(known), 1)
        out = [fill if d == -1 else d for d in out]
    return out


def _fmt(dims: list[int | None]) -> str:
    return "(" + ", ".join("?" if d is None else str(d) for d in dims) + ")"
