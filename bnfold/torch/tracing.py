"""torch.fx tracing with BN/Dropout/linear layers as leaves, and the fallback to submodules.

When the whole model cannot be traced (data-dependent Python in ``forward``), the largest
traceable submodules become *regions*; what is left between them is handled by adjacency.
Regions are validated by running them (each region's graph replaces its module and the whole
model must reproduce the reference outputs), which also records every node's tensor shapes.
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
import typing
from collections.abc import Callable
from typing import Any

import torch
from torch import fx, nn

from bnfold.torch.dropout import is_dropout_like
from bnfold.torch.layers import PRODUCERS
from bnfold.torch.registry import is_batchnorm_like

logger = logging.getLogger(__name__)

Shapes = dict[fx.Node, set[tuple[int, ...]]]


class FoldTracer(fx.Tracer):
    """fx tracer that keeps BN-like, dropout-like and Conv/Linear modules as single calls."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if isinstance(m, PRODUCERS) or is_batchnorm_like(m) or is_dropout_like(m):
            return True
        return super().is_leaf_module(m, module_qualified_name)


def trace(module: nn.Module) -> fx.GraphModule | str:
    """An fx GraphModule for ``module``, or why it cannot be traced."""
    tracer = FoldTracer()
    try:
        graph = tracer.trace(module)
    except Exception as exc:  # fx raises many types (TraceError, TypeError, NotImplementedError…)
        return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:200]
    _resolve_annotations(graph, module)
    gm = fx.GraphModule(tracer.root, graph, type(module).__name__)
    _copy_plain_attributes(module, gm)
    return gm


def _copy_plain_attributes(module: nn.Module, gm: fx.GraphModule) -> None:
    """Keep public non-tensor attributes (``num_classes``, ``stride``…) readable on the graph."""
    for key, value in vars(module).items():
        if key.startswith("_") or key == "training" or hasattr(gm, key):
            continue
        if isinstance(value, (nn.Module, torch.Tensor)):
            continue
        try:
            setattr(gm, key, value)
        except (AttributeError, TypeError):  # read-only property on GraphModule
            continue


def _hooked_inner_module(module: nn.Module, tracer: FoldTracer) -> str | None:
    """A module fx would trace through (not call) that has forward hooks, if any."""
    leaves: list[str] = []
    for name, sub in module.named_modules():
        if any(name.startswith(leaf + ".") for leaf in leaves):
            continue  # inside a module fx calls as a whole: its hooks run
        if name and tracer.is_leaf_module(sub, name):
            leaves.append(name)
            continue
        if sub._forward_hooks or sub._forward_pre_hooks:
            return name or "<self>"
    return None


def _resolve_annotations(graph: fx.Graph, module: nn.Module) -> None:
    """Turn string annotations (``from __future__ import annotations``) into real types.

    fx would print them as unknown names, which breaks ``torch.jit.script`` of the result.
    """
    try:
        hints = typing.get_type_hints(type(module).forward)
    except Exception:  # unresolvable names: drop the annotations instead
        hints = {}
    for node in graph.nodes:
        if not isinstance(node.type, str):
            continue
        key = "return" if node.op == "output" else node.target
        node.type = hints.get(key) if node.op in ("placeholder", "output") else None


@dataclasses.dataclass
class Region:
    """A traceable submodule: its path in the model, the original module and its graph."""

    path: str
    original: nn.Module
    gm: fx.GraphModule
    shapes: Shapes = dataclasses.field(default_factory=dict)
    calls: int = 0


def find_regions(
    model: nn.Module, *, skip_root: bool = False, prefix: str = ""
) -> tuple[list[Region], dict[str, str]]:
    """Largest traceable submodules (the root first); returns (regions, {path: trace error}).

    ``skip_root`` searches only below ``model``; ``prefix`` is ``model``'s own path.
    """
    regions: list[Region] = []
    failures: dict[str, str] = {}
    tracer = FoldTracer()

    def visit(path: str, module: nn.Module) -> None:
        if not any(True for _ in module.children()) or tracer.is_leaf_module(module, path):
            return
        hooked = _hooked_inner_module(module, tracer)
        result = trace(module) if hooked is None else f"forward hooks on '{hooked}' (fx drops them)"
        if isinstance(result, fx.GraphModule):
            regions.append(Region(path, module, result))
            return
        failures[path or "<root>"] = result
        for name, child in module.named_children():
            visit(f"{path}.{name}" if path else name, child)

    if skip_root:
        for name, child in model.named_children():
            visit(f"{prefix}.{name}" if prefix else name, child)
    else:
        visit(prefix, model)
    return regions, failures


class _ShapeRecorder(fx.Interpreter):
    def __init__(self, gm: fx.GraphModule, shapes: Shapes) -> None:
        super().__init__(gm)
        self.shapes = shapes

    def run_node(self, n: fx.Node) -> Any:
        out = super().run_node(n)
        if isinstance(out, torch.Tensor):
            self.shapes.setdefault(n, set()).add(tuple(out.shape))
        return out


class _RecordingWrapper(nn.Module):
    """Stands in for a region during a validation run: runs its graph and records shapes."""

    def __init__(self, region: Region) -> None:
        super().__init__()
        self.region = region
        self.gm = region.gm
        self.signature = inspect.signature(region.gm.forward)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        bound = self.signature.bind(*args, **kwargs)
        bound.apply_defaults()
        self.region.calls += 1
        return _ShapeRecorder(self.gm, self.region.shapes).run(*bound.args)


def validate_regions(
    model: nn.Module,
    regions: list[Region],
    run_ok: Callable[[nn.Module], bool],
    install: Callable[[nn.Module, str, nn.Module], nn.Module],
) -> tuple[list[Region], list[Region]]:
    """Keep regions whose graphs reproduce the model; returns (good, bad).

    ``run_ok(model)`` runs the example inputs and compares with the reference; ``install``
    replaces the module at a path (returning the possibly new root).
    """
    good = _try(model, regions, run_ok, install)
    if good:
        return regions, []
    if len(regions) == 1:
        return [], regions
    ok, bad = [], []
    for region in regions:
        region.shapes.clear()
        region.calls = 0
        (ok if _try(model, [region], run_ok, install) else bad).append(region)
    if ok and not _try(model, ok, run_ok, install):
        return [], regions
    return ok, bad


def _try(
    model: nn.Module,
    regions: list[Region],
    run_ok: Callable[[nn.Module], bool],
    install: Callable[[nn.Module, str, nn.Module], nn.Module],
) -> bool:
    root = model
    for region in regions:
        region.shapes.clear()
        region.calls = 0
        root = install(root, region.path, _RecordingWrapper(region))
    try:
        return run_ok(root)
    except Exception as exc:
        logger.debug("region validation run failed: %s", exc)
        return False
    finally:
        for region in regions:
            root = install(root, region.path, region.original)
