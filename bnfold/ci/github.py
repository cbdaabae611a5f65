"""GitHub Actions output: ``::error`` workflow commands and a Markdown step summary.

Escaping follows GitHub's toolkit (``@actions/core`` ``command.ts``): message data escapes
``%``, ``\\r`` and ``\\n``; property values also escape ``:`` and ``,``.
"""

from __future__ import annotations

from collections.abc import Sequence

from bnfold.ci.cases import CiCase


def escape_data(text: str) -> str:
    """Escape a workflow command's message."""
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def escape_property(text: str) -> str:
    """Escape a workflow command's property value (``file=…``, ``title=…``)."""
    return escape_data(text).replace(":", "%3A").replace(",", "%2C")


def annotations(cases: Sequence[CiCase], title: str) -> str:
    """One ``::error file=…,title=…::reason`` line per failed or erroring case."""
    lines = []
    for case in cases:
        if case.status == "passed":
            continue
        props = f"file={escape_property(case.file)},title={escape_property(title)}"
        lines.append(f"::error {props}::{escape_data(f'{case.name}: {case.message}')}")
    return "".join(f"{line}\n" for line in lines)


def step_summary(cases: Sequence[CiCase], title: str, tally: str) -> str:
    """A Markdown section: heading, the tally, one table row per model."""
    columns = list(cases[0].columns) if cases else []
    head = ["model", "status", *columns, "reason"]
    rows = [
        [f"`{case.name}`", _STATUS[case.status], *case.columns.values(), case.message]
        for case in cases
    ]
    lines = [f"### {title}", "", tally, ""]
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|" + "---|" * len(head))
    lines.extend("| " + " | ".join(_cell(c) for c in row) + " |" for row in rows)
    return "\n".join(lines) + "\n\n"


_STATUS = {"passed": "✅ ok", "failed": "❌ failed", "error": "⚠️ error"}


def _cell(text: str) -> str:
    """A Markdown table cell: one line, pipes escaped."""
    return " ".join(text.split()).replace("|", "\\|")
