"""Human-readable output of fold results (rich on a terminal, plain text otherwise)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
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
    )
    click.echo(f"  Dropout:   {dr['found']} found, {dr['removed']} removed, {dr['left']} left")
    for entry in report.left:
        where = f"{entry.scope}/" if entry.scope else ""
        click.echo(f"    left {entry.kind} {where}{entry.name}: {entry.reason}")
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


def render_summary(outcomes: list[Any]) -> None:
    """One row per model: status, BN folded/found, Dropout removed, max error, output."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title="bnfold summary")
    for col in ("model", "status", "BN folded", "Dropout removed", "verified", "output / error"):
        table.add_column(col)
    for o in outcomes:
        bn = dr = "-"
        if o.report is not None:
            c = o.report.counts()
            bn = f"{c['batchnorm']['folded']}/{c['batchnorm']['found']}"
            dr = f"{c['dropout']['removed']}/{c['dropout']['found']}"
        verified = "-" if o.verification is None else ("yes" if o.verification else "NO")
        status = {"ok": "[green]ok[/]", "error": "[red]error[/]"}.get(o.status, "[red]FAIL[/]")
        table.add_row(o.model, status, bn, dr, verified, o.error or (o.output or ""))
    Console().print(table)


@contextlib.contextmanager
def batch_progress(total: int, *, enabled: bool) -> Iterator[Callable[[str], None]]:
    """A rich progress bar on stderr (only on a terminal); yields ``advance(label)``."""
    import sys

    if not enabled or total < 2 or not sys.stderr.isatty():
        yield lambda label: None
        return
    from rich.progress import Progress

    with Progress(transient=True) as progress:
        task = progress.add_task("folding", total=total)
        yield lambda label: progress.update(task, advance=1, description=label)


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 1e5 else f"{n / 1e3:.1f} kB"
