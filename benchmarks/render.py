"""Markdown table, PNG chart and JSON of a compare_tools run."""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import logging
import math
import os
import platform
import statistics
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

PACKAGES = ("bnfold", "onnx", "onnxruntime", "onnx-ir", "onnxscript", "onnxsim", "onnxslim",
            "onnxoptimizer", "torch")  # fmt: skip
NOISE = 0.03  # "at least as fast" allows this much pairwise measurement noise


def write_outputs(
    rows: list[Any], tools: list[str], args: Any, out: Path, elapsed: float, levels: Sequence[str]
) -> Path:
    """Write compare_tools.md, .png and .json under ``out``; return the Markdown path."""
    out.mkdir(parents=True, exist_ok=True)
    md = out / "compare_tools.md"
    md.write_text(markdown(rows, tools, args, elapsed, levels))
    (out / "compare_tools.json").write_text(
        json.dumps([asdict(r) for r in rows], indent=1, default=_json_default) + "\n"
    )
    try:
        chart(rows, tools, levels, out / "compare_tools.png")
    except ImportError:
        logger.warning("matplotlib is not installed: no chart")
    return md


def markdown(
    rows: list[Any], tools: list[str], args: Any, elapsed: float, levels: Sequence[str]
) -> str:
    files = sorted({(r.model, r.exporter) for r in rows})
    lines = [
        "# bnfold vs other ONNX optimisers",
        "",
        "Command: `" + " ".join(["python benchmarks/compare_tools.py", *args.argv]) + "`",
        "",
        f"{len(files)} exported models ({', '.join(args.exporters)} exporters), "
        f"fold time = median of {args.repeat} in-process file→file runs, latency = onnxruntime "
        f"CPU, {args.threads} thread(s), interleaved rounds, ~{args.target_s:g} s per level. "
        f"Run took {elapsed:.0f} s on {_machine()} ({datetime.date.today()}).",
        "",
        "Versions: " + ", ".join(f"{p} {_version(p)}" for p in PACKAGES),
        "",
        "## Summary",
        "",
        *_summary(rows, tools, levels),
        "",
        "## Targets",
        "",
        *_targets(rows, levels),
        "",
        "## Per model",
        "",
        *_detail(rows, levels),
        "",
        "BN = BatchNormalization nodes in the input → in the output. Max error: largest |output − "
        "original| over two random inputs, both run with ORT_DISABLE_ALL; ✗ marks more than "
        "1e-4 × max(1, max|original|). Latency: median ms, (×) = pairwise speed-up over the "
        "original in the same rounds. Fold ms in brackets on an original row: a bare onnx-ir "
        "load + save of it (no pass), the floor of any onnx-ir based tool.",
        "",
    ]
    return "\n".join(lines)


def _summary(rows: list[Any], tools: list[str], levels: Sequence[str]) -> list[str]:
    head = ["tool", "BN folded", "equivalent", "fold time (median)", "errors"]
    head += [f"speed-up at {lev} (geo-mean)" for lev in levels]
    out = [_row(head), _row(["---"] * len(head))]
    for tool in tools:
        mine = [r for r in rows if r.tool == tool]
        bn_in = sum(r.bn_in for r in mine)
        folded = sum(r.bn_in - r.bn_out for r in mine if r.ok and r.bn_out is not None)
        ok = [r for r in mine if r.ok]
        eq = sum(1 for r in ok if r.equivalent)
        times = [r.fold_s for r in ok if r.fold_s is not None]
        cells = [
            f"**{tool}**" if tool == "bnfold" else tool,
            f"{folded}/{bn_in} ({100 * folded / bn_in:.0f}%)" if bn_in else "—",
            f"{eq}/{len(mine)}",
            f"{1e3 * statistics.median(times):.0f} ms" if times else "—",
            str(len(mine) - len(ok)),
        ]
        for lev in levels:
            ratios = [r.speedup[lev] for r in ok if r.equivalent and lev in r.speedup]
            cells.append(f"{_geomean(ratios):.3f}×" if ratios else "—")
        out.append(_row(cells))
    return out


def _targets(rows: list[Any], levels: Sequence[str]) -> list[str]:
    lines = []
    pairs = _pairs(rows, "bnfold", "ort-basic")
    if pairs:
        wins = sum(1 for b, o in pairs if b.fold_s <= o.fold_s)
        lines.append(
            f"- Fold time ≤ onnxruntime's offline BASIC pass: {wins}/{len(pairs)} models "
            f"(median bnfold {1e3 * statistics.median(b.fold_s for b, _ in pairs):.0f} ms, "
            f"ort-basic {1e3 * statistics.median(o.fold_s for _, o in pairs):.0f} ms)."
        )
        floors = {(r.model, r.exporter): r.floor_s for r in rows if r.tool == "original"}
        under = [
            (o.fold_s, floors[o.model, o.exporter])
            for _, o in pairs
            if floors.get((o.model, o.exporter)) is not None
        ]
        if under:
            below = sum(1 for ort, floor in under if floor > ort)
            lines.append(
                f"  - floor: a bare onnx-ir load + save, no pass at all, takes "
                f"{1e3 * statistics.median(f for _, f in under):.1f} ms (median) and is "
                f"already slower than ort-basic's whole pass on {below}/{len(under)} models."
            )
    checks = [(r, lev, *r.vs_best[lev]) for r in rows if r.tool == "bnfold" for lev in r.vs_best]
    if checks:
        wins = sum(1 for *_, ratio in checks if ratio >= 1 - NOISE)
        worst = min(checks, key=lambda c: c[3])
        lines.append(
            f"- Folded model at least as fast as the best other tool's output (pairwise ratio "
            f"best-other/bnfold ≥ {1 - NOISE:.2f}): {wins}/{len(checks)} (model, level) pairs; "
            f"worst {worst[3]:.3f} on {worst[0].model} {worst[0].exporter} at {worst[1]} "
            f"vs {worst[2]}."
        )
        controls = [r.control[lev] for r, lev, *_ in checks if lev in r.control]
        noise = max((abs(1 - c) for c in controls), default=0.0)
        if controls:
            lines.append(
                f"- A/A control (bnfold's output against a second session of the same file, "
                f"same rounds): ratios {min(controls):.3f}–{max(controls):.3f}, so this run's "
                f"noise reaches ±{100 * noise:.1f}%."
            )
        for r, lev, tool, ratio in checks:
            if ratio < 1 - NOISE:
                verdict = "within" if ratio >= 1 - noise else "beyond"
                lines.append(
                    f"  - slower: {r.model} {r.exporter} at {lev}: {ratio:.3f} vs {tool} "
                    f"({verdict} the A/A noise)"
                )
    return lines or ["- (bnfold was not among the tools run)"]


def _fold_cell(row: Any) -> str:
    if row.fold_s is not None:
        return f"{1e3 * row.fold_s:.0f}"
    return "" if row.floor_s is None else f"({1e3 * row.floor_s:.0f})"


def _detail(rows: list[Any], levels: Sequence[str]) -> list[str]:
    head = ["model", "export", "tool", "BN", "nodes", "fold ms", "max error"]
    head += [f"{lev} ms (×)" for lev in levels]
    out = [_row(head), _row(["---"] * len(head))]
    for r in rows:
        if not r.ok:
            out.append(
                _row([r.model, r.exporter, r.tool, r.status, "", "", "", *[""] * len(levels)])
            )
            continue
        cells = [
            r.model,
            r.exporter,
            f"**{r.tool}**" if r.tool == "bnfold" else r.tool,
            f"{r.bn_in}→{r.bn_out}",
            str(r.nodes),
            _fold_cell(r),
            r.error_cell,
        ]
        for lev in levels:
            if lev in r.latency_ms:
                ratio = "" if r.tool == "original" else f" ({r.speedup[lev]:.2f}×)"
                cells.append(f"{r.latency_ms[lev]:.3f}{ratio}")
            else:
                cells.append("—")
        out.append(_row(cells))
    return out


def chart(rows: list[Any], tools: list[str], levels: Sequence[str], path: Path) -> None:
    """Three panels per tool: BN folded (%), fold time (ms), latency speed-up (geo-mean)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    exporters = sorted({r.exporter for r in rows})
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    width = 0.8 / max(1, len(exporters))
    xs = range(len(tools))
    for i, exp in enumerate(exporters):
        mine = [r for r in rows if r.exporter == exp]
        folded, times = [], []
        for tool in tools:
            trs = [r for r in mine if r.tool == tool]
            bn_in = sum(r.bn_in for r in trs)
            done = sum(r.bn_in - r.bn_out for r in trs if r.ok and r.bn_out is not None)
            folded.append(100 * done / bn_in if bn_in else 0)
            t = [r.fold_s for r in trs if r.ok and r.fold_s is not None]
            times.append(1e3 * statistics.median(t) if t else 0)
        offs = [x + (i - (len(exporters) - 1) / 2) * width for x in xs]
        axes[0].bar(offs, folded, width, label=f"{exp} export")
        axes[1].bar(offs, times, width, label=f"{exp} export")
    width = 0.8 / max(1, len(levels))
    for i, lev in enumerate(levels):
        gains = []
        for tool in tools:
            ratios = [r.speedup[lev] for r in rows if r.tool == tool and r.ok and r.equivalent
                      and lev in r.speedup]  # fmt: skip
            gains.append(_geomean(ratios) if ratios else 0)
        offs = [x + (i - (len(levels) - 1) / 2) * width for x in xs]
        axes[2].bar(offs, gains, width, label=f"ORT level {lev}")
    axes[2].axhline(1.0, color="grey", lw=0.8)
    titles = [
        "BatchNorm folded (%)",
        "fold time, median (ms)",
        "latency speed-up vs original (geo-mean)",
    ]
    for ax, title in zip(axes, titles, strict=True):
        ax.set_title(title)
        ax.set_xticks(list(xs))
        ax.set_xticklabels(tools, rotation=30, ha="right")
        ax.legend(fontsize=8, loc="upper center", ncol=2)
    axes[0].set_ylim(0, 118)
    axes[1].set_ylim(0, 1.2 * max([b.get_height() for b in axes[1].patches] or [1.0]))
    lo = min([b.get_height() for b in axes[2].patches if b.get_height() > 0] or [1.0])
    hi = max([b.get_height() for b in axes[2].patches] or [1.0])
    axes[2].set_ylim(min(0.9, lo - 0.02), hi + 0.12 * (hi - min(0.9, lo - 0.02)))
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def _pairs(rows: list[Any], a: str, b: str) -> list[tuple[Any, Any]]:
    index = {(r.model, r.exporter, r.tool): r for r in rows}
    out = []
    for r in rows:
        if r.tool == a and r.ok and r.fold_s is not None:
            other = index.get((r.model, r.exporter, b))
            if other is not None and other.ok and other.fold_s is not None:
                out.append((r, other))
    return out


def _geomean(values: list[float]) -> float:
    return math.exp(sum(math.log(v) for v in values) / len(values))


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _machine() -> str:
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{name}, {os.cpu_count()} cores"


def _json_default(obj: Any) -> Any:
    return str(obj)
