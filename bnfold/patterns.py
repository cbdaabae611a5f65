"""Fold patterns that do not depend on the graph kind: the rules and their math, once.

The ONNX passes, the torch.fx folder and the module-adjacency folder read their own
graphs and call these: when a Concat's BN splits, which kernel tap is the identity, when
an input-side fold is exact despite padding, when a BN is in training mode. Pure numpy
and ints; no onnx, torch or click imports (like ``foldmath``).
"""

from __future__ import annotations

from collections.abc import Sequence

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
    tap = []
    for k, d, pb, pe in zip(kernel, dilations, begins, ends, strict=True):
        if pb + pe != (k - 1) * d or pb % d or pb // d >= k:
            return None
        tap.append(pb // d)
    return tuple(tap)


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
