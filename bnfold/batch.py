"""Folding many models: expand folders, plan outputs, run worker processes in parallel.

One bad model never stops the others: each model's errors become its outcome, and a
worker process that dies (out of memory, a crash in native code) is retried alone so
that only the model that kills it is reported. Nothing here prints: ``fold_many``
returns the outcomes and reports progress through a callback; the CLI renders both.
The output folder is created only when a model is written: a run where every model
fails leaves no folder behind.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import logging
import multiprocessing
import os
import signal
from collections.abc import Callable, Sequence
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

from bnfold.errors import EXIT_BAD_INPUT, InputError
from bnfold.workflow import FoldFileOptions, FoldFileOutcome, default_output, fold_file

logger = logging.getLogger(__name__)

Task = tuple[Path, FoldFileOptions]
Progress = Callable[[str], None]  # called with a model's file name once it is done
StageProgress = Callable[[str, str], None]  # (model file name, stage) as a stage starts


def expand_models(args: Sequence[str | os.PathLike[str]]) -> list[Path]:
    """Files as given; folders expand to their ``*.onnx`` files (folded outputs skipped).

    A model named twice (directly or through a folder) is folded once.
    """
    return list(expand_models_labelled(args))


def expand_models_labelled(args: Sequence[str | os.PathLike[str]]) -> dict[Path, str]:
    """Like ``expand_models``, with a display label per model (in order).

    A model found in a folder argument is labelled relative to that folder
    (``models/ → "resnet.onnx"``); a file argument keeps its path as given. Labels that
    would collide (two folders holding ``m.onnx``) fall back to the path.
    """
    labels: dict[Path, str] = {}
    seen: set[Path] = set()
    for arg in map(Path, args):
        if arg.is_dir():
            found = sorted(
                p for p in arg.glob("*.onnx") if p.is_file() and not p.name.endswith(".folded.onnx")
            )
            if not found:
                raise InputError(f"{arg}: folder contains no .onnx models")
            named = [(p, p.name) for p in found]
        else:
            named = [(arg, str(arg))]
        for path, label in named:
            key = path.resolve()
            if key not in seen:
                seen.add(key)
                labels[path] = label
    counts: dict[str, int] = {}
    for label in labels.values():
        counts[label] = counts.get(label, 0) + 1
    return {p: (label if counts[label] == 1 else str(p)) for p, label in labels.items()}


def plan_tasks(paths: list[Path], options: FoldFileOptions, output_dir: Path | None) -> list[Task]:
    """One (model, options) per input; refuse two models that would write the same file.

    The output folder is not created here: each model creates it when it is written.
    """
    if output_dir is not None and output_dir.exists() and not output_dir.is_dir():
        raise InputError(f"{output_dir}: --output must be a folder when folding several models")
    tasks: list[Task] = []
    targets: dict[Path, Path] = {}
    for path in paths:
        opts = dataclasses.replace(options)
        if output_dir is not None:
            opts.output = output_dir / default_output(path).name
            opts.create_output_dir = True
        target = path if opts.in_place else (opts.output or default_output(path))
        clash = targets.get(target.resolve())
        if clash is not None:
            raise InputError(
                f"{clash} and {path} would both be written to {target}; fold them into "
                "separate output folders"
            )
        targets[target.resolve()] = path
        tasks.append((path, opts))
    return tasks


def fold_many(
    paths: Sequence[str | os.PathLike[str]],
    options: FoldFileOptions,
    *,
    output_dir: Path | None = None,
    jobs: int | None = None,
    progress: Progress | None = None,
    stages: StageProgress | None = None,
) -> list[FoldFileOutcome]:
    """Fold each model (in worker processes when ``jobs`` allows); outcomes in input order.

    ``options.shapes`` and ``options.inputs`` apply to the models that have an input of
    that name. ``progress(name)`` is called as each model finishes; ``stages(name,
    stage)`` as each stage of a model starts (only when models run one at a time, in this
    process). Ctrl-C aborts the running models, skips the queued ones and raises
    KeyboardInterrupt.
    """
    batch_options = dataclasses.replace(options, only_matching_inputs=True)
    tasks = plan_tasks([Path(p) for p in paths], batch_options, output_dir)
    workers = max(1, min(jobs or os.cpu_count() or 1, len(tasks)))
    advance = progress or _no_progress
    created = _missing_folders(output_dir)
    try:
        if workers == 1:
            outcomes = {}
            for i, (path, opts) in enumerate(tasks):
                on_stage = None if stages is None else functools.partial(stages, path.name)
                outcomes[i] = fold_file(path, opts, on_stage)
                advance(path.name)
        else:
            outcomes = _run_pool(tasks, workers, advance)
    finally:
        _remove_if_empty(created)
    return [outcomes[i] for i in range(len(tasks))]


def _missing_folders(folder: Path | None) -> list[Path]:
    """``folder`` and its parents that do not exist yet, deepest first."""
    missing: list[Path] = []
    while folder is not None and not folder.exists() and folder.parent != folder:
        missing.append(folder)
        folder = folder.parent
    return missing


def _remove_if_empty(folders: list[Path]) -> None:
    """Remove the output folders this run created when nothing was written into them
    (a model that fails verification creates them for its temporary file)."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            return


def _no_progress(name: str) -> None:
    """The default progress callback: nothing."""


def _run_pool(tasks: list[Task], workers: int, advance: Progress) -> dict[int, FoldFileOutcome]:
    """Run tasks in a process pool; models caught in a pool crash are retried one by one.

    On Ctrl-C the running models abort (their temporary files are removed) and queued
    ones are skipped: nothing is written after the interrupt.
    """
    outcomes: dict[int, FoldFileOutcome] = {}
    crashed: list[int] = []
    stop = multiprocessing.Event()
    threads = worker_threads(workers)
    preload()
    with concurrent.futures.ProcessPoolExecutor(
        max_workers=workers, initializer=_init_worker, initargs=(stop, threads)
    ) as pool:
        futures = {pool.submit(_fold_unless_stopped, *tasks[i]): i for i in largest_first(tasks)}
        try:
            for fut in concurrent.futures.as_completed(futures):
                i = futures[fut]
                try:
                    outcomes[i] = fut.result()
                except BrokenProcessPool:
                    crashed.append(i)  # this model, or one running beside it, killed a worker
                    continue
                except Exception as err:
                    message = f"worker failed: {type(err).__name__}: {err}"
                    outcomes[i] = _failed(tasks[i][0], message)
                advance(tasks[i][0].name)
        except BaseException:
            stop.set()
            pool.shutdown(wait=True, cancel_futures=True)
            raise
    for i in sorted(crashed):
        outcomes[i] = _run_isolated(*tasks[i])
        advance(tasks[i][0].name)
    return outcomes


def largest_first(tasks: list[Task]) -> list[int]:
    """Task indices, biggest model file first: the last models to start are then the
    quick ones, so the workers finish together instead of one folding a big model alone."""

    def size(i: int) -> int:
        try:
            return tasks[i][0].stat().st_size
        except OSError:
            return 0  # reported by its worker

    return sorted(range(len(tasks)), key=lambda i: (-size(i), i))


_STOP: Any = None  # the pool's stop event, inside a worker process
_INTERRUPTED = False  # Ctrl-C reached this worker while it was idle


def worker_threads(workers: int) -> int:
    """CPU threads each of ``workers`` processes may use: its share of this machine."""
    from bnfold.equivalence.threads import cpu_count

    return max(1, cpu_count() // workers)


def preload() -> None:
    """Import the heavy libraries once, before the pool starts its workers.

    Forked workers inherit them instead of each importing them again (onnx, onnx-ir,
    numpy and the fold passes take most of a worker's start-up). onnxruntime is left to
    the workers: nothing of it should be initialised in the parent of a fork.
    """
    import bnfold.equivalence.pending
    import bnfold.onnx.api  # noqa: F401


def _init_worker(stop: Any = None, threads: int | None = None) -> None:
    """Worker start-up: its thread share, and Ctrl-C while idle only marks it interrupted.

    ``threads``: onnxruntime sessions (and numpy's BLAS, where not set by the user) use
    at most this many threads, so ``-j 2`` on 2 cores does not run 4 busy threads.
    Left at Python's default, a SIGINT landing while the worker waits for work kills it
    inside multiprocessing's loop, which prints a traceback; ignored, the worker could
    still pick up a queued model before the parent's stop event is set.
    """
    global _STOP
    _STOP = stop
    signal.signal(signal.SIGINT, _note_interrupt)
    if threads is not None:
        for var in _THREAD_VARS:
            os.environ.setdefault(var, str(threads))
        from bnfold.equivalence.threads import set_thread_budget

        set_thread_budget(threads)
    import onnxruntime  # noqa: F401  (once per worker, not in its first model's time)


_THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def _note_interrupt(signum: int, frame: Any) -> None:
    global _INTERRUPTED
    _INTERRUPTED = True


def _fold_unless_stopped(path: Path, options: FoldFileOptions) -> FoldFileOutcome:
    """fold_file in a worker; skipped once the run is interrupted."""
    if _INTERRUPTED or (_STOP is not None and _STOP.is_set()):
        return _failed(path, "not folded: the run was interrupted")
    signal.signal(signal.SIGINT, signal.default_int_handler)  # a running model aborts
    try:
        return fold_file(path, options)
    except KeyboardInterrupt:
        if _STOP is not None:
            _STOP.set()  # Ctrl-C reached this worker too: skip what is still queued
        raise
    finally:
        signal.signal(signal.SIGINT, _note_interrupt)


def _run_isolated(path: Path, opts: FoldFileOptions) -> FoldFileOutcome:
    """Fold one model in a fresh single-worker pool, so a crash is pinned on it."""
    logger.info("retrying %s alone after a worker crash", path)
    with concurrent.futures.ProcessPoolExecutor(
        max_workers=1, initializer=_init_worker, initargs=(None, worker_threads(1))
    ) as pool:
        try:
            return pool.submit(_fold_unless_stopped, path, opts).result()
        except BrokenProcessPool:
            return _failed(path, "worker process died while folding it (out of memory or a crash)")
        except Exception as err:
            return _failed(path, f"worker failed: {type(err).__name__}: {err}")


def _failed(path: Path, message: str) -> FoldFileOutcome:
    return FoldFileOutcome(model=str(path), exit_code=EXIT_BAD_INPUT, error=message)
