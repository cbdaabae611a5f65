"""Latency measurement in onnxruntime: ``bench(model, vs=other)`` → :class:`BenchResult`.

Names are loaded lazily, so importing this package costs nothing until a benchmark
runs. The package itself is callable: once ``bnfold.bench`` (this package) has been
imported it shadows the ``bnfold.bench`` function as an attribute of ``bnfold``, and
``bnfold.bench(model, ...)`` must keep working either way.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import Any

_EXPORTS = {
    "bench": "bnfold.bench.api",
    "bench_models": "bnfold.bench.api",
    "BenchResult": "bnfold.bench.result",
    "LevelResult": "bnfold.bench.result",
    "ModelRun": "bnfold.bench.result",
    "LEVELS": "bnfold.bench.sessions",
    "PROVIDERS": "bnfold.bench.sessions",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class _CallableModule(types.ModuleType):
    """Lets ``bnfold.bench(...)`` call :func:`bnfold.bench.api.bench` even when shadowed."""

    def __call__(self, model: Any, **options: Any) -> Any:
        from bnfold.bench.api import bench

        return bench(model, **options)


sys.modules[__name__].__class__ = _CallableModule
