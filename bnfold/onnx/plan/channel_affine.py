"""Interpreting an elementwise constant as a per-channel vector along one axis."""

from __future__ import annotations

import numpy as np


def per_channel_vector(const: np.ndarray, rank: int, axis: int, channels: int) -> np.ndarray | str:
    """The length-``channels`` vector ``const`` applies along ``axis`` of a rank-``rank`` tensor.

    Uses numpy/ONNX broadcasting (right-aligned): a 1-D constant of length C broadcasts over
    the *last* axis, so it is per-channel on axis 1 only for 2-D tensors.
    """
    c = np.asarray(const)
    if c.ndim > rank:
        return f"constant of shape {tuple(c.shape)} broadcasts beyond the rank-{rank} tensor"
    aligned = (1,) * (rank - c.ndim) + tuple(c.shape)
    for i, dim in enumerate(aligned):
        if i == axis:
            if dim not in (1, channels):
                return f"constant dim {dim} on the channel axis does not match {channels} channels"
        elif dim != 1:
            return f"constant of shape {tuple(c.shape)} varies along axis {i}, not only channels"
    flat = c.astype(np.float64).reshape(-1)
    return np.broadcast_to(flat, (channels,)).copy() if flat.size in (1, channels) else flat
