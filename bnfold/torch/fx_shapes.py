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
import operator
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from bnfold.torch import layers
from bnfold.torch.fx_graph import CAT, op_name
from bnfold.torch.fx_shape_rules import (
    ADAPTIVE,
    ADAPTIVE_MAX,
    POOLS,
    Impossible,
    Size,
    Sym,
    T,
    adaptive,
    attention,
    batchnorm,
    broadcast,
    cat,
    common_prefix,
    elementwise_module,
    flatten,
    getitem,
    index,
    index_tensor,
    layer,
    matmul,
    norm_axis,
    permute,
    reduce,
    reshape,
    shape_args,
    size_of,
    split,
    squeeze,
)
from bnfold.torch.registry import is_batchnorm_like

logger = logging.getLogger(__name__)

StaticShapes = dict[fx.Node, set[tuple[int | None, ...] | None]]
RANKS = range(1, 7)
PREFIX_KEY = "bnfold_reshape_prefix"
MAX_INPUTS = 2  # more tensor inputs: too many rank combinations, nothing is proven


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
            shape = tuple(size_of(d) for d in value.dims) if isinstance(value, T) else None
            out.setdefault(node, set()).add(shape)
            if node.op in ("call_method", "call_function") and op_name(node) in ("reshape", "view"):
                src = env.get(node.args[0]) if isinstance(node.args[0], fx.Node) else None
                keep = common_prefix(src, value)
                node.meta[PREFIX_KEY] = min(node.meta.get(PREFIX_KEY, keep), keep)
    return out if accepted else {}


_ELEMENTWISE_FUNCS: set[Any] = {
    torch.relu, F.relu, F.relu6, F.gelu, F.silu, F.hardswish, F.hardsigmoid, F.sigmoid,
    torch.sigmoid, torch.tanh, F.tanh, F.leaky_relu, F.elu, F.mish, F.softmax, torch.softmax,
    F.log_softmax, torch.exp, torch.abs, torch.neg, torch.clamp, torch.clip, F.hardtanh,
    torch.sqrt, torch.rsqrt, F.dropout, F.gelu, torch.erf, F.softplus, F.layer_norm,
    F.group_norm, F.normalize,
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
            return None if layers.overrides_forward(m) else layer(m, kind, x.dims)
        if is_batchnorm_like(m):
            return batchnorm(m, x.dims)
        if elementwise_module(m):
            return x
        if type(m) is nn.Flatten:
            return T(flatten(x.dims, m.start_dim, m.end_dim))
        for n, cls in enumerate(ADAPTIVE, start=1):
            if type(m) is cls or type(m) is ADAPTIVE_MAX[n - 1]:
                return adaptive(x.dims, m.output_size, n)
        if type(m) is nn.Upsample:
            if not 3 <= len(x.dims) <= 5:
                raise Impossible("Upsample rank")
            return T((*x.dims[:2], *(None,) * (len(x.dims) - 2)))
        for n, classes in enumerate(POOLS, start=1):
            if type(m) in classes:
                if len(x.dims) not in (n + 1, n + 2):
                    raise Impossible("pooling rank")
                return T((*x.dims[:-n], *(None,) * n))
        return None

    def _integer_index(self, key: Any) -> bool:
        """True when the key's only tensor is an integer buffer (not a boolean mask)."""
        parts = key if isinstance(key, (list, tuple)) else (key,)
        nodes = [p for p in parts if isinstance(p, fx.Node)]
        if len(nodes) != 1 or nodes[0].op != "get_attr":
            return False
        attr = _attr(self.gm, str(nodes[0].target))
        return (
            isinstance(attr, torch.Tensor)
            and not attr.is_floating_point()
            and (attr.dtype != torch.bool)
        )

    # -- functions and methods --------------------------------------------------------
    def function(self, node: fx.Node, name: str, args: list[Any], kwargs: dict[str, Any]) -> Any:
        target = node.target
        x = args[0] if args else None
        if target is getattr and isinstance(x, T):
            return (
                Size(x.dims) if args[1] == "shape" else len(x.dims) if args[1] == "ndim" else None
            )
        if target is operator.getitem:
            if isinstance(x, T):
                return index_tensor(x.dims, args[1], self._integer_index(node.args[1]))
            return getitem(x, args[1])
        if node.op == "call_method" and isinstance(x, T):
            if name == "size":
                return Size(x.dims) if len(args) == 1 else index(x.dims, args[1])
            if name == "dim":
                return len(x.dims)
        if target in _INT_OPS and all(type(a) is int for a in args):
            return _INT_OPS[target](*args)
        if target is operator.add and isinstance(x, Size) and len(args) == 2:
            tail = args[1].dims if isinstance(args[1], Size) else args[1]
            return Size((*x.dims, *tail)) if isinstance(tail, (tuple, list)) else None
        if target in _BINARY or (node.op == "call_method" and name in _BINARY_METHODS):
            return broadcast(args[:2]) if len(args) >= 2 else None
        if node.op == "call_function" and node.target in CAT:
            tensors = args[0] if args else kwargs.get("tensors")
            return cat(tensors, args[1] if len(args) > 1 else kwargs.get("dim", 0))
        if name in ("reshape", "view") and len(args) > 1:
            return T(reshape(x.dims if isinstance(x, T) else None, shape_args(args[1:])))
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
        if name == "flatten":
            start = args[1] if len(args) > 1 else kwargs.get("start_dim", 0)
            end = args[2] if len(args) > 2 else kwargs.get("end_dim", -1)
            return T(flatten(dims, start, end))
        if name in ("split", "chunk"):
            dim = args[2] if len(args) > 2 else kwargs.get("dim", 0)
            return split(dims, args[1], dim, chunks=name == "chunk")
        if name in ("reshape_as", "view_as", "expand_as"):
            other = args[1] if len(args) > 1 else None
            return other if isinstance(other, T) else None
        if name in ("transpose", "permute"):
            return T(permute(dims, name, args[1:]))
        if name == "squeeze":
            return squeeze(dims, args[1] if len(args) > 1 else kwargs.get("dim"))
        if name == "unsqueeze":
            at = norm_axis(args[1] if len(args) > 1 else kwargs.get("dim"), len(dims) + 1)
            return T((*dims[:at], 1, *dims[at:]))
        if name in _REDUCE:
            dim = args[1] if len(args) > 1 else kwargs.get("dim")
            keep = args[2] if len(args) > 2 else kwargs.get("keepdim", False)
            return reduce(dims, dim, keep)
        if name == "matmul" or node.target in (operator.matmul, torch.matmul):
            return matmul(x, args[1] if len(args) > 1 else None)
        if node.target is F.scaled_dot_product_attention and len(args) >= 3:
            return attention(x, args[2])
        return None


def _attr(gm: fx.GraphModule, target: str) -> Any:
    obj: Any = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj
