"""Latency measurement in onnxruntime: ``bench(model, vs=other)`` → :class:`BenchResult`.

Names are loaded lazily, so importing this package costs nothing until a benchmark
runs. The public entry point is ``bnfold.bench(...)``.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "bench": "bnfold.latency.api",
    "bench_models": "bnfold.latency.api",
    "BenchResult": "bnfold.latency.result",
    "LevelResult": "bnfold.latency.result",
    "ModelRun": "bnfold.latency.result",
    "LEVELS": "bnfold.latency.sessions",
    "PROVIDERS": "bnfold.latency.sessions",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
