"""How many CPU threads verification may use, and the pool that runs sessions side by side.

Verification runs up to three onnxruntime sessions (reference, candidate, jittered
reference) on the same inputs. Running them side by side, each with a share of the
cores, beats running them one after another with every core each: onnxruntime's
intra-op pool scales poorly on a few cores, and on a shared machine one descheduled
pool thread stalls the whole run. The budget is the process's CPU count unless
:func:`set_thread_budget` says otherwise (``fold_many`` gives each worker process its
share, so ``-j 2`` on 2 cores runs every session on one thread).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import os
from collections.abc import Iterator

_budget: int | None = None


def cpu_count() -> int:
    """CPUs this process may run on (its affinity mask where the OS has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def set_thread_budget(threads: int | None) -> None:
    """Limit verification in this process to ``threads`` CPU threads (None: all CPUs)."""
    global _budget
    if threads is not None and threads < 1:
        raise ValueError(f"thread budget must be at least 1, not {threads}")
    _budget = threads


def thread_budget() -> int:
    """The CPU threads verification may use in this process."""
    return _budget if _budget is not None else cpu_count()


@dataclasses.dataclass(frozen=True)
class Plan:
    """``workers`` sessions run side by side, each with ``intra_op`` onnxruntime threads."""

    workers: int
    intra_op: int


def plan(sessions: int, budget: int | None = None) -> Plan:
    """Share ``budget`` threads among up to ``sessions`` concurrent sessions."""
    threads = thread_budget() if budget is None else budget
    workers = max(1, min(sessions, threads))
    return Plan(workers, max(1, threads // workers))


@contextlib.contextmanager
def worker_pool(workers: int) -> Iterator[concurrent.futures.Executor]:
    """A thread pool for session creation and runs (onnxruntime releases the GIL)."""
    pool = concurrent.futures.ThreadPoolExecutor(
        max_workers=workers, thread_name_prefix="bnfold-verify"
    )
    try:
        yield pool
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
