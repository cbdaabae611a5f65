"""Record one forward pass: every module call, which op produced each tensor, and who read it.

Forward (pre-)hooks give the module call stack; a ``TorchFunctionMode`` sees every torch
function and tensor method, so a tensor read by plain Python code in some ``forward``
(``bn(y) + y``) is seen as used outside the BN. Metadata reads (``.shape``, ``size()``) do not
count as uses. Tensors are kept alive for the whole run so their ids stay unique.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_leaves

_SHAPE_METHODS = {"size", "dim", "numel", "__len__", "ndimension", "nelement"}
_CAT = {torch.cat, torch.concat, torch.concatenate}
_SHAPE_ATTRS = {"shape", "dtype", "device", "ndim", "is_cuda", "layout", "requires_grad"}


@dataclasses.dataclass
class ModuleCall:
    """One call of one module: its positional tensor inputs and its output tensors."""

    index: int
    module: nn.Module
    args: tuple[Any, ...]
    outputs: list[torch.Tensor] = dataclasses.field(default_factory=list)

    @property
    def first_input(self) -> torch.Tensor | None:
        return self.args[0] if self.args and isinstance(self.args[0], torch.Tensor) else None


@dataclasses.dataclass
class Use:
    """A torch op that read a tensor, with the module calls active at that moment."""

    func: Any
    stack: tuple[int, ...]


@dataclasses.dataclass
class Recording:
    """Everything one forward pass revealed about data flow between module calls."""

    calls: list[ModuleCall] = dataclasses.field(default_factory=list)
    by_module: dict[int, list[ModuleCall]] = dataclasses.field(default_factory=dict)
    uses: dict[int, list[Use]] = dataclasses.field(default_factory=dict)
    produced_in: dict[int, int | None] = dataclasses.field(default_factory=dict)
    output_ids: set[int] = dataclasses.field(default_factory=set)
    cat_inputs: dict[int, tuple[list[torch.Tensor], int]] = dataclasses.field(default_factory=dict)
    functional: list[tuple[Any, tuple[Any, ...], dict[str, Any], tuple[int, ...]]] = (
        dataclasses.field(default_factory=list)
    )
    _keep: list[Any] = dataclasses.field(default_factory=list)
    _stack: list[int] = dataclasses.field(default_factory=list)

    def calls_of(self, module: nn.Module) -> list[ModuleCall]:
        return self.by_module.get(id(module), [])


class _Mode(TorchFunctionMode):
    def __init__(self, rec: Recording, watch: frozenset[Any]) -> None:
        super().__init__()
        self.rec = rec
        self.watch = watch

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        rec = self.rec
        if func in self.watch:
            rec.functional.append((func, args, kwargs, tuple(rec._stack)))
        if not _is_shape_only(func):
            stack = tuple(rec._stack)
            for t in _tensors((args, kwargs)):
                rec._keep.append(t)
                rec.uses.setdefault(id(t), []).append(Use(func, stack))
        out = func(*args, **kwargs)
        where = rec._stack[-1] if rec._stack else None
        if func in _CAT and isinstance(out, torch.Tensor):
            rec.cat_inputs[id(out)] = _cat_args(args, kwargs)
        for t in _tensors(out):
            rec._keep.append(t)
            rec.produced_in[id(t)] = where
        return out


def _cat_args(args: Any, kwargs: dict[str, Any]) -> tuple[list[torch.Tensor], int]:
    tensors = args[0] if args else kwargs.get("tensors", [])
    dim = args[1] if len(args) > 1 else kwargs.get("dim", 0)
    return list(tensors), dim if isinstance(dim, int) else -999


def _is_shape_only(func: Any) -> bool:
    name = getattr(func, "__name__", "")
    if name in _SHAPE_METHODS:
        return True
    owner = getattr(func, "__self__", None)
    return name == "__get__" and getattr(owner, "__name__", None) in _SHAPE_ATTRS


def _tensors(obj: Any) -> Iterator[torch.Tensor]:
    for leaf in tree_leaves(obj):
        if isinstance(leaf, torch.Tensor):
            yield leaf


def record(
    model: nn.Module, inputs: tuple[Any, ...], watch: frozenset[Any] = frozenset()
) -> Recording:
    """Run ``model(*inputs)`` once under no_grad and return what happened."""
    rec = Recording()
    handles = []

    def pre_hook(module: nn.Module, args: tuple[Any, ...]) -> None:
        call = ModuleCall(len(rec.calls), module, args)
        rec.calls.append(call)
        rec.by_module.setdefault(id(module), []).append(call)
        rec._stack.append(call.index)

    def hook(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        index = rec._stack.pop()
        outs = list(_tensors(output))
        rec.calls[index].outputs = outs
        rec._keep.extend(outs)

    for module in model.modules():
        handles.append(module.register_forward_pre_hook(pre_hook))
        handles.append(module.register_forward_hook(hook))
    try:
        fresh = tuple(x.clone() if isinstance(x, torch.Tensor) else x for x in inputs)
        with torch.no_grad(), _Mode(rec, watch):
            out = model(*fresh)
    finally:
        for h in handles:
            h.remove()
    rec.output_ids = {id(t) for t in _tensors(out)}
    rec._keep.append(out)
    return rec
