"""Tensor shapes an fx graph proves without example inputs (dims known or ``None``).

Module attributes fix some dims (a Linear's output ends in ``out_features``, a Conv's channel
axis holds ``out_channels``); layout ops move them (``flatten(0, 1)`` of a (B, N, C) tensor
keeps C last); integer arguments built from ``x.shape`` carry over. The rank of each input is
unknown, so every rank from 1 to 6 is tried: a rank the model cannot accept (a BatchNorm2d
fed a 3-D tensor, a Linear whose known input width is wrong, a transpose out of range) is
ruled out, and a node's shape is *proven* when every remaining rank gives the same one.

Rules are sound, not complete: an op not modelled here yields "unknown", which proves nothing
downstream and never rules a rank out. Only definite contradictions rule ranks out.
"""

from __future__ import annotations

import itertools
import logging
import math
import operator
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from bnfold.torch import layers
from bnfold.torch.dropout import is_dropout_like
from bnfold.torch.fx_graph import CAT, op_name
from bnfold.torch.registry import is_batchnorm_like, match_batchnorm

logger = logging.getLogger(__name__)

Dims = tuple[Any, ...]  # int | Sym | None per dim
StaticShapes = dict[fx.Node, set[tuple[int | None, ...] | None]]
RANKS = range(1, 7)
PREFIX_KEY = "bnfold_reshape_prefix"
MAX_INPUTS = 2  # more tensor inputs: too many rank combinations, nothing is proven


class Impossible(Exception):
    """The original model raises for every input of the assumed ranks."""


class Sym:
    """An unknown dim with an identity: ``x.shape[0]`` reused in a reshape is the same size."""


def _k(d: Any) -> int | None:
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


def static_shapes(gm: fx.GraphModule) -> StaticShapes:
    """Per node, the set of shapes over every input rank the graph accepts (``None``: unknown).

    Reshape/view nodes also get ``node.meta[PREFIX_KEY]``: how many leading dims they keep
    (the same sizes, known or named), so the channel axis inside that prefix maps to itself.
    """
    for node in gm.graph.nodes:
        node.meta.pop(PREFIX_KEY, None)
    inputs = [n for n in gm.graph.nodes if n.op == "placeholder" and not n.args]
    if not inputs or len(inputs) > MAX_INPUTS:
        return {}
    out: StaticShapes = {}
    accepted = 0
    for ranks in itertools.product(RANKS, repeat=len(inputs)):
        try:
            env = _Propagator(gm, dict(zip(inputs, ranks, strict=True))).run()
        except Impossible:
            continue
        except Exception as exc:  # a rule bug must not prove anything
            logger.debug("static shapes failed: %s", exc)
            return {}
        accepted += 1
        for node, value in env.items():
            shape = tuple(_k(d) for d in value.dims) if isinstance(value, T) else None
            out.setdefault(node, set()).add(shape)
            if node.op in ("call_method", "call_function") and op_name(node) in ("reshape", "view"):
                src = env.get(node.args[0]) if isinstance(node.args[0], fx.Node) else None
                keep = _common_prefix(src, value)
                node.meta[PREFIX_KEY] = min(node.meta.get(PREFIX_KEY, keep), keep)
    return out if accepted else {}


_ELEMENTWISE_FUNCS: set[Any] = {
    torch.relu, F.relu, F.relu6, F.gelu, F.silu, F.hardswish, F.hardsigmoid, F.sigmoid,
    torch.sigmoid, torch.tanh, F.tanh, F.leaky_relu, F.elu, F.mish, F.softmax, torch.softmax,
    F.log_softmax, torch.exp, torch.abs, torch.neg, torch.clamp, torch.clip, F.hardtanh,
    torch.sqrt, torch.rsqrt, F.dropout, F.gelu, torch.erf, F.softplus,
}  # fmt: skip
_ELEMENTWISE_METHODS = {
    "relu", "sigmoid", "tanh", "softmax", "exp", "neg", "abs", "clamp", "clip", "sqrt",
    "contiguous", "clone", "detach", "float", "half", "to", "type_as", "relu_", "sigmoid_",
    "mul_", "clamp_", "rsqrt", "erf",
}  # fmt: skip
_BINARY: set[Any] = {
    operator.add, operator.sub, operator.mul, operator.truediv, operator.iadd, operator.isub,
    operator.imul, operator.itruediv, torch.add, torch.sub, torch.mul, torch.div,
    torch.maximum, torch.minimum,
}  # fmt: skip
_BINARY_METHODS = {"add", "sub", "mul", "div", "add_", "sub_", "div_", "maximum", "minimum"}
_INT_OPS: dict[Any, Callable[[int, int], int]] = {
    operator.add: operator.add,
    operator.sub: operator.sub,
    operator.mul: operator.mul,
    operator.floordiv: operator.floordiv,
}
_REDUCE = {"mean", "sum", "amax", "amin"}
_ACT_MODULE = "torch.nn.modules.activation"


class _Propagator:
    def __init__(self, gm: fx.GraphModule, ranks: dict[fx.Node, int]) -> None:
        self.gm = gm
        self.ranks = ranks
        self.env: dict[fx.Node, Any] = {}

    def run(self) -> dict[fx.Node, Any]:
        for node in self.gm.graph.nodes:
            if node.op == "output":
                continue
            try:
                self.env[node] = self.eval(node)
            except Impossible:
                raise
            except Exception:  # an odd argument: the value is unknown, nothing is ruled out
                self.env[node] = None
        return self.env

    def value(self, arg: Any) -> Any:
        if isinstance(arg, fx.Node):
            return self.env.get(arg)
        if isinstance(arg, (list, tuple)):
            return type(arg)(self.value(a) for a in arg)
        return arg

    def eval(self, node: fx.Node) -> Any:
        if node.op == "placeholder":
            if node in self.ranks:
                return T([Sym() for _ in range(self.ranks[node])])
            return node.args[0] if node.args else None
        if node.op == "get_attr":
            attr = _attr(self.gm, str(node.target))
            return T(attr.shape) if isinstance(attr, torch.Tensor) else attr
        args = [self.value(a) for a in node.args]
        kwargs = {k: self.value(v) for k, v in node.kwargs.items()}
        if node.op == "call_module":
            return self.module(self.gm.get_submodule(str(node.target)), args)
        return self.function(node, op_name(node), args, kwargs)

    # -- modules ----------------------------------------------------------------------
    def module(self, m: nn.Module, args: list[Any]) -> Any:
        x = args[0] if args else None
        if not isinstance(x, T) or len(args) != 1 or getattr(m, "return_indices", False):
            return None
        kind = layers.layer_kind(m)
        if kind is not None:
            return None if layers.overrides_forward(m) else _layer(m, kind, x.dims)
        if is_batchnorm_like(m):
            return _batchnorm(m, x.dims)
        if _elementwise_module(m):
            return x
        if type(m) is nn.Flatten:
            return T(_flatten(x.dims, m.start_dim, m.end_dim))
        for n, cls in enumerate(_ADAPTIVE, start=1):
            if type(m) is cls or type(m) is _ADAPTIVE_MAX[n - 1]:
                return _adaptive(x.dims, m.output_size, n)
        for n, classes in enumerate(_POOLS, start=1):
            if type(m) in classes:
                if len(x.dims) not in (n + 1, n + 2):
                    raise Impossible("pooling rank")
                return T((*x.dims[:-n], *(None,) * n))
        return None

    # -- functions and methods --------------------------------------------------------
    def function(self, node: fx.Node, name: str, args: list[Any], kwargs: dict[str, Any]) -> Any:
        target = node.target
        x = args[0] if args else None
        if target is getattr and isinstance(x, T):
            return (
                Size(x.dims) if args[1] == "shape" else len(x.dims) if args[1] == "ndim" else None
            )
        if target is operator.getitem:
            return _getitem(x, args[1])
        if node.op == "call_method" and isinstance(x, T):
            if name == "size":
                return Size(x.dims) if len(args) == 1 else _index(x.dims, args[1])
            if name == "dim":
                return len(x.dims)
        if target in _INT_OPS and all(type(a) is int for a in args):
            return _INT_OPS[target](*args)
        if target in _BINARY or (node.op == "call_method" and name in _BINARY_METHODS):
            return _broadcast(args[:2]) if len(args) >= 2 else None
        if name in ("reshape", "view") and len(args) > 1:
            return T(_reshape(x.dims if isinstance(x, T) else None, _shape_args(args[1:])))
        if not isinstance(x, T):
            return None
        if target in _ELEMENTWISE_FUNCS or (
            node.op == "call_method" and name in _ELEMENTWISE_METHODS
        ):
            return x
        return self.shaped(node, name, x, args, kwargs)

    def shaped(
        self, node: fx.Node, name: str, x: T, args: list[Any], kwargs: dict[str, Any]
    ) -> Any:
        dims = x.dims
        if node.op == "call_function" and node.target in CAT:
            return _cat(args[0], args[1] if len(args) > 1 else kwargs.get("dim", 0))
        if name == "flatten":
            start = args[1] if len(args) > 1 else kwargs.get("start_dim", 0)
            end = args[2] if len(args) > 2 else kwargs.get("end_dim", -1)
            return T(_flatten(dims, start, end))
        if name == "split":
            return _split(dims, args[1], args[2] if len(args) > 2 else kwargs.get("dim", 0))
        if name in ("reshape_as", "view_as", "expand_as"):
            other = args[1] if len(args) > 1 else None
            return other if isinstance(other, T) else None
        if name in ("transpose", "permute"):
            return T(_permute(dims, name, args[1:]))
        if name == "squeeze":
            return _squeeze(dims, args[1] if len(args) > 1 else kwargs.get("dim"))
        if name == "unsqueeze":
            at = _axis(args[1] if len(args) > 1 else kwargs.get("dim"), len(dims) + 1)
            return T((*dims[:at], 1, *dims[at:]))
        if name in _REDUCE:
            dim = args[1] if len(args) > 1 else kwargs.get("dim")
            keep = args[2] if len(args) > 2 else kwargs.get("keepdim", False)
            return _reduce(dims, dim, keep)
        if name == "matmul" or node.target in (operator.matmul, torch.matmul):
            return _matmul(x, args[1] if len(args) > 1 else None)
        return None


def _attr(gm: fx.GraphModule, target: str) -> Any:
    obj: Any = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def _elementwise_module(m: nn.Module) -> bool:
    if isinstance(m, nn.Identity) or is_dropout_like(m):
        return True
    if type(m).__module__ == _ACT_MODULE:
        return not isinstance(m, (nn.MultiheadAttention, nn.GLU))
    return type(m) in (nn.LayerNorm, nn.GroupNorm)


def _axis(dim: Any, rank: int) -> int:
    if type(dim) is not int:
        raise TypeError("axis is not a known int")
    if not -rank <= dim < max(rank, 1):
        raise Impossible(f"dim {dim} out of range for rank {rank}")
    return dim % max(rank, 1)


def _index(dims: Dims, i: Any) -> int | None:
    return dims[_axis(i, len(dims))]


def _getitem(x: Any, key: Any) -> Any:
    if isinstance(x, Size):
        if type(key) is int:
            return _index(x.dims, key)
        if isinstance(key, slice):
            return Size(x.dims[key])
        return None
    if isinstance(x, (list, tuple)) and type(key) is int and -len(x) <= key < len(x):
        return x[key]
    return None


def _layer(m: nn.Module, kind: str, dims: Dims) -> T:
    if kind == "Linear":
        if not dims:
            raise Impossible("Linear on a 0-d tensor")
        if _k(dims[-1]) is not None and dims[-1] != m.in_features:
            raise Impossible("Linear input width")
        return T((*dims[:-1], m.out_features))
    wd = m.weight.dim()
    if len(dims) not in (wd - 1, wd):
        raise Impossible(f"{kind} expects rank {wd - 1} or {wd}")
    batched = len(dims) == wd
    ch = 1 if batched else 0
    if _k(dims[ch]) is not None and dims[ch] != layers.in_channels(m):
        raise Impossible(f"{kind} input channels")
    spatial = tuple(_spatial(m, kind, i, n) for i, n in enumerate(dims[ch + 1 :]))
    return T((*dims[:ch], layers.out_channels(m), *spatial))


def _spatial(m: nn.Module, kind: str, i: int, n: int | None) -> int | None:
    k, s, d = m.kernel_size[i], m.stride[i], m.dilation[i]
    p = 0 if m.padding == "valid" else (d * (k - 1)) // 2 if m.padding == "same" else m.padding[i]
    if kind == "Conv" and s == 1 and (m.padding == "same" or 2 * p == d * (k - 1)):
        return n  # size kept: known or named
    if _k(n) is None:
        return None
    if kind == "ConvTranspose":
        return (n - 1) * s - 2 * p + d * (k - 1) + m.output_padding[i] + 1
    return (n + 2 * p - d * (k - 1) - 1) // s + 1


_BN_RANKS = ((nn.BatchNorm1d, (2, 3)), (nn.BatchNorm2d, (4,)), (nn.BatchNorm3d, (5,)))


def _batchnorm(m: nn.Module, dims: Dims) -> T | None:
    plain = isinstance(m, nn.modules.batchnorm._BatchNorm) and not _own_forward(m)
    if plain:
        for cls, ranks in _BN_RANKS:
            if isinstance(m, cls) and len(dims) not in ranks:
                raise Impossible(f"{cls.__name__} on rank {len(dims)}")
        if len(dims) < 2:
            raise Impossible("BN on rank < 2")
        if _k(dims[1]) is not None and dims[1] != m.num_features:
            raise Impossible("BN channels")
        return T(dims)
    match = match_batchnorm(m)
    if match is None or not match.foldable:
        return None
    rest = match.remainder
    if rest is None or all(
        _elementwise_module(c) for c in rest.modules() if not list(c.children())
    ):
        return T(dims)
    return None


def _own_forward(m: nn.Module) -> bool:
    """True when a BN subclass replaces torch's forward (its rank checks may differ)."""
    return type(m).forward is not nn.modules.batchnorm._BatchNorm.forward


def _flatten(dims: Dims, start: Any, end: Any) -> Dims:
    if not dims:
        return (1,)
    a, b = _axis(start, len(dims)), _axis(end, len(dims))
    if a > b:
        raise Impossible("flatten start after end")
    merged = dims[a : b + 1]
    size = math.prod(merged) if all(_k(d) is not None for d in merged) else None
    return (*dims[:a], size, *dims[b + 1 :])


def _shape_args(shape: list[Any]) -> list[Any]:
    if len(shape) == 1 and isinstance(shape[0], (list, tuple, Size)):
        return list(shape[0].dims if isinstance(shape[0], Size) else shape[0])
    return shape


def _reshape(dims: Dims | None, shape: list[Any]) -> Dims:
    out = [d if type(d) is int or isinstance(d, Sym) else None for d in shape]
    if -1 in out:
        known = [d for d in out if d not in (-1, None)]
        full = dims is not None and all(_k(d) is not None for d in dims)
        total = math.prod(dims) if full else None  # type: ignore[arg-type]
        fill = None
        if total is not None and all(_k(d) is not None for d in out):
            fill = total // max(math.prod(known), 1)
        out = [fill if d == -1 else d for d in out]
    return tuple(out)


def _permute(dims: Dims, name: str, args: list[Any]) -> Dims:
    rank = len(dims)
    if name == "transpose":
        a, b = (_axis(v, rank) for v in args[:2])
        perm = list(range(rank))
        perm[a], perm[b] = perm[b], perm[a]
    else:
        raw = list(args[0]) if len(args) == 1 and isinstance(args[0], (list, tuple)) else args
        perm = [_axis(v, rank) for v in raw]
        if sorted(perm) != list(range(rank)):
            raise Impossible("permute is not a permutation of the axes")
    return tuple(dims[p] for p in perm)


def _common_prefix(src: Any, out: Any) -> int:
    """Leading dims a reshape keeps: the same int, or the same named unknown size."""
    if not isinstance(src, T) or not isinstance(out, T):
        return 0
    n = 0
    for a, b in zip(src.dims, out.dims, strict=False):
        if a is None or b is None or not (a is b or (_k(a) is not None and a == b)):
            break
        n += 1
    return n


def _split(dims: Dims, sizes: Any, dim: Any) -> tuple[T, ...] | None:
    axis = _axis(dim, len(dims))
    if not isinstance(sizes, (list, tuple)) or not all(type(n) is int for n in sizes):
        return None
    if _k(dims[axis]) is not None and sum(sizes) != dims[axis]:
        raise Impossible("split sizes do not add up")
    return tuple(T((*dims[:axis], n, *dims[axis + 1 :])) for n in sizes)


def _squeeze(dims: Dims, dim: Any) -> T | None:
    axes = range(len(dims)) if dim is None else [_axis(dim, len(dims))]
    if any(_k(dims[a]) is None for a in axes):
        return None
    return T(d for i, d in enumerate(dims) if not (i in axes and d == 1))


def _reduce(dims: Dims, dim: Any, keep: Any) -> T | None:
    if dim is None:
        return T(()) if not keep else T((1,) * len(dims))
    axes = {_axis(d, len(dims)) for d in (dim if isinstance(dim, (list, tuple)) else [dim])}
    if type(keep) is not bool:
        return None
    return T(1 if i in axes else d for i, d in enumerate(dims) if keep or i not in axes)


def _broadcast(args: list[Any]) -> T | None:
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
        if _k(x) is not None and _k(y) is not None and x != y and 1 not in (x, y):
            raise Impossible("shapes do not broadcast")
        if x == y or y == 1:
            out.append(x)
        elif x == 1:
            out.append(y)
        else:  # one is unknown, the other a size n: n if n > 1 (the unknown is 1 or n)
            known = _k(x) if _k(x) is not None else _k(y)
            out.append(known if known is not None and known != 1 else None)
    return tuple(out)


def _cat(tensors: Any, dim: Any) -> T | None:
    if not isinstance(tensors, (list, tuple)) or not tensors:
        return None
    if not all(isinstance(t, T) for t in tensors) or len({len(t.dims) for t in tensors}) != 1:
        return None
    rank = len(tensors[0].dims)
    axis = _axis(dim, rank)
    out: list[int | None] = []
    for i in range(rank):
        column = [t.dims[i] for t in tensors]
        if i == axis:
            full = all(_k(d) is not None for d in column)
            out.append(sum(column) if full else None)
        else:
            known = {d for d in column if _k(d) is not None}
            if len(known) > 1:
                raise Impossible("cat of mismatched shapes")
            out.append(known.pop() if known else None)
    return T(out)


def _matmul(a: T, b: Any) -> T | None:
    if not isinstance(b, T) or len(a.dims) < 2 or len(b.dims) < 2:
        return None
    batch = _broadcast_dims(a.dims[:-2], b.dims[:-2])
    return T((*batch, a.dims[-2], b.dims[-1]))


_ADAPTIVE = (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d)
_ADAPTIVE_MAX = (nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d)
_POOLS = ((nn.AvgPool1d, nn.MaxPool1d), (nn.AvgPool2d, nn.MaxPool2d), (nn.AvgPool3d, nn.MaxPool3d))


def _adaptive(dims: Dims, size: Any, n: int) -> T | None:
    sizes = list(size) if isinstance(size, (list, tuple)) else [size] * n
    if len(sizes) != n:
        return None
    if len(dims) not in (n + 1, n + 2):
        raise Impossible("adaptive pool rank")
    head = dims[: len(dims) - n]
    tail = tuple(s if s is not None else d for s, d in zip(sizes, dims[-n:], strict=True))
    return T(head + tail)
