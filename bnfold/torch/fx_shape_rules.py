"""Shape rules of :mod:`bnfold.torch.fx_shapes`: one function per op, over dims that are
ints, :class:`Sym` (unknown but named) or ``None`` (unknown). ``Impossible`` means the
original model raises for every input of that shape; anything unmodelled returns unknown.
"""

from __future__ import annotations

import math
from typing import Any

from torch import nn

from bnfold.torch import layers
from bnfold.torch.dropout import is_dropout_like
from bnfold.torch.registry import match_batchnorm

Dims = tuple[Any, ...]  # int | Sym | None per dim
ACT_MODULE = "torch.nn.modules.activation"


class Impossible(Exception):
    """The original model raises for every input of the assumed ranks."""


class Sym:
    """An unknown dim with an identity: ``x.shape[0]`` reused in a reshape is the same size."""


def size_of(d: Any) -> int | None:
    """The dim's size when known."""
    return d if type(d) is int else None


class T:
    """A tensor of known rank; dims are ints, :class:`Sym` (unknown, named) or ``None``."""

    def __init__(self, dims: Any) -> None:
        self.dims: Dims = tuple(d if type(d) is int or isinstance(d, Sym) else None for d in dims)


class Size:
    """A ``torch.Size`` value (``x.shape``), dims as in :class:`T`."""

    def __init__(self, dims: Dims) -> None:
        self.dims = dims


def elementwise_module(m: nn.Module) -> bool:
    """Modules that keep their input's shape (activations, norms, identity, dropout)."""
    if isinstance(m, nn.Identity) or is_dropout_like(m):
        return True
    if type(m).__module__ == ACT_MODULE:
        return not isinstance(m, (nn.MultiheadAttention, nn.GLU))
    return type(m) in (nn.LayerNorm, nn.GroupNorm)


def norm_axis(dim: Any, rank: int) -> int:
    if type(dim) is not int:
        raise TypeError("axis is not a known int")
    if not -rank <= dim < max(rank, 1):
        raise Impossible(f"dim {dim} out of range for rank {rank}")
    return dim % max(rank, 1)


def index(dims: Dims, i: Any) -> int | None:
    return dims[norm_axis(i, len(dims))]


def getitem(x: Any, key: Any) -> Any:
    if isinstance(x, Size):
        if type(key) is int:
            return index(x.dims, key)
        if isinstance(key, slice):
            return Size(x.dims[key])
        return None
    if isinstance(x, (list, tuple)) and type(key) is int and -len(x) <= key < len(x):
        return x[key]
    return None


def index_tensor(dims: Dims, key: Any, integer_tensor: bool) -> T | None:
    """``x[key]`` for ints, slices, ``None`` and at most one integer-tensor index."""
    parts = list(key) if isinstance(key, tuple) else [key]
    if sum(1 for p in parts if p is Ellipsis) > 0:
        return None
    out: list[Any] = []
    axis = 0
    for p in parts:
        if p is None:
            out.append(1)
            continue
        if axis >= len(dims):
            raise Impossible("too many indices")
        if type(p) is int:
            axis += 1
        elif isinstance(p, slice):
            full = p == slice(None)
            out.append(dims[axis] if full else None)
            axis += 1
        elif isinstance(p, T) and integer_tensor:
            out.extend(p.dims)
            axis += 1
        else:
            return None
    return T((*out, *dims[axis:]))


def layer(m: nn.Module, kind: str, dims: Dims) -> T:
    if kind == "Linear":
        if not dims:
            raise Impossible("Linear on a 0-d tensor")
        if size_of(dims[-1]) is not None and dims[-1] != m.in_features:
            raise Impossible("Linear input width")
        return T((*dims[:-1], m.out_features))
    wd = m.weight.dim()
    if len(dims) not in (wd - 1, wd):
        raise Impossible(f"{kind} expects rank {wd - 1} or {wd}")
    batched = len(dims) == wd
    ch = 1 if batched else 0
    if size_of(dims[ch]) is not None and dims[ch] != layers.in_channels(m):
        raise Impossible(f"{kind} input channels")
    spatial = tuple(_spatial(m, kind, i, n) for i, n in enumerate(dims[ch + 1 :]))
    return T((*dims[:ch], layers.out_channels(m), *spatial))


def _spatial(m: nn.Module, kind: str, i: int, n: int | None) -> int | None:
    k, s, d = m.kernel_size[i], m.stride[i], m.dilation[i]
    p = 0 if m.padding == "valid" else (d * (k - 1)) // 2 if m.padding == "same" else m.padding[i]
    if kind == "Conv" and s == 1 and (m.padding == "same" or 2 * p == d * (k - 1)):
        return n  # size kept: known or named
    if size_of(n) is None:
        return None
    if kind == "ConvTranspose":
        return (n - 1) * s - 2 * p + d * (k - 1) + m.output_padding[i] + 1
    return (n + 2 * p - d * (k - 1) - 1) // s + 1


_BN_RANKS = ((nn.BatchNorm1d, (2, 3)), (nn.BatchNorm2d, (4,)), (nn.BatchNorm3d, (5,)))


def batchnorm(m: nn.Module, dims: Dims) -> T | None:
    plain = isinstance(m, nn.modules.batchnorm._BatchNorm) and not _own_forward(m)
    if plain:
        for cls, ranks in _BN_RANKS:
            if isinstance(m, cls) and len(dims) not in ranks:
                raise Impossible(f"{cls.__name__} on rank {len(dims)}")
        if len(dims) < 2:
            raise Impossible("BN on rank < 2")
        if size_of(dims[1]) is not None and dims[1] != m.num_features:
            raise Impossible("BN channels")
        return T(dims)
    match = match_batchnorm(m)
    if match is None or not match.foldable:
        return None
    return T(dims)  # its probe proved module(x) == rest(BN(x)) with x's shape kept


def _own_forward(m: nn.Module) -> bool:
    """True when a BN subclass replaces torch's forward (its rank checks may differ)."""
    return type(m).forward is not nn.modules.batchnorm._BatchNorm.forward


def flatten(dims: Dims, start: Any, end: Any) -> Dims:
    if not dims:
        return (1,)
    a, b = norm_axis(start, len(dims)), norm_axis(end, len(dims))
    if a > b:
        raise Impossible("flatten start after end")
    merged = dims[a : b + 1]
    size = math.prod(merged) if all(size_of(d) is not None for d in merged) else None
    return (*dims[:a], size, *dims[b + 1 :])


def shape_args(shape: list[Any]) -> list[Any]:
    if len(shape) == 1 and isinstance(shape[0], (list, tuple, Size)):
        return list(shape[0].dims if isinstance(shape[0], Size) else shape[0])
    return shape


def reshape(dims: Dims | None, shape: list[Any]) -> Dims:
    out = [d if type(d) is int or isinstance(d, Sym) else None for d in shape]
    if -1 in out:
        known = [d for d in out if d not in (-1, None)]
        full = dims is not None and all(size_of(d) is not None for d in dims)
        total = math.prod(dims) if full else None  # type: ignore[arg-type]
        fill = None
        if total is not None and all(size_of(d) is not None for d in out):
            fill = total // max(math.prod(known), 1)
        out = [fill if d == -1 else d for d in out]
    return tuple(out)


def permute(dims: Dims, name: str, args: list[Any]) -> Dims:
    rank = len(dims)
    if name == "transpose":
        a, b = (norm_axis(v, rank) for v in args[:2])
        perm = list(range(rank))
        perm[a], perm[b] = perm[b], perm[a]
    else:
        raw = list(args[0]) if len(args) == 1 and isinstance(args[0], (list, tuple)) else args
        perm = [norm_axis(v, rank) for v in raw]
        if sorted(perm) != list(range(rank)):
            raise Impossible("permute is not a permutation of the axes")
    return tuple(dims[p] for p in perm)


def common_prefix(src: Any, out: Any) -> int:
    """Leading dims a reshape keeps: the same int, or the same named unknown size."""
    if not isinstance(src, T) or not isinstance(out, T):
        return 0
    n = 0
    for a, b in zip(src.dims, out.dims, strict=False):
        if a is None or b is None or not (a is b or (size_of(a) is not None and a == b)):
            break
        n += 1
    return n


def split(dims: Dims, sizes: Any, dim: Any, chunks: bool = False) -> tuple[T, ...] | None:
    """``split`` (a list of sizes, or one size) and ``chunk`` (a count) along ``dim``."""
    axis = norm_axis(dim, len(dims))
    total = size_of(dims[axis])
    if type(sizes) is int and sizes > 0:
        if total is None:
            return None
        step = -(-total // sizes) if chunks else sizes
        sizes = [min(step, total - i) for i in range(0, total, step)] if step else []
    if not isinstance(sizes, (list, tuple)) or not all(type(n) is int for n in sizes):
        return None
    if size_of(dims[axis]) is not None and sum(sizes) != dims[axis]:
        raise Impossible("split sizes do not add up")
    return tuple(T((*dims[:axis], n, *dims[axis + 1 :])) for n in sizes)


def squeeze(dims: Dims, dim: Any) -> T | None:
    axes = range(len(dims)) if dim is None else [norm_axis(dim, len(dims))]
    if any(size_of(dims[a]) is None for a in axes):
        return None
    return T(d for i, d in enumerate(dims) if not (i in axes and d == 1))


def reduce(dims: Dims, dim: Any, keep: Any) -> T | None:
    if dim is None:
        return T(()) if not keep else T((1,) * len(dims))
    axes = {norm_axis(d, len(dims)) for d in (dim if isinstance(dim, (list, tuple)) else [dim])}
    if type(keep) is not bool:
        return None
    return T(1 if i in axes else d for i, d in enumerate(dims) if keep or i not in axes)


def broadcast(args: list[Any]) -> T | None:
    tensors = [a for a in args if isinstance(a, T)]
    if any(a is None or isinstance(a, Size) for a in args) or not tensors:
        return None
    if len(tensors) == 1:
        other = args[1] if args[0] is tensors[0] else args[0]
        return tensors[0] if isinstance(other, (int, float, bool)) else None
    return T(_broadcast_dims(tensors[0].dims, tensors[1].dims))


def _broadcast_dims(a: Dims, b: Dims) -> Dims:
    n = max(len(a), len(b))
    a = (1,) * (n - len(a)) + a
    b = (1,) * (n - len(b)) + b
    out: list[int | None] = []
    for x, y in zip(a, b, strict=True):
        if size_of(x) is not None and size_of(y) is not None and x != y and 1 not in (x, y):
            raise Impossible("shapes do not broadcast")
        if x == y or y == 1:
            out.append(x)
        elif x == 1:
            out.append(y)
        else:  # one is unknown, the other a size n: n if n > 1 (the unknown is 1 or n)
            known = size_of(x) if size_of(x) is not None else size_of(y)
            out.append(known if known is not None and known != 1 else None)
    return tuple(out)


def cat(tensors: Any, dim: Any) -> T | None:
    if not isinstance(tensors, (list, tuple)) or not tensors:
        return None
    if not all(isinstance(t, T) for t in tensors) or len({len(t.dims) for t in tensors}) != 1:
        return None
    rank = len(tensors[0].dims)
    axis = norm_axis(dim, rank)
    out: list[int | None] = []
    for i in range(rank):
        column = [t.dims[i] for t in tensors]
        if i == axis:
            full = all(size_of(d) is not None for d in column)
            out.append(sum(column) if full else None)
        else:
            known = {d for d in column if size_of(d) is not None}
            if len(known) > 1:
                raise Impossible("cat of mismatched shapes")
            same = all(d is column[0] for d in column)  # one named size everywhere
            out.append(known.pop() if known else column[0] if same else None)
    return T(out)


def attention(q: T, v: Any) -> T | None:
    """``scaled_dot_product_attention(q, k, v)``: q's rows, v's features."""
    if not isinstance(v, T) or len(q.dims) < 2 or len(v.dims) < 2:
        return None
    return T((*_broadcast_dims(q.dims[:-2], v.dims[:-2]), q.dims[-2], v.dims[-1]))


def matmul(a: T, b: Any) -> T | None:
    if not isinstance(b, T) or len(a.dims) < 2 or len(b.dims) < 2:
        return None
    batch = _broadcast_dims(a.dims[:-2], b.dims[:-2])
    return T((*batch, a.dims[-2], b.dims[-1]))


ADAPTIVE = (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d)
ADAPTIVE_MAX = (nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d)
POOLS = ((nn.AvgPool1d, nn.MaxPool1d), (nn.AvgPool2d, nn.MaxPool2d), (nn.AvgPool3d, nn.MaxPool3d))


def adaptive(dims: Dims, size: Any, n: int) -> T | None:
    sizes = list(size) if isinstance(size, (list, tuple)) else [size] * n
    if len(sizes) != n:
        return None
    if len(dims) not in (n + 1, n + 2):
        raise Impossible("adaptive pool rank")
    head = dims[: len(dims) - n]
    tail = tuple(s if s is not None else d for s, d in zip(sizes, dims[-n:], strict=True))
    return T(head + tail)
