"""Report entries of the PyTorch side: how each fold was established (verified or proven)."""

from __future__ import annotations

import dataclasses
from typing import Literal

from bnfold.report import ReportEntry

Evidence = Literal["verified", "proven", "not verified", "restored"]
EVIDENCE_NOTE = {
    "verified": "verified numerically on the example inputs",
    "proven": "proven structurally from the traced graph (no example inputs)",
    "not verified": "not confirmed: the folded module differs from the original",
    "restored": "restored from a saved manifest",
}


@dataclasses.dataclass
class TorchReportEntry(ReportEntry):
    """A :class:`ReportEntry` plus ``evidence`` for folds: "verified" or "proven"."""

    evidence: Evidence | None = None


def with_evidence(entry: ReportEntry, evidence: Evidence) -> ReportEntry:
    """``entry`` with ``evidence`` set when it is a fold (other entries unchanged)."""
    if entry.status != "folded":
        return entry
    fields = {f.name: getattr(entry, f.name) for f in dataclasses.fields(ReportEntry)}
    return TorchReportEntry(**fields, evidence=evidence)


def evidence_summary(entries: list[ReportEntry]) -> str | None:
    """``folds: 3 verified numerically …, 1 proven structurally …`` (None without folds)."""
    counts: dict[str, int] = {}
    for e in entries:
        ev = getattr(e, "evidence", None)
        if e.status == "folded" and ev:
            counts[ev] = counts.get(ev, 0) + 1
    if not counts:
        return None
    return "folds: " + "; ".join(f"{n} {EVIDENCE_NOTE[k]}" for k, n in counts.items())
