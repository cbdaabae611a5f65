"""The identity as a convolution: which kernel tap reads the aligned input pixel.

With C_in = C_out, stride 1 and padding that keeps the spatial size, ``v·x`` (per channel)
equals a Conv whose kernel holds ``v[o]`` at weight ``[o, o mod C_in/g, tap]`` and zeros
elsewhere; the tap never reads padding, so adding it to a Conv's weights is exact.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx_ir as ir

logger = logging.getLogger(__name__)


def identity_tap(conv: ir.Node, kernel: tuple[int, ...]) -> tuple[int, ...] | None:
    """Kernel index that reads the input pixel at the output position, when one exists.

    Needs stride 1 and padding whose total equals the dilated kernel extent, so the output
    keeps the input's size and output pixel p reads input p at tap ``pad_begin / dilation``.
    """
    n = len(kernel)
    strides = _ints(conv, "strides", [1] * n)
    dilations = _ints(conv, "dilations", [1] * n)
    if any(s != 1 for s in strides):
        return None
    auto = conv.attributes.get("auto_pad")
    mode = auto.as_string() if auto is not None else "NOTSET"
    extents = [(k - 1) * d for k, d in zip(kernel, dilations, strict=True)]
    if mode in ("SAME_UPPER", "SAME_LOWER"):
        begins = [e // 2 if mode == "SAME_UPPER" else (e + 1) // 2 for e in extents]
        ends = [e - b for e, b in zip(extents, begins, strict=True)]
    elif mode == "VALID":
        begins, ends = [0] * n, [0] * n
    else:
        pads = _ints(conv, "pads", [0] * (2 * n))
        begins, ends = pads[:n], pads[n:]
    tap = []
    for k, d, e, pb, pe in zip(kernel, dilations, extents, begins, ends, strict=True):
        if pb + pe != e or pb % d or pb // d >= k:
            return None
        tap.append(pb // d)
    return tuple(tap)


def add_identity(
    weight: np.ndarray, vec: np.ndarray, group: int, tap: tuple[int, ...]
) -> np.ndarray:
    """W + v·δ: weights ``(C, C/g, k…)`` plus ``v`` on each channel's identity tap (float64)."""
    w = np.asarray(weight, dtype=np.float64).copy()
    channels = w.shape[0]
    rows = np.arange(channels)
    w[(rows, rows % (channels // group), *tap)] += vec
    return w


def _ints(node: ir.Node, name: str, default: list[int]) -> list[int]:
    attr = node.attributes.get(name)
    return [int(v) for v in attr.as_ints()] if attr is not None else default
