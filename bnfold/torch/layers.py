"""New Conv/ConvTranspose/Linear modules with a BatchNorm folded in (the originals stay untouched).

All arithmetic goes through :mod:`bnfold.foldmath` in float64; results are cast back to the
layer's dtype, refusing overflow, NaN/Inf or an underflow that matters (``foldmath``'s
per-output-channel rule, bfloat16 included) with a reason.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize

from bnfold import foldmath, patterns

CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
CONV_T = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
PRODUCERS = (*CONV, *CONV_T, nn.Linear)
_BASE_FORWARD = {cls: cls.forward for cls in PRODUCERS}


def layer_kind(module: nn.Module) -> str | None:
    """'Conv', 'ConvTranspose' or 'Linear' for foldable layers, else None."""
    if isinstance(module, CONV_T):
        return "ConvTranspose"
    if isinstance(module, CONV):
        return "Conv"
    if isinstance(module, nn.Linear):
        return "Linear"
    return None


def overrides_forward(module: nn.Module) -> bool:
    """True for subclasses (e.g. weight-standardised convs) whose forward is not torch's."""
    for base, fwd in _BASE_FORWARD.items():
        if type(module) is base or (isinstance(module, base) and type(module).forward is fwd):
            return False
    return True


def unsupported_reason(layer: nn.Module) -> str | None:
    """Why new weights on a copy of ``layer`` would not take effect (None when they would)."""
    if parametrize.is_parametrized(layer):
        return "its weight is parametrized (weight_norm/spectral_norm): remove that first"
    if layer._forward_pre_hooks or layer._forward_hooks:
        return "it has forward hooks (e.g. old-style weight_norm) that may recompute its output"
    return None


def probe_producer(
    old: nn.Module, new: nn.Module, shape: tuple[int, ...], scale: np.ndarray, shift: np.ndarray
) -> bool:
    """Prove new(x) == s·old(x) + t on a random input of ``shape`` (for custom forwards)."""
    weight = old.weight
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=gen).to(weight.device, weight.dtype)
    with torch.no_grad():
        ref, got = old(x).double(), new(x).double()
    axis = ref.dim() - 1 if isinstance(old, nn.Linear) else 1
    view = [1] * ref.dim()
    view[axis] = -1
    expected = ref * torch.from_numpy(scale).view(view) + torch.from_numpy(shift).view(view)
    tol = 1e-4 * max(float(expected.abs().max()), 1.0)
    return expected.shape == got.shape and bool(((expected - got).abs() <= tol).all())


def probe_consumer(
    old: nn.Module, new: nn.Module, shape: tuple[int, ...], scale: np.ndarray, shift: np.ndarray
) -> bool:
    """Prove new(x) == old(s·x + t) on a random input of ``shape`` (for custom forwards)."""
    weight = old.weight
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=gen, dtype=torch.float64)
    axis = x.dim() - 1 if isinstance(old, nn.Linear) else 1
    view = [1] * x.dim()
    view[axis] = -1
    affine = x * torch.from_numpy(scale).view(view) + torch.from_numpy(shift).view(view)
    with torch.no_grad():
        ref = old(affine.to(weight.device, weight.dtype)).double()
        got = new(x.to(weight.device, weight.dtype)).double()
    tol = 1e-4 * max(float(ref.abs().max()), 1.0)
    return ref.shape == got.shape and bool(((ref - got).abs() <= tol).all())


def out_channels(module: nn.Module) -> int:
    return int(module.out_features if isinstance(module, nn.Linear) else module.out_channels)


def in_channels(module: nn.Module) -> int:
    return int(module.in_features if isinstance(module, nn.Linear) else module.in_channels)


def fold_into_producer(layer: nn.Module, scale: np.ndarray, shift: np.ndarray) -> nn.Module | str:
    """A copy of ``layer`` computing ``s·layer(x) + t`` per output channel, or a reason."""
    why = unsupported_reason(layer)
    if why:
        return why
    if len(scale) != out_channels(layer):
        name, produced = type(layer).__name__, out_channels(layer)
        return f"BN has {len(scale)} channels but {name} produces {produced}"
    w = _np(layer.weight)
    b = _np(layer.bias) if layer.bias is not None else None
    if isinstance(layer, CONV_T):
        new_w = foldmath.scale_conv_transpose_output(w, scale, int(layer.groups))
    else:
        new_w = foldmath.scale_output_channels(w, scale, axis=0)
    new_b = foldmath.fold_output_bias(b, scale, shift)
    return _rebuild(layer, new_w, new_b)


def fold_into_consumer(layer: nn.Module, scale: np.ndarray, shift: np.ndarray) -> nn.Module | str:
    """A copy of ``layer`` computing ``layer(s·x + t)`` (unpadded Conv or Linear), or a reason."""
    why = unsupported_reason(layer)
    if why:
        return why
    if len(scale) != in_channels(layer):
        return f"BN has {len(scale)} channels but {type(layer).__name__} reads {in_channels(layer)}"
    w = _np(layer.weight)
    b = _np(layer.bias) if layer.bias is not None else None
    if isinstance(layer, nn.Linear):
        new_w, new_b = foldmath.fold_matrix_input_affine(w, b, scale, shift, in_axis=1)
    elif isinstance(layer, CONV) and not isinstance(layer, CONV_T):
        why = patterns.input_padding_reason(layer.kernel_size, *_padding(layer))
        if why is not None:
            return f"the Conv {why}"
        new_w, new_b = foldmath.fold_conv_input_affine(w, b, scale, shift, int(layer.groups))
    else:
        return f"cannot fold a BN into the input of {type(layer).__name__}"
    return _rebuild(layer, new_w, new_b)


def fold_identity_into_conv(
    conv: nn.Module, scale: np.ndarray, shift: np.ndarray
) -> nn.Module | str:
    """A copy of ``conv`` computing ``conv(x) + s·x + t`` (RepVGG identity branch), or a reason."""
    reason = unsupported_reason(conv) or identity_conv_reason(conv, len(scale))
    if reason:
        return reason
    w = _np(conv.weight)
    tap = _identity_tap(conv)
    assert tap is not None  # identity_conv_reason checked it
    b = _np(conv.bias) if conv.bias is not None else None
    new_w, new_b = patterns.fold_identity_branch(w, b, scale, shift, int(conv.groups), tap)
    return _rebuild(conv, new_w, new_b)


def identity_conv_reason(conv: nn.Module, channels: int) -> str | None:
    """Why ``conv`` cannot absorb an identity branch with ``channels`` channels (None if it can)."""
    if not isinstance(conv, CONV) or isinstance(conv, CONV_T):
        return "the sibling branch is not a Conv"
    why = patterns.identity_branch_reason(conv.in_channels, conv.out_channels, channels)
    if why is not None:
        return why
    if any(s != 1 for s in conv.stride):
        return "the Conv is strided"
    if _identity_tap(conv) is None:
        return "the Conv does not preserve the spatial size"
    return None


def merge_parallel(big: nn.Module, small: nn.Module) -> nn.Module | str:
    """One Conv computing ``big(x) + small(x)`` (RepVGG/MobileOne branches), or a reason.

    The small kernel (1×1, or any that fits) is zero-padded into the big one so that both
    aligned taps meet (``patterns.embed_kernel``); stride, groups and channels must agree.
    """
    for conv in (big, small):
        if not isinstance(conv, CONV) or isinstance(conv, CONV_T) or overrides_forward(conv):
            return "a branch is not a plain Conv"
        why = unsupported_reason(conv)
        if why:
            return why
    if type(big) is not type(small) or big.weight.dtype != small.weight.dtype:
        return "the branches are different Conv types"
    same = ("in_channels", "out_channels", "groups", "stride")
    if any(getattr(big, a) != getattr(small, a) for a in same):
        return "the branches differ in channels, groups or stride"
    if any(k > 1 for k in small.kernel_size) and (
        big.dilation != small.dilation or big.padding_mode != small.padding_mode
    ):
        return "the branches differ in dilation or padding mode"
    tap_big, tap_small = aligned_tap(big), aligned_tap(small)
    if tap_big is None or tap_small is None:
        return "a branch changes the spatial size differently"
    kernel = [int(k) for k in big.kernel_size]
    embedded = patterns.embed_kernel(_np(small.weight), tap_small, kernel, tap_big)
    if embedded is None:
        return "the smaller kernel does not fit around the larger one's aligned tap"
    bias = np.zeros(int(big.out_channels))
    for conv in (big, small):
        if conv.bias is not None:
            bias = bias + _np(conv.bias)
    return _rebuild(big, _np(big.weight) + embedded, bias)


def aligned_tap(conv: nn.Module) -> tuple[int, ...] | None:
    """The kernel tap reading input ``stride·p`` for output p (``patterns.aligned_tap``)."""
    kernel = [int(k) for k in conv.kernel_size]
    dilations = [int(d) for d in conv.dilation]
    begins, ends = patterns.pad_extents(kernel, dilations, *_padding(conv))
    return patterns.aligned_tap(kernel, dilations, begins, ends)


def _padding(layer: nn.Module) -> tuple[str, list[int]]:
    """A torch Conv's padding as ONNX's ``(auto_pad mode, pads)``."""
    pad = layer.padding
    if isinstance(pad, str):
        return ("SAME_UPPER" if pad == "same" else "VALID"), []
    return "NOTSET", [int(p) for p in pad] * 2


def _identity_tap(conv: nn.Module) -> tuple[int, ...] | None:
    """The kernel tap reading the aligned input pixel (``patterns.identity_tap``)."""
    kernel = [int(k) for k in conv.kernel_size]
    dilations = [int(d) for d in conv.dilation]
    begins, ends = patterns.pad_extents(kernel, dilations, *_padding(conv))
    return patterns.identity_tap(kernel, conv.stride, dilations, begins, ends)


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().to("cpu", torch.float64).numpy()


def _rebuild(layer: nn.Module, weight: np.ndarray, bias: np.ndarray) -> nn.Module | str:
    dtype = layer.weight.dtype
    if isinstance(layer, CONV_T):  # output channels span (group, C_out/g): judge them so
        groups = int(layer.groups)
        grouped = foldmath.grouped_conv_transpose(weight, groups)
        original = foldmath.grouped_conv_transpose(_np(layer.weight), groups)
        new_w, why = _cast(grouped, dtype, original, foldmath.CONV_TRANSPOSE_AXES)
        new_w = new_w.reshape(weight.shape) if not why else new_w
    else:
        new_w, why = _cast(weight, dtype, _np(layer.weight))
    if why:
        return why
    new_b, why = _cast(bias, dtype, None)
    if why:
        return why
    new = copy.copy(layer)  # shallow: share nothing we are about to replace
    new._parameters = dict(layer._parameters)
    new._buffers = dict(layer._buffers)
    new._modules = dict(layer._modules)
    device = layer.weight.device
    grad = layer.weight.requires_grad
    new.weight = nn.Parameter(new_w.to(device), requires_grad=grad)
    new.bias = nn.Parameter(new_b.to(device), requires_grad=grad)
    return new


def _cast(
    arr: np.ndarray,
    dtype: torch.dtype,
    original: np.ndarray | None,
    axis: int | tuple[int, ...] = 0,
) -> tuple[torch.Tensor, str | None]:
    """float64 → ``dtype`` with ``foldmath.cast_back``'s refusals (numpy has no bfloat16)."""
    if dtype == torch.bfloat16:
        if float(np.max(np.abs(arr), initial=0.0)) > foldmath.BF16_MAX or not np.all(
            np.isfinite(arr)
        ):
            return torch.empty(0), "folded weights exceed the bfloat16 range"
        out = torch.from_numpy(arr).to(torch.bfloat16)
        if original is not None and original.shape == arr.shape:
            cast = out.to(torch.float64).numpy()
            why = foldmath.underflow_reason(arr, cast, "bfloat16", axis)
            if why is not None:
                return torch.empty(0), why
        return out, None
    np_dtype = torch.empty(0, dtype=dtype).numpy().dtype
    cast, why = foldmath.cast_back(arr, np_dtype, original, axis)
    if cast is None:
        return torch.empty(0), why
    # clone: numpy memory is not 64-byte aligned like torch's allocator (oneDNN runs slower)
    return torch.from_numpy(np.ascontiguousarray(cast)).clone(), None
