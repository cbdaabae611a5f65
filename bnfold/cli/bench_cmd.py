"""``bnfold bench``: onnxruntime latency of a model, optionally interleaved with another."""

from __future__ import annotations

import click

from bnfold.cli.common import guarded, parse_shape, print_json

# Kept in step with bnfold.latency.sessions (a test checks); not imported, to keep start-up light.
LEVEL_NAMES = ("disable", "basic", "extended", "all")
PROVIDER_NAMES = ("cpu", "cuda")
DEFAULT_LEVELS = ("disable", "all")


def _split_levels(ctx: click.Context, param: click.Parameter, value: tuple[str, ...]) -> list[str]:
    """Accept ``--level disable --level all`` and ``--level disable,all``."""
    levels = [part.strip() for item in value for part in item.split(",") if part.strip()]
    for level in levels:
        if level not in LEVEL_NAMES:
            raise click.BadParameter(f"{level!r} is not one of {', '.join(LEVEL_NAMES)}")
    return levels


@click.command("bench")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option(
    "--vs",
    "other",
    type=click.Path(dir_okay=False),
    help="Second model, run interleaved (A B, B A, …).",
)
@click.option("--provider", type=click.Choice(PROVIDER_NAMES), default="cpu", show_default=True)
@click.option(
    "--level",
    "levels",
    multiple=True,
    callback=_split_levels,
    metavar="disable|basic|extended|all",
    help="onnxruntime graph optimisation level; repeat or comma-separate. [default: disable,all]",
)
@click.option("--all-levels", is_flag=True, help="One table over all four levels.")
@click.option(
    "--threads",
    type=click.IntRange(min=1),
    help="Intra-op threads [default: ORT's]. When models take turns (--vs) with more than one "
    "thread, idle threads do not spin, so one model's pool cannot slow the next.",
)
@click.option(
    "--iters", type=click.IntRange(min=1), help="Timed rounds [default: about 2 s per level]."
)
@click.option("--warmup", type=click.IntRange(min=0), default=5, show_default=True)
@click.option(
    "--shape",
    "shapes",
    multiple=True,
    metavar="NAME:1x3x224x224",
    help="Input shape for symbolic dimensions (default 1); repeatable.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.option("--progress/--no-progress", default=None, help="Force the progress bar on or off.")
@guarded
def bench(
    model: str,
    other: str | None,
    provider: str,
    levels: list[str],
    all_levels: bool,
    threads: int | None,
    iters: int | None,
    warmup: int,
    shapes: tuple[str, ...],
    as_json: bool,
    progress: bool | None,
) -> None:
    """Measure onnxruntime latency of MODEL (median and p90 after warm-up).

    With --vs, both models run interleaved round by round and the speed-up is the
    median of the pairwise ratios MODEL time / OTHER time, so machine drift cancels.

    \b
    Examples:
      bnfold bench model.onnx
      bnfold bench model.onnx --vs model.folded.onnx --all-levels
      bnfold bench model.onnx --provider cuda --level all --json
    """
    from bnfold.latency.api import bench as run_bench

    chosen = list(LEVEL_NAMES) if all_levels else (levels or list(DEFAULT_LEVELS))
    result = run_bench(
        model,
        vs=other,
        provider=provider,
        levels=chosen,
        threads=threads,
        iters=iters,
        warmup=warmup,
        shapes=dict(parse_shape(s) for s in shapes),
        progress=progress,
    )
    if as_json:
        print_json(result.to_dict())
    else:
        click.echo(result.describe())
        if other is not None:
            click.echo("\n" + result.headline())
