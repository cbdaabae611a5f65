"""onnxruntime sessions for benchmarking: optimisation levels, threads, providers."""

from __future__ import annotations

import functools
import logging
import os
import time
from dataclasses import dataclass
from typing import Any

from bnfold.errors import DependencyError, InputError, ModelLoadError
from bnfold.ort_quiet import quiet_session_options

logger = logging.getLogger(__name__)

#: Level names accepted by bnfold, in increasing order of optimisation.
LEVELS: tuple[str, ...] = ("disable", "basic", "extended", "all")
PROVIDERS: tuple[str, ...] = ("cpu", "cuda")

_LEVEL_ENUM = {
    "disable": "ORT_DISABLE_ALL",
    "basic": "ORT_ENABLE_BASIC",
    "extended": "ORT_ENABLE_EXTENDED",
    "all": "ORT_ENABLE_ALL",
}
_PROVIDER_NAMES = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
}
CUDA_UNAVAILABLE = "CUDA provider not available (install onnxruntime-gpu on a machine with a GPU)"


def check_level(level: str) -> str:
    """Return ``level`` if it is a known level name, else raise InputError."""
    if level not in _LEVEL_ENUM:
        raise InputError(f"unknown optimisation level {level!r} (choose from {', '.join(LEVELS)})")
    return level


def session_options(level: str, threads: int | None = None, *, spinning: bool = True) -> Any:
    """SessionOptions for one level; ``threads`` sets intra-op threads (None: ORT default).

    ``spinning=False`` stops idle pool threads from busy-waiting for work: sessions timed
    in turn must not keep cores busy while another session runs.
    """
    import onnxruntime as ort

    options = quiet_session_options()
    options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, _LEVEL_ENUM[level])
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return options


def providers_for(provider: str) -> list[str]:
    """The onnxruntime provider list for ``cpu`` or ``cuda``; DependencyError if unavailable."""
    if provider not in _PROVIDER_NAMES:
        raise InputError(f"unknown provider {provider!r} (choose from {', '.join(PROVIDERS)})")
    if provider == "cuda" and not cuda_available():
        raise DependencyError(CUDA_UNAVAILABLE)
    return list(_PROVIDER_NAMES[provider])


def cuda_available() -> bool:
    """True when this onnxruntime build offers CUDAExecutionProvider."""
    import onnxruntime as ort

    return "CUDAExecutionProvider" in ort.get_available_providers()


@dataclass
class TimedSession:
    """A session and how long it took to create, in milliseconds."""

    session: Any
    create_ms: float


def create_session(
    model: str | bytes,
    level: str,
    *,
    threads: int | None = None,
    provider: str = "cpu",
    spinning: bool = True,
) -> TimedSession:
    """Create and time an InferenceSession from a path or serialised bytes.

    Raises ModelLoadError for a missing or unloadable model and DependencyError when
    CUDA was asked for but the session fell back to CPU.
    """
    import onnxruntime as ort

    providers = providers_for(provider)
    options = session_options(check_level(level), threads, spinning=spinning)
    if isinstance(model, str) and not os.path.isfile(model):
        raise ModelLoadError(f"model file not found: {model}")
    _warm_environment()
    start = time.perf_counter()
    try:
        session = ort.InferenceSession(model, options, providers=providers)
    except Exception as err:  # onnxruntime raises several unrelated types
        label = model if isinstance(model, str) else "model"
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ModelLoadError(f"onnxruntime cannot load {label}: {first}") from err
    create_ms = (time.perf_counter() - start) * 1e3
    if provider == "cuda" and session.get_providers()[0] != "CUDAExecutionProvider":
        raise DependencyError(CUDA_UNAVAILABLE)
    logger.debug("session at level %s created in %.1f ms", level, create_ms)
    return TimedSession(session, create_ms)


@functools.cache
def _warm_environment() -> None:
    """Create one trivial session so the first timed creation does not pay ORT's set-up."""
    import onnx
    import onnx.helper as oh
    import onnxruntime as ort

    graph = oh.make_graph(
        [oh.make_node("Identity", ["x"], ["y"])],
        "warm",
        [oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
        [oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])],
    )
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 13)], ir_version=8)
    try:
        ort.InferenceSession(
            model.SerializeToString(), quiet_session_options(), providers=["CPUExecutionProvider"]
        )
    except Exception as err:  # a warm-up only; never a reason to fail
        logger.debug("session warm-up failed: %s", err)
