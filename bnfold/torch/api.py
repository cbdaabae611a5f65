"""``fold_module``: fold BatchNorm and strip Dropout in a PyTorch module, then prove it.

Steps: deep-copy the module in eval mode (the caller's module is never touched) → replace
Dropout modules by Identity → trace the whole model with torch.fx, or else its largest
traceable submodules, and fold per call site in those graphs → fold the remaining BNs by
adjacency proven on a recorded forward pass → compare with the original on the example inputs,
rolling back any step whose outputs drift beyond the original's own rounding noise (the
ONNX side's rule, :mod:`bnfold.torch.noise_floor`).
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import fx, nn

from bnfold.errors import InputError, NotEquivalentError
from bnfold.keep import KeepList
from bnfold.report import FoldReport, ReportEntry
from bnfold.torch.adjacency_fold import plan_adjacency_folds, set_module
from bnfold.torch.compare import Reference, TorchComparison, run
from bnfold.torch.dropout import (
    FUNCTIONAL_DROPOUT,
    functional_training_flag,
    remove_functional_dropout,
    remove_identity_nodes,
    strip_dropout_modules,
)
from bnfold.torch.entries import evidence_summary, with_evidence
from bnfold.torch.fx_fold import GraphFolder, Outcome, Shapes
from bnfold.torch.fx_shapes import static_shapes
from bnfold.torch.keep import finish_kept, mark_kept
from bnfold.torch.recording import record
from bnfold.torch.registry import is_batchnorm_like, match_batchnorm
from bnfold.torch.saving import save_folded
from bnfold.torch.tracing import Region, find_regions, trace, validate_regions

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class TorchFoldResult:
    """The folded module (eval mode), what happened to each BN/Dropout, and the comparison."""

    model: nn.Module
    report: FoldReport
    verification: TorchComparison | None = None
    trace_failures: dict[str, str] = dataclasses.field(default_factory=dict)
    manifest: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def max_error(self) -> float | None:
        """Largest absolute output difference vs the original on the example inputs."""
        return None if self.verification is None else self.verification.max_error

    def save(self, path: str | Path) -> Path:
        """Write safetensors weights plus the fold manifest (no pickled classes).

        Rebuild with ``bnfold.torch.load_folded(MyModel, path)`` (see :mod:`.saving`).
        """
        return save_folded(self, path)

    def describe(self) -> str:
        parts = [self.report.describe()]
        summary = evidence_summary(self.report.entries)
        if summary:
            parts.append(summary)
        if self.verification is not None:
            parts.append(self.verification.describe())
        return "\n".join(parts)


def fold_module(
    module: nn.Module,
    example_inputs: Any = None,
    *,
    verify: bool = True,
    adjacency: bool = True,
    strict: bool = False,
    rtol: float | None = None,
    atol: float | None = None,
    keep: Sequence[str] | str | None = None,
    keep_dropout: bool = False,
) -> TorchFoldResult:
    """Fold BatchNorm into Conv/ConvTranspose/Linear and remove Dropout in a copy of ``module``.

    ``example_inputs`` (a tensor or a tuple of positional arguments) enables shape-proven folds
    (Linear→BN, layout ops, consumer folds), the adjacency fallback for code torch.fx cannot
    trace, and verification. With ``strict=True`` a final mismatch raises NotEquivalentError.
    ``keep`` (fnmatch globs on module qualified names / fx node names) and ``keep_dropout``
    leave those BN/Dropout as they are, reported as ``kept`` ("kept by request").
    """
    if not isinstance(module, nn.Module):
        raise InputError(f"expected a torch.nn.Module, got {type(module).__name__}")
    inputs = _as_tuple(example_inputs)
    keep_list = KeepList.of(keep, keep_dropout)
    folder = _Folder(module, inputs, verify=verify, adjacency=adjacency, rtol=rtol, atol=atol)
    folder.keep = keep_list
    mark_kept(folder.model, keep_list)
    result = folder.run(strict)
    finish_kept(result.model, result.report, keep_list)
    return result


def replay_folds(module: nn.Module, manifest: dict[str, Any], example_inputs: Any) -> nn.Module:
    """Apply the folds a saved manifest lists to a copy of ``module``, checking nothing."""
    folder = _Folder(module, None, verify=False, adjacency=False, rtol=0.0, atol=0.0)
    folder.replay = manifest
    folder.inputs = _as_tuple(example_inputs)
    return folder.run(strict=False).model


def _as_tuple(example_inputs: Any) -> tuple[Any, ...] | None:
    if example_inputs is None:
        return None
    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,)
    if isinstance(example_inputs, list):
        return tuple(example_inputs)
    if isinstance(example_inputs, tuple):
        return example_inputs
    raise InputError("example_inputs must be a tensor or a tuple of positional arguments")


def install(root: nn.Module, path: str, module: nn.Module) -> nn.Module:
    """Bind ``module`` at ``path`` (``""`` replaces the root); returns the root."""
    if not path:
        return module
    set_module(root, path, module)
    return root


class _Folder:
    keep = KeepList()  # set by fold_module: BN/Dropout left as they are

    def __init__(
        self,
        module: nn.Module,
        inputs: tuple[Any, ...] | None,
        *,
        verify: bool,
        adjacency: bool,
        rtol: float | None,
        atol: float | None,
    ) -> None:
        self.model = copy.deepcopy(module).eval()
        self.inputs = inputs
        self.adjacency = adjacency and inputs is not None
        self.checking = verify and inputs is not None
        self.report = FoldReport()
        self.ref = Reference(self.model, inputs, rtol=rtol, atol=atol) if inputs else None
        self.outcomes: list[Outcome] = []
        self.failures: dict[str, str] = {}
        self.replay: dict[str, Any] | None = None  # a saved manifest to apply as it is
        self.saved: dict[str, Any] = {"regions": [], "bn_swaps": []}

    def run(self, strict: bool) -> TorchFoldResult:
        dropouts: list[ReportEntry] = []
        self.model = strip_dropout_modules(self.model, dropouts)
        self._fold_regions(dropouts)
        if self.replay is not None:
            self._replay_swaps()
        elif self.adjacency:
            self._fold_adjacent(dropouts)
        else:
            self._report_untraced()
        self._cleanup()
        self.model.eval()
        verification = self.ref.compare(self.model) if self.ref is not None else None
        evidence = "proven" if verification is None else "verified" if verification else None
        if self.replay is not None:
            evidence = "restored"
        self.report.entries.extend(
            with_evidence(o.entry, evidence or "not verified") for o in self.outcomes
        )
        self.report.entries.extend(dropouts)
        if verification is None:
            self.report.warn("no example_inputs: the folded module was not verified")
        elif not verification:
            self.report.warn(
                "the folded module differs from the original beyond its own rounding noise"
            )
            if strict:
                raise NotEquivalentError(verification.describe())
        elif verification.blind_outputs:
            self.report.warn(
                "the original's own rounding noise is a large share of its output "
                f"(outputs {verification.blind_outputs}): the check cannot see small errors; "
                "fold a float64 copy with the same inputs to check the math"
            )
        return TorchFoldResult(
            self.model, self.report, verification, self.failures, manifest=self.saved
        )

    # -- fx regions -------------------------------------------------------------------
    def _fold_regions(self, dropouts: list[ReportEntry]) -> None:
        regions = self._regions()
        for region in regions:
            gm = region.gm
            entries: list[ReportEntry] = []
            changed = remove_functional_dropout(gm, region.path, entries, self.keep)
            changed |= remove_identity_nodes(gm)
            only = None
            if self.replay is not None:
                saved = {r["path"]: r["folded"] for r in self.replay["regions"]}
                only = set(saved.get(region.path, []))
            folder = GraphFolder(gm, region.path, self._shapes(region), only=only)
            try:
                changed |= folder.run()
            except Exception as exc:  # a broken graph rewrite: keep the original region
                logger.warning("bnfold: folding region %r failed: %s", region.path, exc)
                self.report.warn(f"folding '{region.path or '<root>'}' failed ({exc}): skipped")
                continue
            if not changed:
                self.outcomes.extend(folder.outcomes)
                dropouts.extend(entries)
                continue
            gm.graph.lint()
            gm.recompile()
            self.model = install(self.model, region.path, gm)
            if self.checking and not self._matches():
                self.model = install(self.model, region.path, region.original)
                self.report.warn(
                    f"folds in '{region.path or '<root>'}' changed the outputs: undone"
                )
                continue
            self.outcomes.extend(folder.outcomes)
            dropouts.extend(entries)
            folded = [o.entry.name for o in folder.outcomes if o.entry.status == "folded"]
            self.saved["regions"].append({"path": region.path, "folded": folded})

    def _shapes(self, region: Region) -> Shapes:
        """Shapes proven by the graph, overridden by those recorded on the example inputs."""
        shapes: Shapes = dict(static_shapes(region.gm))
        shapes.update(region.shapes)
        return shapes

    def _regions(self) -> list[Region]:
        if self.replay is not None:
            return self._replay_regions()
        regions, self.failures = find_regions(self.model)
        for path, why in self.failures.items():
            self.report.warn(f"torch.fx cannot trace '{path}' ({why}); folding its parts instead")
        if self.ref is None:
            return regions
        good: list[Region] = []
        pending = regions
        for _ in range(8):  # nested fallbacks; each level moves one module deeper
            ok, bad = validate_regions(self.model, pending, self._matches, install)
            good.extend(ok)
            pending = []
            for region in bad:
                self.report.warn(
                    f"the fx graph of '{region.path or '<root>'}' does not reproduce it"
                )
                sub, failures = find_regions(region.original, skip_root=True, prefix=region.path)
                self.failures.update(failures)
                pending.extend(sub)
            if not pending:
                break
        return good

    def _replay_regions(self) -> list[Region]:
        assert self.replay is not None
        regions = []
        for saved in self.replay["regions"]:
            path = saved["path"]
            module = self.model.get_submodule(path) if path else self.model
            gm = trace(module)
            if isinstance(gm, str):
                raise InputError(f"cannot trace '{path or '<root>'}' as when it was saved: {gm}")
            regions.append(Region(path, module, gm))
        if self.inputs is not None:  # record shapes for folds proven on them
            validate_regions(self.model, regions, self._runs, install)
        return regions

    def _runs(self, model: nn.Module) -> bool:
        assert self.inputs is not None
        run(model, self.inputs)
        return True

    def _replay_swaps(self) -> None:
        assert self.replay is not None
        for swap in self.replay["bn_swaps"]:
            bn = self.model.get_submodule(swap["paths"][0])
            match = match_batchnorm(bn)
            rest = match.remainder if match is not None else None
            if swap["remainder"] != (rest is not None):
                raise InputError(f"'{swap['paths'][0]}' is not the BN module that was saved")
            for path in swap["paths"]:
                set_module(self.model, path, rest if rest is not None else nn.Identity())

    def _matches(self, model: nn.Module | None = None) -> bool:
        assert self.ref is not None
        return bool(self.ref.compare(self.model if model is None else model))

    # -- adjacency ----------------------------------------------------------------------
    def _fold_adjacent(self, dropouts: list[ReportEntry]) -> None:
        assert self.inputs is not None
        by_module: dict[int, list[Outcome]] = {}
        for o in self.outcomes:
            by_module.setdefault(o.module_id, []).append(o)
        candidates = []
        for module in self.model.modules():
            if not is_batchnorm_like(module):
                continue
            mine = by_module.get(id(module), [])
            if not mine or (len(mine) == 1 and mine[0].entry.status == "left"):
                candidates.append(module)
        try:
            rec = record(self.model, self.inputs, frozenset(FUNCTIONAL_DROPOUT))
        except Exception as exc:  # the recording run itself failed: nothing can be proven
            self.report.warn(f"could not record a forward pass for adjacency ({exc})")
            self._report_untraced()
            return
        self._report_functional_dropout(rec, dropouts)
        folds, left = plan_adjacency_folds(self.model, rec, candidates)
        for fold in folds:
            fold.apply(self.model)
        if folds and self.checking and not self._matches():
            for fold in folds:
                fold.undo(self.model)
            kept = []
            for fold in folds:
                fold.apply(self.model)
                if self._matches():
                    kept.append(fold)
                else:
                    fold.undo(self.model)
                    reason = "folding it changed the outputs (its input is used elsewhere?)"
                    left.append(
                        (
                            fold.bn,
                            dataclasses.replace(
                                fold.entry, status="left", into=None, pattern=None, reason=reason
                            ),
                        )
                    )
            folds = kept
        for fold in folds:
            bn_swap = fold.swaps[-1]
            remainder = not isinstance(bn_swap.new, nn.Identity)
            self.saved["bn_swaps"].append({"paths": bn_swap.paths, "remainder": remainder})
        for bn, entry in [(f.bn, f.entry) for f in folds] + left:
            mine = by_module.get(id(bn), [])
            if mine:
                if entry.status == "folded":
                    mine[0].entry = dataclasses.replace(
                        entry, name=mine[0].entry.name, scope=mine[0].entry.scope
                    )
                continue
            self.outcomes.append(Outcome(id(bn), entry))

    def _report_functional_dropout(self, rec: Any, dropouts: list[ReportEntry]) -> None:
        for func, args, kwargs, stack in rec.functional:
            if any(isinstance(rec.calls[i].module, fx.GraphModule) for i in stack):
                continue  # reported from its graph
            if functional_training_flag(func, args, kwargs) is False:
                continue  # a no-op in eval mode
            kind = f"F.{getattr(func, '__name__', 'dropout')}"
            where = type(rec.calls[stack[-1]].module).__name__ if stack else "<root>"
            reason = "training=True in code torch.fx cannot trace: active at inference"
            dropouts.append(ReportEntry(f"{where}.{kind}", kind, "left", reason=reason))

    def _report_untraced(self) -> None:
        reported = {o.module_id for o in self.outcomes}
        for path, module in self.model.named_modules():
            if is_batchnorm_like(module) and id(module) not in reported:
                reason = "not in code torch.fx can trace (pass example_inputs to fold by adjacency)"
                self.outcomes.append(
                    Outcome(
                        id(module), ReportEntry(path, type(module).__name__, "left", reason=reason)
                    )
                )

    def _cleanup(self) -> None:
        for module in self.model.modules():
            if isinstance(module, fx.GraphModule) and remove_identity_nodes(module):
                module.recompile()
