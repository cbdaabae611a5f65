"""Fold patterns that do not depend on the graph kind: the rules and their math, once.

The ONNX passes, the torch.fx folder and the module-adjacency folder read their own
graphs and call these: when a Concat's BN splits, which kernel tap is the identity, when
an input-side fold is exact despite padding, when a BN is in training mode. Pure numpy
and ints; no onnx, torch or click imports (like ``foldmath``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np

SAME_MODES = ("SAME_UPPER", "SAME_LOWER")


def split_concat(
    scale: np.ndarray, shift: np.ndarray, sizes: Sequence[int]
) -> list[tuple[np.ndarray, np.ndarray]] | str:
    """BN after a channel Concat: the ``(s, t)`` slice of each input, or why they do not add up."""
    if sum(sizes) != scale.shape[0]:
        return f"the Concat inputs have {sum(sizes)} channels, the BN {scale.shape[0]}"
    parts = []
    start = 0
    for size in sizes:
        parts.append((scale[start : start + size], shift[start : start + size]))
        start += size
    return parts


def pad_extents(
    kernel: Sequence[int], dilations: Sequence[int], mode: str, pads: Sequence[int]
) -> tuple[list[int], list[int]]:
    """(begin, end) padding per spatial dim for explicit pads or ``auto_pad`` SAME/VALID."""
    n = len(kernel)
    extents = [(k - 1) * d for k, d in zip(kernel, dilations, strict=True)]
    if mode in SAME_MODES:
        begins = [e // 2 if mode == "SAME_UPPER" else (e + 1) // 2 for e in extents]
        return begins, [e - b for e, b in zip(extents, begins, strict=True)]
    if mode == "VALID" or not pads:
        return [0] * n, [0] * n
    return list(pads[:n]), list(pads[n:])


def identity_tap(
    kernel: Sequence[int],
    strides: Sequence[int],
    dilations: Sequence[int],
    begins: Sequence[int],
    ends: Sequence[int],
) -> tuple[int, ...] | None:
    """The kernel index that reads the input pixel at the output position, when one exists.

    Needs stride 1 and padding whose total equals the dilated kernel extent, so the output
    keeps the input's size and output pixel p reads input p at tap ``pad_begin / dilation``;
    that tap never reads padding, so adding the identity there is exact at the borders too.
    """
    if any(s != 1 for s in strides):
        return None
    return aligned_tap(kernel, dilations, begins, ends)


def aligned_tap(
    kernel: Sequence[int],
    dilations: Sequence[int],
    begins: Sequence[int],
    ends: Sequence[int],
) -> tuple[int, ...] | None:
    """The kernel index that reads input ``stride·p`` for output p, at any stride.

    Needs padding whose total equals the dilated kernel extent: then the Conv's output has
    the size of an unpadded 1×1 Conv's with the same stride, and both read the same pixel.
    """
    tap = []
    for k, d, pb, pe in zip(kernel, dilations, begins, ends, strict=True):
        if pb + pe != (k - 1) * d or pb % d or pb // d >= k:
            return None
        tap.append(pb // d)
    return tuple(tap)


def embed_kernel(
    small: np.ndarray, small_tap: Sequence[int], kernel: Sequence[int], tap: Sequence[int]
) -> np.ndarray | None:
    """Zero-pad weights ``(C_out, C_in/g, k_small…)`` to ``kernel`` so the aligned taps meet.

    A 1×1 branch summed with a k×k Conv of the same input (RepVGG, MobileOne) becomes part of
    the k×k kernel: its single tap lands on the k×k kernel's aligned tap. None when the small
    kernel does not fit around that tap.
    """
    w = np.asarray(small, dtype=np.float64)
    out = np.zeros((*w.shape[:2], *kernel), dtype=np.float64)
    index: list[slice] = [slice(None), slice(None)]
    for k_s, t_s, k, t in zip(w.shape[2:], small_tap, kernel, tap, strict=True):
        start = t - t_s
        if start < 0 or start + k_s > k:
            return None
        index.append(slice(start, start + k_s))
    out[tuple(index)] = w
    return out


def split_sum(
    scale: np.ndarray, shift: np.ndarray, terms: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    """BN after a sum: s·(a + b) + t = (s·a + t) + s·b; every term scales, the first shifts."""
    zero = np.zeros_like(np.asarray(shift, dtype=np.float64))
    return [(scale, shift if i == 0 else zero) for i in range(terms)]


def map_flat(
    known: Sequence[int | None], axis: int, channels: int, new: Sequence[int | None]
) -> list[tuple[int, np.ndarray]]:
    """Every axis of ``new`` whose index determines ``known``'s channel index (row-major).

    Reshape-like ops (Reshape, Flatten, Squeeze, Unsqueeze, torch's view/flatten) keep the
    row-major element order, so with ``S`` the product of the dims after an axis and ``n``,
    ``m`` the axis sizes, ``i_a = (i_b // r) mod n`` holds for every element exactly when
    ``r = S_a / S_b`` is an integer and ``r·n`` divides ``m``. Only the dims after the axis
    must be known (None marks an unknown dim). Returns ``(axis b, idx)`` with ``v_new = v[idx]``.
    """
    if channels <= 0 or not 0 <= axis < len(known) or known[axis] != channels:
        return []
    s_a = _suffix(known, axis)
    if not s_a:  # unknown, or an empty tensor
        return []
    found: list[tuple[int, np.ndarray]] = []
    for b, m_b in enumerate(new):
        s_b = _suffix(new, b)
        if m_b is None or s_b is None or s_b == 0 or s_a % s_b:
            continue
        r = s_a // s_b
        if m_b % (r * channels):
            continue
        found.append((b, (np.arange(m_b) // r) % channels))
    return found


def same_channel_axis(
    known: Sequence[int | None], axis: int, channels: int, new: Sequence[int | None], target: int
) -> bool:
    """True when axis ``target`` of ``new`` indexes exactly ``known``'s channels, one to one."""
    for b, idx in map_flat(known, axis, channels, new):
        if b == target and len(idx) == channels and np.array_equal(idx, np.arange(channels)):
            return True
    return False


def axis_after_reduce(axis: int, reduced: Iterable[int], keepdims: bool) -> int | None:
    """Where ``axis`` lands after averaging over the (non-negative) ``reduced`` axes; None
    when it is one of them (a mean over the channels does not commute with the BN)."""
    reduced = set(reduced)
    if axis in reduced:
        return None
    return axis if keepdims else axis - sum(1 for a in reduced if a < axis)


def _suffix(dims: Sequence[int | None], axis: int) -> int | None:
    tail = dims[axis + 1 :]
    if any(d is None for d in tail):
        return None
    return math.prod(tail)  # type: ignore[arg-type]


def add_identity(
    weight: np.ndarray, vec: np.ndarray, group: int, tap: tuple[int, ...]
) -> np.ndarray:
    """W + v·δ: weights ``(C, C/g, k…)`` plus ``v`` on each channel's identity tap (float64).

    ``v·x`` per channel equals a Conv whose kernel holds ``v[o]`` at ``[o, o mod C/g, tap]``.
    """
    w = np.asarray(weight, dtype=np.float64).copy()
    channels = w.shape[0]
    rows = np.arange(channels)
    w[(rows, rows % (channels // group), *tap)] += np.asarray(vec, dtype=np.float64)
    return w


def fold_identity_branch(
    weight: np.ndarray,
    bias: np.ndarray | None,
    scale: np.ndarray,
    shift: np.ndarray,
    group: int,
    tap: tuple[int, ...],
) -> tuple[np.ndarray, np.ndarray]:
    """``Conv(x) + (s·x + t)`` as one Conv: W' = W + s·δ(tap), b' = b + t (float64)."""
    w64 = add_identity(weight, scale, group, tap)
    b64 = np.asarray(shift, dtype=np.float64).copy()
    if bias is not None:
        b64 += np.asarray(bias, dtype=np.float64).reshape(-1)
    return w64, b64


def identity_branch_reason(in_channels: int, out_channels: int, channels: int) -> str | None:
    """Why a Conv cannot absorb a same-shape identity branch of ``channels`` channels."""
    if in_channels != out_channels or out_channels != channels:
        return "the Conv changes the channel count"
    return None


def input_padding_reason(kernel: Sequence[int], mode: str, pads: Sequence[int]) -> str | None:
    """None when a Conv reads no padding, so an input shift t reaches every output equally.

    ``L(s·x + t) = L'(x)`` is exact only then: padding inserts zeros, not t.
    """
    if mode in SAME_MODES:
        if all(k == 1 for k in kernel):
            return None
        return f"pads its input (auto_pad={mode}); padding inserts zeros, not the BN shift"
    if mode == "VALID" or not any(pads):
        return None
    return f"has padding {list(pads)}; padding inserts zeros, not the BN shift"


def bn_training_reason(training: bool, statistics_used: bool, assume_eval: bool) -> str | None:
    """Why a BN cannot fold as a frozen affine map, or None.

    ``training``: it normalises with batch statistics (ONNX ``training_mode=1``, a torch
    module in train mode or without running statistics). ``statistics_used``: its running
    statistics outputs (or updates) are read. ``assume_eval`` overrides the first only.
    """
    if training and not assume_eval:
        return (
            "BN is in training mode (training_mode=1): it normalises with batch statistics; "
            "use --assume-eval to fold with the running statistics"
        )
    if statistics_used:
        return "BN's running-statistics outputs are used (a training graph)"
    return None
