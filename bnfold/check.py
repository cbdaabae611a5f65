"""check_model: the CI gate — is anything in this model still foldable or removable?"""

from __future__ import annotations

import dataclasses
import os
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

from bnfold.report import ReportEntry

QUANTIZED_HINT = "quantized between the layer and the BN"


@dataclasses.dataclass
class CheckResult:
    """Truthy when the model is clean (nothing left that bnfold would fold or remove).

    A model that could not be read has ``error`` set and is never clean.
    """

    model: str
    foldable: list[ReportEntry]
    left: list[ReportEntry]
    kept: list[ReportEntry] = dataclasses.field(default_factory=list)
    error: str | None = None
    seconds: float | None = None

    def __bool__(self) -> bool:
        return self.error is None and not self.foldable

    def counts_line(self) -> str:
        """``94 foldable: 91 Conv→BN, 3 ConvTranspose→BN; 0 Dropout`` (or ``clean (…)``)."""
        if self.error is not None:
            return f"error: {' '.join(self.error.split())}"
        bns = [e for e in self.foldable if e.status != "removed"]
        dropouts = len(self.foldable) - len(bns)
        notes = []
        if self.left:
            quantized = sum(QUANTIZED_HINT in (e.reason or "") for e in self.left)
            notes.append(f"{len(self.left)} cannot fold")
            if quantized:
                notes.append(
                    f"{quantized} quantized between layer and BN: fold before quantizing, "
                    "or use --requantize"
                )
        if self.kept:
            notes.append(f"{len(self.kept)} kept by request")
        if not self.foldable:
            return "clean" + (f" ({', '.join(notes)})" if notes else "")
        patterns = Counter(e.pattern or e.kind for e in bns)
        by_pattern = ", ".join(f"{n} {p}" for p, n in patterns.most_common())
        line = f"{len(bns)} foldable" + (f": {by_pattern}" if by_pattern else "")
        line += f"; {dropouts} Dropout"
        return line + (f"; {', '.join(notes)}" if notes else "")

    def headline(self, name: str | None = None) -> str:
        """One line for the model: ``name: <counts_line>``."""
        return f"{name or self.model}: {self.counts_line()}"

    def describe(self) -> str:
        """The headline, then one line per foldable node (``--verbose``)."""
        if self.error is not None:
            return self.headline()
        if not self.foldable:
            return f"{self.model}: clean (no foldable BatchNorm, no removable Dropout)"
        lines = [f"{self.model}: {len(self.foldable)} node(s) can still be folded or removed"]
        for e in self.foldable:
            target = f" into {e.into}" if e.into else ""
            verb = "remove" if e.status == "removed" else "fold"
            lines.append(f"  {verb} {e.kind} {e.name}{target} ({e.pattern})")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "model": self.model,
            "clean": bool(self),
            "foldable": [e.to_dict() for e in self.foldable],
            "not_foldable": [e.to_dict() for e in self.left],
        }
        if self.kept:
            out["kept"] = [e.to_dict() for e in self.kept]
        if self.error is not None:
            out["error"] = self.error
        return out


def check_model(model: str | os.PathLike[str] | Any, **fold_options: Any) -> CheckResult:
    """Run the folder on a copy of ``model`` and list what it would change.

    ``fold_options`` are ``fold_onnx``'s (``assume_eval``, ``keep``, ``keep_dropout``…):
    kept nodes are never "foldable". A bad model raises its BnfoldError.
    """
    start = time.perf_counter()
    trust_pickle = bool(fold_options.pop("trust_pickle", False))
    if str(model).lower().endswith(".pt2"):  # a torch.export archive: bnfold.export
        from bnfold.export.api import check_program_file

        report = check_program_file(model, trust_pickle=trust_pickle, **fold_options)
    else:
        from bnfold.onnx.api import fold_onnx

        report = fold_onnx(model, **fold_options).report
    entries = report.entries
    foldable = [e for e in entries if e.status in ("folded", "removed")]
    left = [e for e in entries if e.status == "left"]
    kept = [e for e in entries if e.status == "kept"]
    label = str(model) if isinstance(model, (str, os.PathLike)) else "model"
    return CheckResult(label, foldable, left, kept, seconds=time.perf_counter() - start)


def check_models(
    models: Sequence[str | os.PathLike[str]], **fold_options: Any
) -> list[CheckResult]:
    """``check_model`` for each model; a model that cannot be read becomes a result with
    ``error`` set instead of stopping the others."""
    from bnfold.errors import BnfoldError

    results = []
    for model in models:
        start = time.perf_counter()
        try:
            results.append(check_model(model, **fold_options))
        except BnfoldError as err:
            seconds = time.perf_counter() - start
            results.append(CheckResult(str(model), [], [], error=str(err), seconds=seconds))
    return results
