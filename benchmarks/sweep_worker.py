"""Isolated job runners for the sweep: exports and onnxruntime checks in a child process.

A torch export can hang or segfault, and a broken model can take onnxruntime down with it;
either would end an hours-long sweep. :class:`Worker` runs ``module:function`` calls in one
long-lived spawned child, with a time limit; a crash or a timeout costs that one call and a
fresh child serves the next. The job functions the sweep sends live here too (the checks)
and in ``sweep_models.py`` (the exports).
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import multiprocessing
import os
import traceback
from collections.abc import Mapping, Sequence
from multiprocessing.connection import Connection
from typing import Any

logger = logging.getLogger(__name__)


def _serve(conn: Connection, quiet: bool) -> None:
    """Child loop: run ``(func, args)`` jobs until ``None`` arrives."""
    if quiet:  # exporters and tools print pages; the parent reports results itself
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
    while True:
        job = conn.recv()
        if job is None:
            return
        func, args = job
        module, name = func.split(":")
        try:
            value = getattr(importlib.import_module(module), name)(*args)
            conn.send({"status": "ok", "value": value})
        except Exception as err:  # a failing job is a result, never the end of the worker
            conn.send(
                {
                    "status": "error",
                    "error": one_line(err),
                    "traceback": traceback.format_exc()[-3000:],
                }
            )


class Worker:
    """One spawned child serving calls; restarted after a crash, a timeout or ``recycle_every``."""

    def __init__(self, name: str, timeout_s: float, recycle_every: int = 0) -> None:
        self.name = name
        self.timeout_s = timeout_s
        self.recycle_every = recycle_every
        self._ctx = multiprocessing.get_context("spawn")
        self._child: tuple[Any, Connection] | None = None
        self._served = 0

    def call(self, func: str, *args: Any, timeout_s: float | None = None) -> dict[str, Any]:
        """Run ``func`` (``"module:function"``) on ``args``; always returns a status dict."""
        if self.recycle_every and self._served >= self.recycle_every:
            self.close()
        process, conn = self._start()
        limit = self.timeout_s if timeout_s is None else timeout_s
        self._served += 1
        try:
            conn.send((func, args))
            if conn.poll(limit):
                return conn.recv()
            status = {"status": "timeout", "error": f"timed out after {limit:.0f} s"}
        except (EOFError, BrokenPipeError, ConnectionResetError, OSError):
            process.join(5)
            status = {"status": "crash", "error": f"crashed (exit code {process.exitcode})"}
        self._stop(kill=True)
        logger.warning("%s worker: %s: %s", self.name, func, status["error"])
        return status

    def close(self) -> None:
        if self._child is not None:
            self._stop(kill=False)

    def __enter__(self) -> Worker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _start(self) -> tuple[Any, Connection]:
        if self._child is None:
            parent, child = self._ctx.Pipe()
            process = self._ctx.Process(
                target=_serve, args=(child, True), name=f"sweep-{self.name}", daemon=True
            )
            process.start()
            child.close()
            self._child = (process, parent)
            self._served = 0
        return self._child

    def _stop(self, kill: bool) -> None:
        assert self._child is not None
        process, conn = self._child
        self._child = None
        if not kill:
            with contextlib.suppress(BrokenPipeError, OSError):
                conn.send(None)
            process.join(10)
        if process.is_alive():
            process.kill()
            process.join()
        conn.close()


def one_line(err: BaseException, limit: int = 160) -> str:
    """``Type: message`` on one line, shortened."""
    text = " ".join(str(err).split())
    text = f"{type(err).__name__}: {text}" if text else type(err).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"


# ---- jobs run in the child ------------------------------------------------------------


def _reference(path: str, training: bool) -> Any:
    """The model to compare against: the file, or its inference-mode reading."""
    if not training:
        return path
    from bnfold.onnx.eval_mode import inference_reference

    return inference_reference(path)


def ort_runs(path: str, shapes: Mapping[str, Sequence[int]] | None) -> str:
    """Run the original once at ORT_DISABLE_ALL; "ok" or raises (the worker reports why)."""
    from bnfold.latency.inputs import make_feeds
    from bnfold.latency.sessions import create_session

    session = create_session(path, "disable").session
    names = {i.name for i in session.get_inputs()}
    feeds = make_feeds(session, {k: v for k, v in (shapes or {}).items() if k in names})
    session.run(None, feeds)
    return "ok"


def verify_output(
    original: str, candidate: str, shapes: Mapping[str, Sequence[int]] | None, training: bool
) -> dict[str, Any]:
    """``bnfold.verify(original, candidate)`` (ORT_DISABLE_ALL both sides), as a dict."""
    import bnfold

    result = bnfold.verify(
        _reference(original, training), candidate, shapes=dict(shapes or {}) or None
    )
    return {"equivalent": bool(result), "summary": result.summary()}


def independent_error(
    original: str, candidate: str, shapes: Mapping[str, Sequence[int]] | None, training: bool
) -> dict[str, Any]:
    """A second opinion that does not use bnfold's verifier: max |Δ| over 2 input sets.

    Passes when max |Δ| ≤ 1e-4 · max(1, max |ref|) (the compare_tools criterion).
    """
    import numpy as np
    import onnxruntime as ort

    from bnfold.latency.inputs import make_feeds

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    ref_model = _reference(original, training)
    ref_source = ref_model if isinstance(ref_model, str) else ref_model.SerializeToString()
    ref = ort.InferenceSession(ref_source, options, providers=["CPUExecutionProvider"])
    cand = ort.InferenceSession(candidate, options, providers=["CPUExecutionProvider"])
    names = {i.name for i in ref.get_inputs()}
    shapes = {k: v for k, v in (shapes or {}).items() if k in names}
    worst, scale = 0.0, 0.0
    for seed in (0, 1):
        feeds = make_feeds(ref, shapes, seed=seed)
        for want, got in zip(ref.run(None, feeds), cand.run(None, feeds), strict=True):
            want, got = np.asarray(want, np.float64), np.asarray(got, np.float64)
            if want.shape != got.shape:
                return {"passed": False, "max_abs": None, "problem": "shape differs"}
            if want.size:
                worst = max(worst, float(np.nanmax(np.abs(got - want))))
                scale = max(scale, float(np.nanmax(np.abs(want))))
    return {"passed": worst <= 1e-4 * max(1.0, scale), "max_abs": worst, "ref_scale": scale}
