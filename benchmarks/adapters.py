"""One adapter per optimiser compared with bnfold: file in → file out, timed in-process.

Each adapter has a ``prepare()`` that imports the tool (so import time is not counted and a
missing tool reads "not installed") and a ``run(src, dst)`` doing what a user of that tool
would do by default to clean a model for inference. :func:`run_job` wraps both and never
raises: every failure comes back as a status string for the results table.
"""

from __future__ import annotations

import importlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Adapter:
    """A tool: the modules it needs and the file → file call."""

    name: str
    modules: tuple[str, ...]
    run: Callable[[str, str], None]
    what: str  # one line for the README / table footnote


def _bnfold(src: str, dst: str) -> None:
    from bnfold.onnx.api import fold_onnx

    fold_onnx(src).save(dst)


def _onnxoptimizer(src: str, dst: str) -> None:
    import onnx
    import onnxoptimizer

    passes = onnxoptimizer.get_fuse_and_elimination_passes()
    onnx.save(onnxoptimizer.optimize(onnx.load(src), passes), dst)


def _onnxsim(src: str, dst: str) -> None:
    import onnx
    import onnxsim

    model, _ = onnxsim.simplify(onnx.load(src))
    onnx.save(model, dst)


def _onnxslim(src: str, dst: str) -> None:
    import onnxslim

    onnxslim.slim(src, dst)


def _ort_basic(src: str, dst: str) -> None:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.optimized_model_filepath = dst
    options.log_severity_level = 3
    ort.InferenceSession(src, options, providers=["CPUExecutionProvider"])


def _onnx_ir_round_trip(src: str, dst: str) -> None:
    import onnx_ir

    onnx_ir.save(onnx_ir.load(src), dst)


def _onnxscript(src: str, dst: str) -> None:
    import onnx_ir
    import onnxscript.optimizer
    import onnxscript.rewriter

    model = onnx_ir.load(src)
    model = onnxscript.optimizer.optimize(model)
    model = onnxscript.rewriter.rewrite(model)
    onnx_ir.save(model, dst)


ADAPTERS: dict[str, Adapter] = {
    a.name: a
    for a in (
        Adapter("bnfold", ("bnfold.onnx.api",), _bnfold, "fold_onnx(path).save(out)"),
        Adapter(
            "onnxoptimizer",
            ("onnx", "onnxoptimizer"),
            _onnxoptimizer,
            "optimize(model, get_fuse_and_elimination_passes())",
        ),
        Adapter("onnxsim", ("onnx", "onnxsim"), _onnxsim, "simplify(model)"),
        Adapter("onnxslim", ("onnxslim",), _onnxslim, "slim(path, out)"),
        Adapter(
            "ort-basic",
            ("onnxruntime",),
            _ort_basic,
            "InferenceSession with ORT_ENABLE_BASIC and optimized_model_filepath",
        ),
        Adapter(
            "onnxscript",
            ("onnx_ir", "onnxscript.optimizer", "onnxscript.rewriter"),
            _onnxscript,
            "optimizer.optimize + rewriter.rewrite (default rules)",
        ),
    )
}


# Timed next to the tools but not a tool: what any onnx-ir based tool pays before any pass.
FLOOR = Adapter(
    "onnx-ir load+save",
    ("onnx_ir",),
    _onnx_ir_round_trip,
    "onnx_ir.load + onnx_ir.save, no pass: the floor of any onnx-ir based tool",
)


def _adapter(tool: str) -> Adapter:
    return FLOOR if tool == FLOOR.name else ADAPTERS[tool]


def prepare(tool: str) -> str | None:
    """Import the tool's modules; return None when ready, else the status to report."""
    for module in _adapter(tool).modules:
        try:
            importlib.import_module(module)
        except ImportError as err:
            logger.info("%s: %s", tool, err)
            return "not installed"
        except Exception as err:
            return f"error: import {module}: {_one_line(err)}"
    return None


def run_job(tool: str, src: str, dst: str) -> dict[str, Any]:
    """Run one tool on one model: ``{"status": "ok", "seconds": …}`` or a failure status."""
    status = prepare(tool)
    if status is not None:
        return {"status": status}
    start = time.perf_counter()
    try:
        _adapter(tool).run(src, dst)
    except Exception as err:  # any tool failure is a result, not a crash of the benchmark
        return {"status": f"error: {_one_line(err)}"}
    return {"status": "ok", "seconds": time.perf_counter() - start}


def _one_line(err: BaseException, limit: int = 80) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    text = f"{type(err).__name__}: {text}" if type(err).__name__ not in text else text
    return text if len(text) <= limit else text[: limit - 1] + "…"
