"""FoldReport: what happened to every BatchNorm and Dropout, with reasons."""

from __future__ import annotations

import dataclasses
from collections import Counter
from typing import Any, Literal

Status = Literal["folded", "removed", "rewritten", "left", "kept"]

DROPOUT_KINDS = frozenset({"Dropout"})


@dataclasses.dataclass
class ReportEntry:
    """The outcome for one BatchNorm or Dropout node (or module call)."""

    name: str
    kind: str  # "BatchNormalization" | "Dropout" | torch module class name
    status: Status
    into: str | None = None  # layer the BN was folded into
    pattern: str | None = None  # e.g. "Conv→BN", "BN→Gemm (consumer)"
    reason: str | None = None  # why it was left (or a note for rewritten ones)
    scope: str = ""  # graph or module path, "" for the main graph

    @property
    def is_bn(self) -> bool:
        return self.kind not in DROPOUT_KINDS and "dropout" not in self.kind.lower()

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if v not in (None, "")}


@dataclasses.dataclass
class FoldReport:
    """Entries for every BN and Dropout seen, plus free-form warnings."""

    entries: list[ReportEntry] = dataclasses.field(default_factory=list)
    warnings: list[str] = dataclasses.field(default_factory=list)
    # --requantize: (DequantizeLinear output, QuantizeLinear input) of each dropped inner pair
    dropped_roundings: list[tuple[str, str]] = dataclasses.field(default_factory=list)

    def add(self, entry: ReportEntry) -> None:
        self.entries.append(entry)

    def warn(self, message: str) -> None:
        if message not in self.warnings:
            self.warnings.append(message)

    @property
    def batchnorms(self) -> list[ReportEntry]:
        return [e for e in self.entries if e.is_bn]

    @property
    def dropouts(self) -> list[ReportEntry]:
        return [e for e in self.entries if not e.is_bn]

    @property
    def left(self) -> list[ReportEntry]:
        return [e for e in self.entries if e.status == "left"]

    @property
    def kept(self) -> list[ReportEntry]:
        """Nodes left alone because the user asked (``keep`` / ``keep_dropout``)."""
        return [e for e in self.entries if e.status == "kept"]

    def counts(self) -> dict[str, dict[str, int]]:
        """{"batchnorm": {"found", "folded", "rewritten", "left", "kept"}, "dropout": {...}}."""
        out: dict[str, dict[str, int]] = {}
        for label, group in (("batchnorm", self.batchnorms), ("dropout", self.dropouts)):
            c = Counter(e.status for e in group)
            out[label] = {"found": len(group), **{k: c.get(k, 0) for k in _STATUSES[label]}}
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "counts": self.counts(),
            "entries": [e.to_dict() for e in self.entries],
            "warnings": list(self.warnings),
        }

    def describe(self) -> str:
        """A plain-text summary, one line per node left, suitable for logs."""
        c = self.counts()
        bn, dr = c["batchnorm"], c["dropout"]
        lines = [
            f"BatchNorm: {bn['found']} found, {bn['folded']} folded, "
            f"{bn['rewritten']} rewritten, {bn['left']} left" + _kept_note(bn),
            f"Dropout:   {dr['found']} found, {dr['removed']} removed, {dr['left']} left"
            + _kept_note(dr),
        ]
        for e in self.left:
            where = f"{e.scope}/" if e.scope else ""
            lines.append(f"  left {e.kind} {where}{e.name}: {e.reason}")
        for e in self.kept:
            where = f"{e.scope}/" if e.scope else ""
            lines.append(f"  kept {e.kind} {where}{e.name}: {e.reason}")
        lines.extend(f"  warning: {w}" for w in self.warnings)
        return "\n".join(lines)


_STATUSES = {
    "batchnorm": ("folded", "rewritten", "left", "kept"),
    "dropout": ("removed", "left", "kept"),
}


def _kept_note(counts: dict[str, int]) -> str:
    return f", {counts['kept']} kept by request" if counts.get("kept") else ""
