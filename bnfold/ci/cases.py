"""CiCase: one model's result in a CI run (fold or check), with its one-line reason."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any, Literal

CaseStatus = Literal["passed", "failed", "error"]


@dataclasses.dataclass
class CiCase:
    """A model as a CI test case: ``failed`` = not equivalent / still foldable, ``error`` =
    bad input or a crash; ``message`` is one line, never wrapped or shortened."""

    name: str  # the label shown to people (relative to the folder given)
    file: str  # the path as bnfold opened it (annotations point at it)
    status: CaseStatus
    message: str = ""
    seconds: float | None = None
    columns: dict[str, str] = dataclasses.field(default_factory=dict)  # summary table cells


def one_line(text: str) -> str:
    """Collapse whitespace (newlines included) to single spaces."""
    return " ".join(str(text).split())


def reason_of(model: str, error: str) -> str:
    """The error on one line, without the model path that the case already names."""
    line = one_line(error)
    prefix = f"{model}: "
    return line[len(prefix) :] if line.startswith(prefix) else line


def fold_cases(outcomes: Sequence[Any], labels: Mapping[str, str] | None = None) -> list[CiCase]:
    """One case per FoldFileOutcome (``labels`` maps ``outcome.model`` to its label)."""
    from bnfold.errors import EXIT_NOT_EQUIVALENT, EXIT_OK

    cases = []
    for o in outcomes:
        name = (labels or {}).get(o.model, o.model)
        if o.exit_code == EXIT_OK:
            status: CaseStatus = "passed"
            message = ""
        elif o.exit_code == EXIT_NOT_EQUIVALENT:
            status = "failed"
            message = _not_equivalent_reason(o)
        else:
            status = "error"
            message = reason_of(o.model, o.error or f"exit code {o.exit_code}")
        cases.append(CiCase(name, o.model, status, message, o.seconds, _fold_columns(o)))
    return cases


def _not_equivalent_reason(outcome: Any) -> str:
    """The verification's summary (which output, by how much), else the error."""
    summary = getattr(outcome.verification, "summary", None)
    if callable(summary):
        return one_line(summary())
    return reason_of(outcome.model, outcome.error or "folded model is not equivalent")


def _fold_columns(outcome: Any) -> dict[str, str]:
    bn = dropout = "-"
    if outcome.report is not None:
        c = outcome.report.counts()
        bn = f"{c['batchnorm']['folded']}/{c['batchnorm']['found']}"
        dropout = f"{c['dropout']['removed']}/{c['dropout']['found']}"
    verified = "-" if outcome.verification is None else ("yes" if outcome.verification else "NO")
    return {"BN folded": bn, "Dropout removed": dropout, "verified": verified}


def check_cases(results: Sequence[Any], labels: Mapping[str, str] | None = None) -> list[CiCase]:
    """One case per CheckResult: failed while anything is foldable, error when unreadable."""
    cases = []
    for r in results:
        name = (labels or {}).get(r.model, r.model)
        if r.error is not None:
            status: CaseStatus = "error"
            message = reason_of(r.model, r.error)
        elif r:
            status, message = "passed", ""
        else:
            status, message = "failed", r.counts_line()
        columns = {"result": r.counts_line() if r.error is None else "error"}
        cases.append(CiCase(name, r.model, status, message, r.seconds, columns))
    return cases


def tally(cases: Sequence[CiCase], passed: str, failed: str) -> str:
    """``12 models: 3 folded, 1 not equivalent, 8 failed`` (words per command)."""
    counts = {s: sum(c.status == s for c in cases) for s in ("passed", "failed", "error")}
    noun = "model" if len(cases) == 1 else "models"
    return (
        f"{len(cases)} {noun}: {counts['passed']} {passed}, {counts['failed']} {failed}, "
        f"{counts['error']} failed"
    )
