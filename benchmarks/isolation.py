"""Run each tool in its own long-lived worker process, so a crash or hang costs one result.

A worker imports its tool once (import time is not counted), then serves jobs over a pipe.
If it dies (a segfault in a C++ extension) or overruns the time limit, the job is reported
as an error and a fresh worker serves the next one.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
from multiprocessing.connection import Connection
from typing import Any

logger = logging.getLogger(__name__)


def _worker_main(conn: Connection, quiet: bool) -> None:
    """Serve ``(tool, src, dst)`` jobs until ``None`` arrives; runs in the child."""
    if quiet:  # tools print tables and banners; the parent reports results itself
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
    import adapters

    while True:
        job = conn.recv()
        if job is None:
            return
        conn.send(adapters.run_job(*job))


class ToolWorkers:
    """One spawned worker per tool, restarted after a crash or a timeout."""

    def __init__(self, timeout_s: float = 600.0, quiet: bool = True) -> None:
        self.timeout_s = timeout_s
        self.quiet = quiet
        self._ctx = multiprocessing.get_context("spawn")
        self._workers: dict[str, tuple[Any, Connection]] = {}

    def run(self, tool: str, src: str, dst: str) -> dict[str, Any]:
        """Run one job; always returns a result dict (``status`` is "ok" or a reason)."""
        process, conn = self._worker(tool)
        try:
            conn.send((tool, src, dst))
            if conn.poll(self.timeout_s):
                return conn.recv()
            status = f"error: timed out after {self.timeout_s:.0f} s"
        except (EOFError, BrokenPipeError, ConnectionResetError):
            process.join(5)
            status = f"error: crashed (exit code {process.exitcode})"
        self._stop(tool, kill=True)
        logger.warning("%s on %s: %s", tool, os.path.basename(src), status)
        return {"status": status}

    def close(self) -> None:
        for tool in list(self._workers):
            self._stop(tool, kill=False)

    def __enter__(self) -> ToolWorkers:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _worker(self, tool: str) -> tuple[Any, Connection]:
        if tool not in self._workers:
            parent, child = self._ctx.Pipe()
            process = self._ctx.Process(
                target=_worker_main, args=(child, self.quiet), name=f"bench-{tool}", daemon=True
            )
            process.start()
            child.close()
            self._workers[tool] = (process, parent)
        return self._workers[tool]

    def _stop(self, tool: str, kill: bool) -> None:
        process, conn = self._workers.pop(tool)
        if not kill:
            try:
                conn.send(None)
            except (BrokenPipeError, OSError):
                kill = True
            process.join(10)
        if process.is_alive():
            process.kill()
            process.join()
        conn.close()
