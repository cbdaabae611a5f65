"""CI options shared by ``fold`` and ``check``: keep-lists, ``--format``, ``--junit-xml``.

The writers live in ``bnfold.ci`` (cases in, text out); this module only picks the format
(``github`` by default under GitHub Actions), prints and writes files.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])


def ci_options(func: F) -> F:
    """``--keep``, ``--keep-dropout``, ``--format`` and ``--junit-xml``."""
    options = [
        click.option(
            "--keep",
            "keep",
            multiple=True,
            metavar="NODE_GLOB",
            help="Leave BatchNorm/Dropout nodes whose name matches this glob (fnmatch) as they "
            "are; reported as 'kept by request'. Repeatable.",
        ),
        click.option(
            "--keep-dropout",
            is_flag=True,
            help="Keep every Dropout (Monte-Carlo dropout); BatchNorm still folds.",
        ),
        click.option(
            "--format",
            "fmt",
            type=click.Choice(["text", "github"]),
            default=None,
            help="Output style. github adds ::error annotations and a step summary "
            "($GITHUB_STEP_SUMMARY). Default: github when GITHUB_ACTIONS=true, else text.",
        ),
        click.option(
            "--junit-xml",
            type=click.Path(dir_okay=False, path_type=Path),
            default=None,
            metavar="PATH",
            help="Also write a JUnit XML report (one testcase per model) for CI systems.",
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def resolve_format(fmt: str | None) -> str:
    """The chosen format, or ``github`` under GitHub Actions, else ``text``."""
    if fmt is not None:
        return fmt
    return "github" if os.environ.get("GITHUB_ACTIONS") == "true" else "text"


def emit_ci(
    cases: Sequence[Any],
    *,
    fmt: str,
    junit_path: Path | None,
    suite: str,
    tally: str,
    annotations_to_stderr: bool = False,
) -> None:
    """Print GitHub annotations and append the step summary (``github``); write JUnit XML."""
    if fmt == "github":
        from bnfold.ci.github import annotations, step_summary

        text = annotations(cases, title=suite)
        if text:
            click.echo(text, nl=False, err=annotations_to_stderr)
        summary_path = os.environ.get("GITHUB_STEP_SUMMARY")
        if summary_path:
            with open(summary_path, "a", encoding="utf-8") as handle:
                handle.write(step_summary(cases, suite, tally))
    if junit_path is not None:
        from bnfold.ci.junit import junit_xml

        junit_path.write_text(junit_xml(cases, suite), encoding="utf-8")
