"""Framework-free BatchNorm folding math (numpy only, float64 throughout).

BN(y) = γ·(y − μ)/√(σ² + ε) + β = s·y + t with s = γ/√(σ²+ε), t = β − μ·s.

Producer folds scale a layer's *output* channels; consumer folds scale its *input*
channels. Both the ONNX and the PyTorch sides use these functions, so weight
layouts follow the shared convention: Conv ``(C_out, C_in/g, k…)``, ConvTranspose
``(C_in, C_out/g, k…)``, Linear ``(out, in)``.

Casting back (``cast_back``) refuses NaN/Inf and overflow (|w| > the dtype's max). Underflow
is judged per output channel, by its effect and not by a count (``underflow_reason``).
"""

from __future__ import annotations

import numpy as np

BF16_MAX = 3.3895313892515355e38
# u = 2^-p (half an ulp at 1): the largest relative error of rounding to the dtype.
_UNIT_ROUNDOFF = {
    "float16": 2.0**-11,
    "bfloat16": 2.0**-8,
    "float8_e4m3fn": 2.0**-4,
    "float8_e4m3fnuz": 2.0**-4,
    "float8_e4m3b11fnuz": 2.0**-4,
    "float8_e5m2": 2.0**-3,
    "float8_e5m2fnuz": 2.0**-3,
    "float4_e2m1fn": 2.0**-2,
}
CONV_TRANSPOSE_AXES = (0, 2)  # output channels of ``grouped_conv_transpose`` weights


def check_bn_params(
    gamma: np.ndarray,
    beta: np.ndarray,
    mean: np.ndarray,
    var: np.ndarray,
    eps: float,
    channels: int | None = None,
) -> str | None:
    """Return why these BN parameters cannot be folded, or None when they can."""
    arrays = {"scale": gamma, "bias": beta, "mean": mean, "var": var}
    for name, arr in arrays.items():
        if arr.ndim != 1:
            return f"BN {name} has shape {tuple(arr.shape)}, expected 1-D per-channel"
    sizes = {name: arr.shape[0] for name, arr in arrays.items()}
    if len(set(sizes.values())) != 1:
        return f"BN parameter lengths differ: {sizes}"
    if channels is not None and gamma.shape[0] != channels:
        return f"BN has {gamma.shape[0]} channels but the layer produces {channels}"
    for name, arr in arrays.items():
        if not np.all(np.isfinite(arr)):
            return f"BN {name} contains NaN or Inf"
    if not np.isfinite(eps):
        return "BN epsilon is not finite"
    denom = var.astype(np.float64) + np.float64(eps)
    if np.any(denom <= 0):
        return "BN variance + epsilon ≤ 0 for some channel"
    return None


def bn_scale_shift(
    gamma: np.ndarray, beta: np.ndarray, mean: np.ndarray, var: np.ndarray, eps: float
) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel (s, t) in float64 such that BN(y) = s·y + t."""
    g, b, m, v = (np.asarray(a, dtype=np.float64) for a in (gamma, beta, mean, var))
    s = g / np.sqrt(v + np.float64(eps))
    return s, b - m * s


def broadcast_along(vec: np.ndarray, ndim: int, axis: int) -> np.ndarray:
    """Reshape a 1-D vector so it broadcasts along ``axis`` of an ``ndim``-D array."""
    shape = [1] * ndim
    shape[axis] = vec.shape[0]
    return vec.reshape(shape)


def scale_output_channels(weight: np.ndarray, scale: np.ndarray, axis: int = 0) -> np.ndarray:
    """W' = W·s along the weight's output-channel ``axis`` (float64 result)."""
    w = np.asarray(weight)
    s = broadcast_along(np.asarray(scale, dtype=np.float64), w.ndim, axis)
    if w.dtype.kind == "f" and w.dtype.itemsize <= 8:
        return np.multiply(w, s, dtype=np.float64)  # one pass, no float64 copy of W
    return w.astype(np.float64) * s


def scale_output_channels_cast(
    weight: np.ndarray, scale: np.ndarray, dtype: np.dtype | type, block_bytes: int = 1 << 20
) -> tuple[np.ndarray | None, str | None]:
    """``cast_back(scale_output_channels(weight, scale, 0), dtype, weight)`` in cache-sized blocks.

    Same float64 math and the same refusals (NaN/Inf, overflow, underflow that matters), but
    the float64 intermediate never exists for the whole tensor: each block of output
    channels is scaled into one reused float64 buffer, cast, and checked while it is still
    in cache. The checks run on the cast block (finite sum ⇒ no NaN, Inf or overflow; for
    dtypes narrower than float32, no zeros ⇒ nothing underflowed); a block that fails them
    is judged again by ``cast_back`` (the underflow rule is per channel, so per block).
    """
    w = np.asarray(weight)
    dtype = np.dtype(dtype)
    s = np.asarray(scale, dtype=np.float64)
    out = np.empty(w.shape, dtype=dtype)
    if w.shape[0] == 0:
        return out, None
    row_bytes = max(1, w[0].size * 8)
    step = max(1, block_bytes // row_bytes)
    if w.dtype.kind != "f" or dtype.kind != "f" or w.dtype.itemsize > 8:
        return _cast_blocks(w, s, out, step)  # bfloat16 and friends: the general path
    buffer = np.empty((min(step, w.shape[0]), *w.shape[1:]), dtype=np.float64)
    s_rows = broadcast_along(s, w.ndim, 0)
    narrow = dtype.itemsize < 4  # only there can underflow refuse a fold
    sum_dtype = np.float32 if narrow else dtype
    for start in range(0, w.shape[0], step):
        stop = min(start + step, w.shape[0])
        block = buffer[: stop - start]
        np.copyto(block, w[start:stop])  # widen first: cheaper than a mixed-type multiply
        np.multiply(block, s_rows[start:stop], out=block)
        cast = out[start:stop]
        np.copyto(cast, block, casting="unsafe")
        finite = np.isfinite(np.add.reduce(cast, axis=None, dtype=sum_dtype))
        if not finite or (narrow and np.count_nonzero(cast) != cast.size):
            checked, reason = cast_back(block, dtype, w[start:stop], first_channel=start)
            if reason is not None:
                return None, reason
            cast[...] = checked
    return out, None


def _cast_blocks(
    w: np.ndarray, s: np.ndarray, out: np.ndarray, step: int
) -> tuple[np.ndarray | None, str | None]:
    """The plain blocked loop: scale, ``cast_back``, store."""
    for start in range(0, w.shape[0], step):
        rows = w[start : start + step]
        block = scale_output_channels(rows, s[start : start + step], axis=0)
        cast, reason = cast_back(block, out.dtype, rows, first_channel=start)
        if reason is not None:
            return None, reason
        out[start : start + step] = cast
    return out, None


def grouped_conv_transpose(weight: np.ndarray, group: int) -> np.ndarray:
    """ConvTranspose weights ``(C_in, C_out/g, k…)`` viewed as ``(g, C_in/g, C_out/g, k…)``.

    Output channel ``gi·(C_out/g) + j`` is index ``(gi, j)`` on ``CONV_TRANSPOSE_AXES``.
    """
    w = np.asarray(weight)
    return w.reshape((group, w.shape[0] // group, *w.shape[1:]))


def scale_conv_transpose_output(weight: np.ndarray, scale: np.ndarray, group: int) -> np.ndarray:
    """Scale ConvTranspose weights ``(C_in, C_out/g, k…)`` by output channel.

    Output channel ``o = gi·(C_out/g) + j`` lives in rows of group ``gi`` at column ``j``.
    """
    w = np.asarray(weight, dtype=np.float64)
    c_in, c_out_g = w.shape[0], w.shape[1]
    kernel = w.shape[2:]
    grouped = w.reshape((group, c_in // group, c_out_g, *kernel))
    s = scale.reshape((group, 1, c_out_g) + (1,) * len(kernel))
    return (grouped * s).reshape(w.shape)


def fold_output_bias(bias: np.ndarray | None, scale: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """b' = b·s + t (b = 0 when absent), float64."""
    if bias is None:
        return shift.astype(np.float64).copy()
    return np.asarray(bias, dtype=np.float64) * scale + shift


def expand_input_scale_conv(vec: np.ndarray, c_out: int, group: int) -> np.ndarray:
    """Map a per-input-channel vector to Conv weight's ``(C_out, C_in/g)`` layout."""
    c_in = vec.shape[0]
    per_group = vec.reshape(group, c_in // group)  # (g, C_in/g)
    return np.repeat(per_group, c_out // group, axis=0)  # (C_out, C_in/g)


def fold_conv_input_affine(
    weight: np.ndarray, bias: np.ndarray | None, scale: np.ndarray, shift: np.ndarray, group: int
) -> tuple[np.ndarray, np.ndarray]:
    """Conv(s·x + t) = Conv'(x) for an unpadded Conv with weights ``(C_out, C_in/g, k…)``.

    W' = W·s over input channels; b' = b + Σ_{j,k} W[o, j, k]·t[g(o)·C_in/g + j].
    """
    w = np.asarray(weight, dtype=np.float64)
    c_out = w.shape[0]
    kernel_axes = tuple(range(2, w.ndim))
    s = expand_input_scale_conv(np.asarray(scale, np.float64), c_out, group)
    t = expand_input_scale_conv(np.asarray(shift, np.float64), c_out, group)
    s_full = s.reshape(s.shape + (1,) * len(kernel_axes))
    new_w = w * s_full
    extra = (w.sum(axis=kernel_axes) * t).sum(axis=1) if kernel_axes else (w * t).sum(axis=1)
    base = np.zeros(c_out) if bias is None else np.asarray(bias, dtype=np.float64)
    return new_w, base + extra


def fold_matrix_input_affine(
    weight: np.ndarray, bias: np.ndarray | None, scale: np.ndarray, shift: np.ndarray, in_axis: int
) -> tuple[np.ndarray, np.ndarray]:
    """(s·x + t)·W for a 2-D weight whose input-feature axis is ``in_axis``.

    Returns W' (same layout) and the bias b' = b + t·W (over output features).
    """
    w = np.asarray(weight, dtype=np.float64)
    new_w = w * broadcast_along(np.asarray(scale, np.float64), 2, in_axis)
    w_kn = w if in_axis == 0 else w.T  # (in, out)
    extra = np.asarray(shift, np.float64) @ w_kn
    base = np.zeros(w_kn.shape[1]) if bias is None else np.asarray(bias, dtype=np.float64)
    return new_w, base + extra


def cast_back(
    folded: np.ndarray,
    dtype: np.dtype | type,
    original: np.ndarray | None = None,
    axis: int | tuple[int, ...] = 0,
    *,
    first_channel: int = 0,
) -> tuple[np.ndarray | None, str | None]:
    """Cast float64 results to the model dtype; refuse overflow, NaN/Inf or harmful underflow.

    Returns ``(array, None)`` on success or ``(None, reason)``. ``original`` (same shape)
    marks ``folded`` as a layer's weights, whose output channels lie along ``axis`` (a
    tuple when a channel spans several axes, e.g. ``CONV_TRANSPOSE_AXES``); their
    underflow is judged by ``underflow_reason``. Without it (biases, shifts, constant
    terms) nothing is judged for underflow. ``first_channel`` numbers the channels of a
    block in reasons.
    """
    dtype = np.dtype(dtype)
    limit = _dtype_max(dtype)
    if limit is not None and _max_abs(folded) > limit:
        if not np.all(np.isfinite(folded)):
            return None, "folded weights would contain NaN or Inf"
        return None, f"folded weights exceed the {dtype.name} range (|w| > {limit:g})"
    out = folded.astype(dtype)
    if not np.all(np.isfinite(folded)):  # NaN passes the range test above
        return None, "folded weights would contain NaN or Inf"
    if original is not None and original.shape == folded.shape:
        reason = underflow_reason(folded, out, dtype, axis, first_channel=first_channel)
        if reason is not None:
            return None, reason
    return out, None


def underflow_reason(
    folded: np.ndarray,
    cast: np.ndarray,
    dtype: np.dtype | type | str,
    axis: int | tuple[int, ...] = 0,
    *,
    first_channel: int = 0,
) -> str | None:
    """Why weights flushed to zero by the cast change some output channel too much, or None.

    The rule (shared by the ONNX and PyTorch sides): float32 and wider never refuse —
    a weight below float32's smallest subnormal changes the output by less than the
    unfolded BN's own rounding. Narrower dtypes (float16, bfloat16, float8) refuse when,
    for some output channel c (the slice at index c of ``axis``),

        Σ |w64| over c's flushed weights  >  u · Σ |w64| over all of c's weights,

    with ``w64`` the float64 folded weights, a weight *flushed* when it is non-zero in
    float64 and zero after the cast, and u the dtype's unit roundoff (2⁻¹¹ for float16,
    2⁻⁸ for bfloat16: half an ulp, relative). For any input x, channel c's output
    Σ w·x moves by at most (flushed L1)·max|x| through the flush, while rounding the
    channel's weights to the dtype already allows u·(channel L1)·max|x|: a flush within
    that bound is below the rounding every folded channel gets anyway. A γ = 0 channel is
    an exact zero in float64, not a flush. Arrays of rank < 2 (biases, shifts) are never
    judged: added, not multiplied, a flushed one is below half the dtype's smallest
    subnormal, which the layer's output in that dtype cannot resolve either.
    """
    u = unit_roundoff(dtype)
    if u is None or folded.ndim < 2:
        return None
    cast = np.asarray(cast)
    if np.count_nonzero(folded) == np.count_nonzero(cast):
        return None  # nothing flushed (a cast never makes a zero non-zero)
    rows = channel_rows(np.asarray(folded, dtype=np.float64), axis)
    magnitude = np.abs(rows)
    flushed = np.where(channel_rows(cast, axis) == 0, magnitude, 0.0).sum(axis=1)
    total = magnitude.sum(axis=1)
    bad = np.flatnonzero(flushed > u * total)
    if bad.size == 0:
        return None
    c = int(bad[0])
    which = f"output channel {first_channel + c}"
    if bad.size > 1:
        which += f" (and {bad.size - 1} more)"
    name = dtype if isinstance(dtype, str) else np.dtype(dtype).name
    share = 100.0 * flushed[c] / total[c]
    return (
        f"{which}: folded weights underflow to zero in {name} ({share:.3g}% of the channel's "
        f"L1 norm; its rounding allows {100.0 * u:.3g}%)"
    )


def unit_roundoff(dtype: np.dtype | type | str) -> float | None:
    """Half an ulp at 1 for dtypes narrower than float32; None for float32 and wider.

    An unknown narrow dtype gets 0.0: then any flushed weight refuses the fold.
    """
    name = dtype if isinstance(dtype, str) else np.dtype(dtype).name
    if name in _UNIT_ROUNDOFF:
        return _UNIT_ROUNDOFF[name]
    if isinstance(dtype, str):
        return None if name in ("float32", "float64") else 0.0
    return None if np.dtype(dtype).itemsize >= 4 else 0.0


def channel_rows(arr: np.ndarray, axis: int | tuple[int, ...] = 0) -> np.ndarray:
    """``arr`` as ``(channels, rest)``: row c holds every element of output channel c."""
    axes = (axis,) if isinstance(axis, int) else tuple(axis)
    moved = np.moveaxis(arr, axes, tuple(range(len(axes))))
    channels = int(np.prod([arr.shape[a] for a in axes]))
    return moved.reshape(channels, -1)


def all_finite(arr: np.ndarray) -> bool:
    """True when no element is NaN or ±Inf (any float dtype, bfloat16 included)."""
    try:
        if np.isfinite(np.add.reduce(arr, axis=None, dtype=_sum_dtype(arr.dtype))):
            return True  # a finite sum proves every element finite
        return bool(np.isfinite(arr).all())
    except TypeError:
        return bool(np.isfinite(np.asarray(arr, dtype=np.float64)).all())


def _sum_dtype(dtype: np.dtype) -> type:
    """The accumulator for a finiteness sum: float32 unless the data is wider.

    A finite sum proves every element finite; an overflowing one only sends the caller
    to the exact element-wise test.
    """
    return np.float64 if dtype.itemsize > 4 and dtype.kind == "f" else np.float32


def _max_abs(arr: np.ndarray) -> float:
    """max |x| without allocating |x| (NaN propagates)."""
    if arr.size == 0:
        return 0.0
    return float(max(arr.max(), -arr.min()))


def _dtype_max(dtype: np.dtype) -> float | None:
    if dtype.name == "bfloat16":
        return BF16_MAX
    if np.issubdtype(dtype, np.floating):
        return float(np.finfo(dtype).max)
    return None
