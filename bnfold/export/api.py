"""``fold_program``: fold BatchNorm and strip Dropout in a ``torch.export.ExportedProgram``.

Steps: remove inference Dropout → plan every BN (``plan.py``: the shared rules) → apply
the plans to a copy (``rewrite.py``) → run original and folded ``ep.module()`` on the
example inputs and inputs inside the dynamic-shape ranges (``verify.py``, the ONNX side's
noise-floor judgement) → if they differ, retry the folds one BN at a time and roll back
each one that fails. The input program is never modified.
"""

from __future__ import annotations

import dataclasses
import logging
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from torch.export import ExportedProgram

from bnfold.errors import InputError, NotEquivalentError
from bnfold.export.plan import FoldPlan, plan_program
from bnfold.export.rewrite import apply_plans, dropouts
from bnfold.export.verify import ProgramReference, ProgramVerifyResult, user_input_nodes
from bnfold.keep import KEPT_REASON, KeepList
from bnfold.report import FoldReport, ReportEntry

logger = logging.getLogger(__name__)
MAX_ROUNDS = 4  # a layer absorbs one BN per round (BN → pool → Linear → BN needs two)


@dataclasses.dataclass
class ProgramFoldResult:
    """The folded program, what happened to each BN/Dropout, and the comparison."""

    program: ExportedProgram
    report: FoldReport
    verification: ProgramVerifyResult | None = None

    @property
    def model(self) -> ExportedProgram:
        return self.program

    def save(self, path: str | Path) -> Path:
        """``torch.export.save`` the folded program (a ``.pt2`` archive)."""
        from bnfold.export.archive import save_program

        return save_program(self.program, Path(path))

    def describe(self) -> str:
        parts = [self.report.describe()]
        if self.verification is not None:
            parts.append(self.verification.describe())
        return "\n".join(parts)


def fold_program(
    ep: ExportedProgram,
    *,
    assume_eval: bool = False,
    verify: bool = True,
    seeds: int = 3,
    strict: bool = False,
    keep: Sequence[str] | str | None = None,
    keep_dropout: bool = False,
    inputs: Sequence[Mapping[str, np.ndarray]] | Mapping[str, np.ndarray] | None = None,
    shapes: Mapping[str, Sequence[int]] | None = None,
) -> ProgramFoldResult:
    """Fold every foldable BN of ``ep`` into its convolution / linear / addmm / mm producer.

    Training-mode BN is left with a reason unless ``assume_eval`` (then it folds with its
    running statistics and its statistics updates are dropped). With ``verify`` each fold
    is proven on example inputs and rolled back if the outputs drift; ``strict`` raises
    NotEquivalentError when the final program still differs. ``keep`` (fnmatch globs on
    node names or the modules they came from, e.g. ``head.*``) and ``keep_dropout`` leave
    those BN / Dropout calls as they are. ``inputs`` (arrays by user-input name, one dict
    per input set) and ``shapes`` (sizes of synthesised inputs) replace the program's
    example inputs in verification.
    """
    if not isinstance(ep, ExportedProgram):
        raise InputError(f"expected a torch.export.ExportedProgram, got {type(ep).__name__}")
    sets = [inputs] if isinstance(inputs, Mapping) else list(inputs or [])
    data = {"arrays": _checked_arrays(ep, sets), "shapes": _checked_shapes(ep, shapes)}
    with warnings.catch_warnings():  # torch's own pytree deprecation notes, once per module()
        warnings.filterwarnings("ignore", message=".*LeafSpec.*", category=FutureWarning)
        return _fold(ep, assume_eval, verify, seeds, strict, KeepList.of(keep, keep_dropout), data)


def _reference(ep: ExportedProgram, seeds: int, data: dict[str, Any]) -> ProgramReference:
    """The original's outputs on the verification inputs; given inputs it rejects are the
    user's error, said in one line."""
    if not (data["arrays"] or data["shapes"]):
        return ProgramReference(ep, seeds=seeds)
    try:
        return ProgramReference(ep, seeds=seeds, **data)
    except Exception as err:
        takes = ", ".join(f"{n.name}: {tuple(n.meta['val'].shape)}" for n in user_input_nodes(ep))
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise InputError(
            f"the program rejects the given --inputs/--shape ({first}); it takes {takes}"
        ) from err


def _checked_arrays(
    ep: ExportedProgram, sets: list[Mapping[str, np.ndarray]]
) -> list[Mapping[str, np.ndarray]]:
    names = [n.name for n in user_input_nodes(ep)]
    for s in sets:
        unknown = sorted(set(s) - set(names))
        if unknown:
            raise InputError(f"inputs {unknown} are not inputs of the program; it takes {names}")
    return sets


def _checked_shapes(
    ep: ExportedProgram, shapes: Mapping[str, Sequence[int]] | None
) -> dict[str, tuple[int, ...]] | None:
    if not shapes:
        return None
    names = [n.name for n in user_input_nodes(ep)]
    unknown = sorted(set(shapes) - set(names))
    if unknown:
        raise InputError(f"--shape names {unknown}, not inputs of the program; it takes {names}")
    return {k: tuple(int(d) for d in v) for k, v in shapes.items()}


def _fold(
    ep: ExportedProgram,
    assume_eval: bool,
    verify: bool,
    seeds: int,
    strict: bool,
    keep: KeepList,
    data: dict[str, Any],
) -> ProgramFoldResult:
    report, base, plans = _plan(ep, assume_eval, keep)
    removed = [e for e in report.entries if e.status == "removed"]
    reference = None
    if verify and (plans or removed):
        training = [p for p in plans if _is_training(p, base)]
        if training or any("train=True" in str(e.pattern) for e in removed):
            original = _eval_reference(base, training)  # the program read as inference
        else:
            original = ep
        reference = _reference(original, seeds, data)
    folded, verification = base, None
    for _ in range(MAX_ROUNDS):
        accepted, rolled_back, folded, verification = _fold_checked(folded, plans, reference)
        for plan in accepted:
            report.add(plan.entry())
        for plan, why in rolled_back:
            report.add(ReportEntry(plan.bn, plan.kind, "left", into=plan.into, reason=why))
        # Folds open new ones (a conv that absorbed its BN can then absorb an identity
        # branch; a layer absorbs one BN per round): plan the rest again.
        waiting = {e.name for e in report.left if not str(e.reason).startswith("rolled back")}
        if not accepted or not waiting:
            break
        replanned, still_left = plan_program(folded, assume_eval=assume_eval)
        plans = [p for p in replanned if p.bn in waiting]
        report.entries = [e for e in report.entries if e.name not in {p.bn for p in plans}]
        reasons = {e.name: e.reason for e in still_left}
        for entry in report.left:  # the reason as it stands now
            if entry.name in waiting and entry.name in reasons:
                entry.reason = reasons[entry.name]
    report.entries.sort(key=_order(base))
    if strict and verification is not None and not verification:
        raise NotEquivalentError("folded program is not equivalent to the original")
    return ProgramFoldResult(folded, report, verification)


def check_program_file(
    path: Any,
    *,
    trust_pickle: bool = False,
    assume_eval: bool = False,
    keep: Sequence[str] | str | None = None,
    keep_dropout: bool = False,
) -> FoldReport:
    """What ``fold_program`` would fold or remove in a ``.pt2`` archive (nothing is rewritten)."""
    from bnfold.export.archive import load_program

    ep = load_program(path, trust_pickle=trust_pickle)
    report, base, plans = _plan(ep, assume_eval, KeepList.of(keep, keep_dropout))
    report.entries.extend(plan.entry() for plan in plans)
    report.entries.sort(key=_order(base))
    return report


def _plan(
    ep: ExportedProgram, assume_eval: bool, keep: KeepList
) -> tuple[FoldReport, ExportedProgram, list[FoldPlan]]:
    """Dropout removed (in a copy) and BN planned; the report holds every non-folded entry."""
    report = FoldReport()
    removed = []
    nodes = {n.name: n for n in ep.graph_module.graph.nodes}
    for name, train in dropouts(ep):
        if keep.keeps(_names(nodes[name]), is_dropout=True):
            report.add(ReportEntry(name, "Dropout", "kept", reason=KEPT_REASON))
        elif train and not assume_eval:
            why = "Dropout in training mode (train=True); --assume-eval removes it"
            report.add(ReportEntry(name, "Dropout", "left", reason=why))
        else:
            removed.append(name)
            pattern = "Dropout (train=True, assume_eval)" if train else "Dropout (train=False)"
            report.add(ReportEntry(name, "Dropout", "removed", pattern=pattern))
    base = apply_plans(ep, [], removed) if removed else ep
    plans, left = plan_program(base, assume_eval=assume_eval)
    nodes = {n.name: n for n in base.graph_module.graph.nodes}
    for plan in list(plans):
        if keep.keeps(_names(nodes[plan.bn]), is_dropout=False):
            plans.remove(plan)
            report.add(ReportEntry(plan.bn, plan.kind, "kept", reason=KEPT_REASON))
    for entry in left:
        if keep.keeps(_names(nodes[entry.name]), is_dropout=False):
            entry.status, entry.reason = "kept", KEPT_REASON
        report.add(entry)
    return report, base, plans


def _names(node: Any) -> list[str]:
    """What keep-globs match: the node name and the module it came from (``layer1.0.bn1``)."""
    stack = node.meta.get("nn_module_stack") or {}
    path = list(stack.values())[-1][0] if stack else ""
    return [node.name, path] if path else [node.name]


def _fold_checked(
    base: ExportedProgram, plans: list[FoldPlan], reference: ProgramReference | None
) -> tuple[list[FoldPlan], list[tuple[FoldPlan, str]], ExportedProgram, Any]:
    """Apply all plans; on a failure, one at a time, keeping those that stay equivalent."""
    try:
        folded = apply_plans(base, plans)
        verification = reference.compare(folded) if reference is not None else None
        if verification is None or verification:
            return plans, [], folded, verification
    except Exception as err:  # a rewrite torch rejects: find the plan that causes it
        logger.warning("folding all BN at once failed (%s); trying one at a time", err)
    accepted: list[FoldPlan] = []
    rolled_back: list[tuple[FoldPlan, str]] = []
    for plan in plans:
        try:
            candidate = apply_plans(base, [*accepted, plan])
            result = reference.compare(candidate) if reference is not None else None
        except Exception as err:
            rolled_back.append((plan, f"rolled back: the rewritten program fails ({err})"))
            continue
        if result is None or result:
            accepted.append(plan)
        else:
            rolled_back.append((plan, f"rolled back: {result.summary()}"))
    folded = apply_plans(base, accepted)
    verification = reference.compare(folded) if reference is not None else None
    return accepted, rolled_back, folded, verification


def _is_training(plan: FoldPlan, ep: ExportedProgram) -> bool:
    from bnfold.export.program import BN_OPS, BnNode

    node = next(n for n in ep.graph_module.graph.nodes if n.name == plan.bn)
    return BnNode(node, BN_OPS[node.target]).training


def _eval_reference(ep: ExportedProgram, plans: list[FoldPlan]) -> ExportedProgram:
    """The original with training BN read as inference (running statistics), not folded."""
    from bnfold.export.rewrite import inference_program

    return inference_program(ep, [p.bn for p in plans])


def _order(ep: ExportedProgram) -> Any:
    position = {n.name: i for i, n in enumerate(ep.graph_module.graph.nodes)}
    return lambda e: position.get(e.name, -1)
