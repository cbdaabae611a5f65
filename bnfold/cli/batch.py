"""Folding many models: expand folders, run workers in parallel, print a summary table."""

from __future__ import annotations

import concurrent.futures
import os
from pathlib import Path

from bnfold.errors import InputError
from bnfold.workflow import FoldFileOptions, FoldFileOutcome, default_output, fold_file


def expand_models(args: tuple[Path, ...]) -> list[Path]:
    """Files as given; folders expand to their ``*.onnx`` files (folded outputs skipped)."""
    paths: list[Path] = []
    for arg in args:
        if arg.is_dir():
            found = sorted(
                p for p in arg.glob("*.onnx") if p.is_file() and not p.name.endswith(".folded.onnx")
            )
            if not found:
                raise InputError(f"{arg}: folder contains no .onnx models")
            paths.extend(found)
        else:
            paths.append(arg)
    return paths


def run_batch(
    paths: list[Path],
    options: FoldFileOptions,
    output_dir: Path | None,
    jobs: int | None,
    *,
    quiet: bool = False,
) -> list[FoldFileOutcome]:
    """Fold each model in a worker process; one bad model never stops the others."""
    if output_dir is not None:
        if output_dir.exists() and not output_dir.is_dir():
            raise InputError(f"{output_dir}: --output must be a folder when folding several models")
        output_dir.mkdir(parents=True, exist_ok=True)
    tasks = []
    for path in paths:
        opts = FoldFileOptions(**{**options.__dict__})
        if output_dir is not None:
            opts.output = output_dir / default_output(path).name
        tasks.append((path, opts))
    workers = max(1, min(jobs or os.cpu_count() or 1, len(tasks)))
    outcomes: dict[int, FoldFileOutcome] = {}
    from bnfold.cli.render import batch_progress, render_summary

    with batch_progress(len(tasks), enabled=not quiet) as advance:
        if workers == 1:
            for i, (path, opts) in enumerate(tasks):
                outcomes[i] = fold_file(path, opts)
                advance(path.name)
        else:
            with concurrent.futures.ProcessPoolExecutor(max_workers=workers) as pool:
                futures = {pool.submit(fold_file, p, o): i for i, (p, o) in enumerate(tasks)}
                for fut in concurrent.futures.as_completed(futures):
                    i = futures[fut]
                    outcomes[i] = _result_or_crash(fut, tasks[i][0])
                    advance(tasks[i][0].name)
    ordered = [outcomes[i] for i in range(len(tasks))]
    if not quiet:
        render_summary(ordered)
    return ordered


def _result_or_crash(fut: concurrent.futures.Future, path: Path) -> FoldFileOutcome:  # type: ignore[type-arg]
    try:
        return fut.result()
    except Exception as err:  # a worker died (e.g. out of memory): report, carry on
        return FoldFileOutcome(model=str(path), exit_code=2, error=f"worker failed: {err}")
