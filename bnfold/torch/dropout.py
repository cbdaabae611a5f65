"""Remove inference-time Dropout: Dropout modules (every variant) and functional dropout calls.

Modules: instances of ``nn.modules.dropout._DropoutNd`` (Dropout, Dropout1d/2d/3d, AlphaDropout,
FeatureAlphaDropout) and registered classes are replaced by ``nn.Identity``; parameter-free
modules whose class name mentions dropout or drop-path are removed only when a probe shows they
are the identity in eval mode. Functional calls (``F.dropout`` & co.) are removed from fx graphs
when their ``training`` argument is False; with ``training=True`` (``F.dropout``'s default!)
they are active at inference and stay, with a reason.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from bnfold.keep import KEPT_REASON, KeepList
from bnfold.report import ReportEntry
from bnfold.torch.keep import is_kept

_DROPOUT_CLASSES: set[type[nn.Module]] = {nn.modules.dropout._DropoutNd}
_NAME_HINTS = ("dropout", "droppath", "drop_path", "stochasticdepth", "dropblock")

FUNCTIONAL_DROPOUT: dict[Any, str] = {
    F.dropout: "training",
    F.dropout1d: "training",
    F.dropout2d: "training",
    F.dropout3d: "training",
    F.alpha_dropout: "training",
    F.feature_alpha_dropout: "training",
    torch.dropout: "train",
    torch.alpha_dropout: "train",
    torch.feature_dropout: "train",
    torch.feature_alpha_dropout: "train",
}


def register_dropout(cls: type[nn.Module]) -> None:
    """Declare ``cls`` a dropout-like module that is the identity in eval mode."""
    _DROPOUT_CLASSES.add(cls)


def dropout_kind(module: nn.Module) -> str:
    """Report kind for a dropout-like module (always contains 'Dropout')."""
    name = type(module).__name__
    return name if "dropout" in name.lower() else f"Dropout:{name}"


def is_dropout_like(module: nn.Module) -> bool:
    """Registered dropout class, or a parameter-free module whose name says dropout/drop-path."""
    if isinstance(module, tuple(_DROPOUT_CLASSES)):
        return True
    name = type(module).__name__.lower()
    return any(h in name for h in _NAME_HINTS) and next(module.parameters(), None) is None


def _trusted(module: nn.Module) -> bool:
    """A registered class whose forward is torch's own (or the registered class's)."""
    if not isinstance(module, tuple(_DROPOUT_CLASSES)):
        return False
    owner = next(k for k in type(module).__mro__ if "forward" in k.__dict__)
    return owner in _DROPOUT_CLASSES or owner.__module__ == "torch.nn.modules.dropout"


def removal_reason(module: nn.Module) -> str | None:
    """None when ``module`` is the identity at inference, else why it must stay."""
    if is_kept(module):
        return KEPT_REASON
    if module.training:
        return "module is in training mode"
    if _trusted(module):
        return None
    gen = torch.Generator().manual_seed(0)
    for shape in ((2, 4, 3, 3), (3, 5), (2, 4, 5), (2, 3, 2, 3, 3)):
        x = torch.randn(shape, generator=gen)
        try:
            with torch.no_grad():
                y = module(x)
        except Exception:
            continue
        if isinstance(y, torch.Tensor) and torch.equal(y, x):
            return None
        return "changes its input in eval mode (active at inference)"
    return "could not be probed on any input"


def strip_dropout_modules(model: nn.Module, entries: list[ReportEntry]) -> nn.Module:
    """Replace every removable dropout-like module by ``nn.Identity`` (in place on ``model``)."""
    seen: dict[int, str | None] = {}
    for path, module in list(model.named_modules(remove_duplicate=False)):
        if not path or not is_dropout_like(module):
            continue
        if id(module) not in seen:
            seen[id(module)] = removal_reason(module)
            reason = seen[id(module)]
            status = "left" if reason else "removed"
            pattern = None if reason else "Dropout→identity"
            entries.append(
                ReportEntry(path, dropout_kind(module), status, pattern=pattern, reason=reason)
            )
        if seen[id(module)] is None:
            _set_submodule(model, path, nn.Identity())
    if is_dropout_like(model) and removal_reason(model) is None:
        entries.append(ReportEntry("", dropout_kind(model), "removed", pattern="Dropout→identity"))
        return nn.Identity()
    return model


def _set_submodule(root: nn.Module, path: str, new: nn.Module) -> None:
    parent_path, _, name = path.rpartition(".")
    parent = root.get_submodule(parent_path) if parent_path else root
    setattr(parent, name, new)


def remove_functional_dropout(
    gm: fx.GraphModule, scope: str, entries: list[ReportEntry], keep: KeepList | None = None
) -> bool:
    """Drop ``F.dropout``-style nodes whose ``training`` argument is False; report the rest.

    Calls that ``keep`` names (by fx node name, or all with ``keep_dropout``) stay.
    """
    changed = False
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or node.target not in FUNCTIONAL_DROPOUT:
            continue
        name = f"{scope}.{node.name}" if scope else node.name
        kind = f"F.{getattr(node.target, '__name__', 'dropout')}"
        if keep and keep.keeps([name, node.name], is_dropout=True):
            entries.append(ReportEntry(name, kind, "kept", reason=KEPT_REASON, scope=scope))
            continue
        training = _training_arg(node)
        if training is False:
            node.replace_all_uses_with(node.args[0] if node.args else node.kwargs["input"])
            gm.graph.erase_node(node)
            entries.append(
                ReportEntry(name, kind, "removed", pattern="Dropout→identity", scope=scope)
            )
            changed = True
        else:
            why = "training=True (the default of F.dropout): active at inference"
            if training is not True:
                why = "its training flag is computed at run time"
            entries.append(ReportEntry(name, kind, "left", reason=why, scope=scope))
    return changed


def _training_arg(node: fx.Node) -> Any:
    return functional_training_flag(node.target, node.args, node.kwargs)


def functional_training_flag(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """The ``training`` flag of a functional dropout call: True/False, or None when unknown."""
    key = FUNCTIONAL_DROPOUT[func]
    if key == "train":  # torch.dropout(input, p, train): a builtin without a signature
        value = args[2] if len(args) > 2 else kwargs.get("train")
        return value if isinstance(value, bool) else None
    try:
        bound = inspect.signature(func).bind(*args, **kwargs)
    except (TypeError, ValueError):
        return None
    bound.apply_defaults()
    value = bound.arguments.get(key)
    return value if isinstance(value, bool) else None


def remove_identity_nodes(gm: fx.GraphModule) -> bool:
    """Bypass ``nn.Identity`` module calls and no-op ``contiguous`` in an fx graph."""
    changed = False
    for node in list(gm.graph.nodes):
        is_identity = node.op == "call_module" and isinstance(_module(gm, node.target), nn.Identity)
        if is_identity and len(node.args) == 1 and not node.kwargs:
            node.replace_all_uses_with(node.args[0])
            gm.graph.erase_node(node)
            changed = True
    return changed


def _module(gm: fx.GraphModule, target: Any) -> nn.Module | None:
    try:
        return gm.get_submodule(target)
    except AttributeError:
        return None
