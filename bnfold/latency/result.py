"""Benchmark results as values: ``to_dict()`` for JSON, ``describe()`` for people."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from bnfold.latency.model_stats import ModelStats
from bnfold.latency.timing import Latency, Speedup


@dataclass
class ModelRun:
    """One model at one optimisation level."""

    label: str
    create_ms: float
    latency: Latency
    speedup: Speedup | None = None  # against the first model; None for the first
    samples_ms: list[float] = field(default_factory=list, repr=False)  # not in to_dict()

    def to_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "session_ms": self.create_ms,
            **asdict(self.latency),
            "speedup": asdict(self.speedup) if self.speedup else None,
        }


@dataclass
class LevelResult:
    """All models at one level, timed in the same interleaved rounds."""

    level: str
    rounds: int
    runs: list[ModelRun]

    def to_dict(self) -> dict[str, Any]:
        return {
            "level": self.level,
            "rounds": self.rounds,
            "runs": [r.to_dict() for r in self.runs],
        }


@dataclass
class BenchResult:
    """Latency of one or more models over one or more levels; the first model is the baseline."""

    models: list[ModelStats]
    levels: list[LevelResult]
    provider: str
    threads: int | None
    warmup: int
    ort_version: str
    inputs: dict[str, dict[str, Any]] = field(default_factory=dict)
    spinning: bool = True  # pool threads busy-wait (onnxruntime's default)

    def speedup(self, level: str | None = None, label: str | None = None) -> float | None:
        """Median pairwise speed-up of ``label`` (default: second model) over the first."""
        for lev in self.levels:
            if level is not None and lev.level != level:
                continue
            for run in lev.runs[1:]:
                if run.speedup and (label is None or run.label == label):
                    return run.speedup.median
            if level is not None:
                break
        return None

    def speedups(self) -> dict[str, float]:
        """{level: median speed-up of the second model}; empty without a comparison."""
        out = {lev.level: self.speedup(lev.level) for lev in self.levels}
        return {k: v for k, v in out.items() if v is not None}

    def headline(self) -> str:
        """One line: the second model's speed-up per level, or the first model's latency."""
        gains = self.speedups()
        if gains:
            label = self.models[1].label
            parts = [f"{v:.2f}× at {lev}" for lev, v in gains.items()]
            return f"{label} vs {self.models[0].label}: " + ", ".join(parts)
        parts = [f"{lev.runs[0].latency.median_ms:.3f} ms at {lev.level}" for lev in self.levels]
        return f"{self.models[0].label}: median " + ", ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return {
            "onnxruntime": self.ort_version,
            "provider": self.provider,
            "threads": self.threads,
            "thread_spinning": self.spinning,
            "warmup": self.warmup,
            "inputs": self.inputs,
            "models": [m.to_dict() for m in self.models],
            "levels": [lev.to_dict() for lev in self.levels],
            "speedup": self.speedups(),
        }

    def describe(self) -> str:
        """A plain-text report: model table, then latency per level and model."""
        threads = "default" if self.threads is None else str(self.threads)
        spinning = "" if self.spinning else " (no spinning: models take turns)"
        head = (
            f"onnxruntime {self.ort_version}, provider {self.provider}, threads {threads}"
            f"{spinning}, {self.warmup} warm-up rounds"
        )
        model_rows = [
            [m.label, _size(m.size_bytes), str(m.nodes), str(m.batchnorm), str(m.dropout)]
            for m in self.models
        ]
        models = _table(["model", "size", "nodes", "BatchNorm", "Dropout"], model_rows)
        rows: list[list[str]] = []
        for lev in self.levels:
            for i, run in enumerate(lev.runs):
                rows.append(
                    [
                        lev.level if i == 0 else "",
                        str(lev.rounds) if i == 0 else "",
                        run.label,
                        f"{run.create_ms:.1f} ms",
                        f"{run.latency.median_ms:.3f} ms",
                        f"{run.latency.p90_ms:.3f} ms",
                        _speedup(run.speedup),
                    ]
                )
        headers = ["level", "rounds", "model", "session", "median", "p90", "speed-up [p10–p90]"]
        return "\n".join([head, "", models, "", _table(headers, rows)])


def _speedup(s: Speedup | None) -> str:
    return "" if s is None else f"{s.median:.2f}× [{s.p10:.2f}–{s.p90:.2f}]"


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def _table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [headers, *rows]) for i in range(len(headers))]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return "\n".join(lines)
