"""``bench()``: onnxruntime latency of a model, or of several interleaved round by round."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from bnfold.errors import InputError
from bnfold.latency.inputs import make_feeds
from bnfold.latency.model_stats import ModelSource, resolve_model
from bnfold.latency.progress import RoundProgress
from bnfold.latency.result import BenchResult, LevelResult, ModelRun
from bnfold.latency.sessions import check_level, create_session, providers_for
from bnfold.latency.timing import Latency, Speedup, auto_iters, run_interleaved

logger = logging.getLogger(__name__)

DEFAULT_LEVELS: tuple[str, ...] = ("disable", "all")
DEFAULT_WARMUP = 5
TARGET_S = 2.0  # auto iters: about this long per level


def bench(
    model: Any,
    *,
    vs: Any = None,
    provider: str = "cpu",
    levels: Sequence[str] = DEFAULT_LEVELS,
    threads: int | None = None,
    iters: int | None = None,
    warmup: int = DEFAULT_WARMUP,
    shapes: Mapping[str, Sequence[int]] | None = None,
    progress: bool | None = None,
    label: str | None = None,
    vs_label: str | None = None,
) -> BenchResult:
    """Time ``model`` (and ``vs``, interleaved A B, B A, …) in onnxruntime at each level.

    Models are paths, bytes, ``onnx.ModelProto`` or ``onnx_ir.Model``. ``iters=None``
    picks the number of rounds from the warm-up so that each level takes about two
    seconds. ``progress=None`` shows a bar on a terminal once a run takes a while.
    The speed-up reported is ``model``'s time over ``vs``'s, pair by pair.
    """
    models: list[tuple[str | None, Any]] = [(label, model)]
    if vs is not None:
        in_memory = not isinstance(vs, (str, os.PathLike))
        models.append((vs_label or ("candidate" if in_memory else None), vs))
    return bench_models(
        models,
        provider=provider,
        levels=levels,
        threads=threads,
        iters=iters,
        warmup=warmup,
        shapes=shapes,
        progress=progress,
    )


def bench_models(
    models: Sequence[tuple[str | None, Any]],
    *,
    provider: str = "cpu",
    levels: Sequence[str] = DEFAULT_LEVELS,
    threads: int | None = None,
    iters: int | None = None,
    warmup: int = DEFAULT_WARMUP,
    shapes: Mapping[str, Sequence[int]] | None = None,
    progress: bool | None = None,
    seed: int = 0,
    target_s: float = TARGET_S,
) -> BenchResult:
    """Time any number of ``(label, model)`` pairs in interleaved rounds; the first is the baseline.

    ``target_s`` is the time per level that ``iters=None`` aims for. With two or more
    models and a thread pool (``threads`` other than 1), pool threads do not spin: a
    session whose idle threads busy-wait takes cores from the next one timed, which made
    sub-millisecond ratios swing between 0.5× and 1.7× on two cores.
    """
    import onnxruntime as ort

    levels = _check_options(models, levels, iters, warmup, threads)
    providers_for(provider)  # fail fast, before loading anything
    sources = [resolve_model(m, label) for label, m in models]
    _unique_labels(sources)
    spinning = len(sources) == 1 or threads == 1
    warm = max(warmup, 1) if iters is None else warmup
    plan = _Plan(provider, threads, iters, warm, target_s, spinning)
    results: list[LevelResult] = []
    feeds: dict[str, Any] = {}
    with RoundProgress("benchmark", enabled=progress) as bar:
        bar.add_total(len(levels) * (plan.warmup + (iters or 0)))
        for level in levels:
            bar.set_description(f"level {level}")
            level_result, feeds = _bench_level(sources, level, plan, shapes, seed, bar)
            results.append(level_result)
    return BenchResult(
        models=[s.stats for s in sources],
        levels=results,
        provider=provider,
        threads=threads,
        warmup=plan.warmup,
        ort_version=ort.__version__,
        inputs={k: {"shape": list(v.shape), "dtype": str(v.dtype)} for k, v in feeds.items()},
        spinning=spinning,
    )


@dataclass(frozen=True)
class _Plan:
    """How every level is run."""

    provider: str
    threads: int | None
    iters: int | None
    warmup: int
    target_s: float
    spinning: bool


def _bench_level(
    sources: list[ModelSource],
    level: str,
    plan: _Plan,
    shapes: Mapping[str, Sequence[int]] | None,
    seed: int,
    bar: RoundProgress,
) -> tuple[LevelResult, dict[str, Any]]:
    sessions = [
        create_session(
            s.ort_input,
            level,
            threads=plan.threads,
            provider=plan.provider,
            spinning=plan.spinning,
        )
        for s in sources
    ]
    feeds = make_feeds(sessions[0].session, shapes, seed)
    runners = [
        _runner(ts.session, feeds, s.stats.label) for ts, s in zip(sessions, sources, strict=True)
    ]
    warm = run_interleaved(runners, plan.warmup, on_round=bar.advance)
    iters = plan.iters
    if iters is None:
        per_round = sum(sorted(w)[len(w) // 2] for w in warm)
        iters = auto_iters(per_round, plan.target_s)
        bar.add_total(iters)
    samples = run_interleaved(runners, iters, on_round=bar.advance)
    runs = [
        ModelRun(
            label=s.stats.label,
            create_ms=ts.create_ms,
            latency=Latency.from_samples(times),
            speedup=Speedup.from_pairs(samples[0], times) if i else None,
            samples_ms=times,
        )
        for i, (s, ts, times) in enumerate(zip(sources, sessions, samples, strict=True))
    ]
    logger.info("level %s: %d rounds of %d models", level, iters, len(sources))
    return LevelResult(level=level, rounds=iters, runs=runs), feeds


def _runner(session: Any, feeds: dict[str, Any], label: str) -> Any:
    """A no-argument callable running ``session``; a failing run becomes an InputError."""
    wanted = {arg.name for arg in session.get_inputs()}
    if wanted != set(feeds):
        raise InputError(
            f"{label} takes inputs {sorted(wanted)}, the first model {sorted(feeds)}: "
            "models compared must have the same inputs"
        )

    symbolic = any(not isinstance(d, int) for arg in session.get_inputs() for d in arg.shape)
    hint = " (symbolic dimensions were set to 1: give sizes with shapes= / --shape)"

    def run() -> Any:
        try:
            return session.run(None, feeds)
        except Exception as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            message = f"onnxruntime failed to run {label}: {first}"
            raise InputError(message + (hint if symbolic else "")) from err

    return run


def _check_options(
    models: Sequence[Any],
    levels: Sequence[str],
    iters: int | None,
    warmup: int,
    threads: int | None,
) -> list[str]:
    if not models:
        raise InputError("nothing to benchmark")
    if isinstance(levels, str):
        levels = [levels]
    checked = list(dict.fromkeys(check_level(level) for level in levels))
    if not checked:
        raise InputError("no optimisation level given")
    if iters is not None and iters < 1:
        raise InputError(f"iters must be at least 1, not {iters}")
    if warmup < 0:
        raise InputError(f"warmup must not be negative, not {warmup}")
    if threads is not None and threads < 1:
        raise InputError(f"threads must be at least 1, not {threads}")
    return checked


def _unique_labels(sources: list[ModelSource]) -> None:
    """Make labels distinct: fall back to full paths, then to numbered labels."""
    labels = [s.stats.label for s in sources]
    if len(set(labels)) == len(labels):
        return
    for s in sources:
        if isinstance(s.ort_input, str):
            s.stats.label = s.ort_input
    labels = [s.stats.label for s in sources]
    if len(set(labels)) < len(labels):
        for i, s in enumerate(sources):
            s.stats.label = f"{s.stats.label} #{i + 1}"
