"""Human-readable output of fold results (rich on a terminal, plain text otherwise)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import click


def render_outcome(outcome: Any) -> None:
    """Print the fold report, verification and bench summary of one model."""
    report = outcome.report
    c = report.counts()
    bn, dr = c["batchnorm"], c["dropout"]
    click.echo(f"{outcome.model}")
    click.echo(
        f"  BatchNorm: {bn['found']} found, {click.style(str(bn['folded']), bold=True)} folded"
        + (f", {bn['rewritten']} rewritten" if bn["rewritten"] else "")
        + f", {bn['left']} left"
        + (f", {bn['kept']} kept" if bn["kept"] else "")
    )
    click.echo(
        f"  Dropout:   {dr['found']} found, {dr['removed']} removed, {dr['left']} left"
        + (f", {dr['kept']} kept" if dr["kept"] else "")
    )
    for entry in report.left:
        where = f"{entry.scope}/" if entry.scope else ""
        click.echo(f"    left {entry.kind} {where}{entry.name}: {entry.reason}")
    for entry in report.kept:
        where = f"{entry.scope}/" if entry.scope else ""
        click.echo(f"    kept {entry.kind} {where}{entry.name}: {entry.reason}")
    for warning in report.warnings:
        click.secho(f"  warning: {warning}", fg="yellow", err=True)
    if outcome.verification is not None:
        for line in outcome.verification.describe().splitlines():
            click.echo(f"  {line}")
    if outcome.written:
        sizes = outcome.sizes
        size_note = ""
        if sizes:
            size_note = f" ({_mb(sizes['input_bytes'])} → {_mb(sizes['output_bytes'])})"
        click.echo(f"  wrote {outcome.output}{size_note}")
    elif outcome.output:
        click.echo(f"  not written: {outcome.output}")
    if outcome.bench is not None:
        for line in outcome.bench.describe().splitlines():
            click.echo(f"  {line}")


STATUS_WORDS = {"passed": "ok", "failed": "not-equivalent", "error": "error"}
STATUS_STYLE = {"passed": "green", "failed": "red", "error": "red"}


def render_summary(cases: Sequence[Any], tally: str, title: str = "bnfold summary") -> None:
    """The batch summary, readable at 80 columns.

    stdout: a table (model names in full, wrapped rather than shortened) and the tally
    line; stderr: one ``model: reason`` line per failure, shortened to the width.
    """
    from rich import box
    from rich.console import Console
    from rich.table import Table

    out = Console(highlight=False)
    err = Console(stderr=True, highlight=False)
    columns = list(cases[0].columns) if cases else []
    table = Table(title=title, box=box.SIMPLE_HEAD, pad_edge=False)
    table.add_column("model", overflow="fold")
    table.add_column("status", overflow="fold")
    for col in columns:
        table.add_column(col, overflow="fold")
    for case in cases:
        status = f"[{STATUS_STYLE[case.status]}]{STATUS_WORDS[case.status]}[/]"
        table.add_row(case.name, status, *case.columns.values(), style=None)
    out.print(table)
    shortened = False
    for case in cases:
        if case.status != "passed":
            line, cut = fit(f"{case.name}: {case.message}", err.width)
            shortened |= cut
            err.print(line, markup=False, soft_wrap=True)
    if shortened:
        err.print("(reasons shortened to fit; --json has them in full)", soft_wrap=True)
    out.print(tally, markup=False, soft_wrap=True)


def fit(line: str, width: int) -> tuple[str, bool]:
    """``line`` cut to ``width`` columns with an ellipsis; True when it was cut."""
    if len(line) <= width:
        return line, False
    return line[: max(width - 1, 1)] + "…", True


@contextlib.contextmanager
def batch_progress(
    total: int, *, enabled: bool
) -> Iterator[tuple[Callable[[str], None], Callable[[str, str], None]]]:
    """A rich progress bar on stderr (only on a terminal).

    Yields ``advance(name)`` (a model finished) and ``stage(name, stage)`` (a stage began).
    """
    import sys

    if not enabled or total < 2 or not sys.stderr.isatty():
        yield (lambda name: None), (lambda name, stage: None)
        return
    from rich.console import Console
    from rich.progress import Progress

    with Progress(console=Console(stderr=True), transient=True) as progress:
        task = progress.add_task("folding", total=total)
        yield (
            lambda name: progress.update(task, advance=1),
            lambda name, stage: progress.update(task, description=f"{name}: {stage}"),
        )


BIG_MODEL_BYTES = 100_000_000
STAGES = ("load", "fold", "verify", "write")


@contextlib.contextmanager
def stage_progress(path: Any, *, enabled: bool) -> Iterator[Callable[[str], None] | None]:
    """For one model over 100 MB on a terminal: a bar over load / fold / verify / write.

    Yields the ``progress(stage)`` callback for ``fold_file``, or None when not shown.
    """
    import sys
    from pathlib import Path

    try:
        big = Path(path).stat().st_size > BIG_MODEL_BYTES
    except OSError:
        big = False
    if not enabled or not big or not sys.stderr.isatty():
        yield None
        return
    from rich.console import Console
    from rich.progress import Progress

    with Progress(console=Console(stderr=True), transient=True) as progress:
        task = progress.add_task(f"{Path(path).name}: load", total=len(STAGES))

        def on_stage(stage: str) -> None:
            done = STAGES.index(stage) if stage in STAGES else len(STAGES) - 1
            progress.update(task, completed=done, description=f"{Path(path).name}: {stage}")

        yield on_stage


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 1e5 else f"{n / 1e3:.1f} kB"
