"""check_model: the CI gate — is anything in this model still foldable or removable?"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from bnfold.report import ReportEntry


@dataclasses.dataclass
class CheckResult:
    """Truthy when the model is clean (nothing left that bnfold would fold or remove)."""

    model: str
    foldable: list[ReportEntry]
    left: list[ReportEntry]

    def __bool__(self) -> bool:
        return not self.foldable

    def describe(self) -> str:
        if not self.foldable:
            return f"{self.model}: clean (no foldable BatchNorm, no removable Dropout)"
        lines = [f"{self.model}: {len(self.foldable)} node(s) can still be folded or removed"]
        for e in self.foldable:
            target = f" into {e.into}" if e.into else ""
            verb = "remove" if e.status == "removed" else "fold"
            lines.append(f"  {verb} {e.kind} {e.name}{target} ({e.pattern})")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "clean": bool(self),
            "foldable": [e.to_dict() for e in self.foldable],
            "not_foldable": [e.to_dict() for e in self.left],
        }


def check_model(model: str | os.PathLike[str] | Any, **fold_options: Any) -> CheckResult:
    """Run the folder on a copy of ``model`` and list what it would change."""
    from bnfold.onnx.api import fold_onnx

    result = fold_onnx(model, **fold_options)
    entries = result.report.entries
    foldable = [e for e in entries if e.status in ("folded", "removed")]
    left = [e for e in entries if e.status == "left"]
    label = str(model) if isinstance(model, (str, os.PathLike)) else "model"
    return CheckResult(label, foldable, left)
