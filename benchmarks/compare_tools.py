"""Compare bnfold with other ONNX optimisers on the zoo: BN folded, fold time, error, latency.

    python benchmarks/compare_tools.py                 # default zoo subset, both exporters
    python benchmarks/compare_tools.py --quick         # 4 models, 1 repeat, short timings
    python benchmarks/compare_tools.py --models resnet_basic,unet --exporters legacy

Models are exported into a temporary folder (``--workdir`` keeps and reuses them). Each tool
runs in its own worker process; a tool that is missing or fails is a cell in the table, never
the end of the run. Writes ``benchmarks/results/compare_tools.{md,png,json}``.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

logger = logging.getLogger("compare_tools")

HERE = Path(__file__).resolve().parent
DEFAULT_MODELS = (
    "resnet_basic",
    "resnet_bottleneck",
    "mobilenet_v2",
    "mobilenet_v3",
    "densenet",
    "levit",
    "mixnet",
    "unet",
)
QUICK_MODELS = ("resnet_basic", "mobilenet_v2", "levit", "unet")
EXPORTERS = ("dynamo", "legacy")
LEVELS = ("disable", "all")
CONTROL = "bnfold-again"  # A/A control: bnfold's output in a second session, same rounds


@dataclass
class Row:
    """One tool's output for one exported model ("original" is the export itself)."""

    model: str
    exporter: str
    tool: str
    status: str = "ok"
    bn_in: int = 0
    bn_out: int | None = None
    nodes: int | None = None
    fold_s: float | None = None
    max_abs: float | None = None
    error_cell: str = ""
    equivalent: bool | None = None
    latency_ms: dict[str, float] = field(default_factory=dict)
    speedup: dict[str, float] = field(default_factory=dict)  # vs the original, pairwise
    vs_best: dict[str, tuple[str, float]] = field(default_factory=dict)  # bnfold row only
    control: dict[str, float] = field(default_factory=dict)  # bnfold row: A/A ratio per level
    floor_s: float | None = None  # original row: bare onnx-ir load + save of the file

    @property
    def ok(self) -> bool:
        return self.status == "ok"


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    for noisy in ("torch", "bnfold", "onnxscript"):
        logging.getLogger(noisy).setLevel(logging.WARNING if noisy == "bnfold" else logging.ERROR)
    sys.path.insert(0, str(HERE))
    from adapters import ADAPTERS

    tools = [t for t in args.tools.split(",") if t] if args.tools else list(ADAPTERS)
    unknown = set(tools) - set(ADAPTERS)
    if unknown:
        raise SystemExit(f"unknown tools: {', '.join(sorted(unknown))}")
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="bnfold-cmp-"))
    workdir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    rows = run(args, tools, workdir)
    elapsed = time.perf_counter() - started
    from render import write_outputs

    md = write_outputs(rows, tools, args, Path(args.out), elapsed, LEVELS)
    print(md.read_text())
    if not args.workdir:
        _cleanup(workdir)
    return 0


def run(args: argparse.Namespace, tools: list[str], workdir: Path) -> list[Row]:
    """Export every model, run every tool, measure every output."""
    from isolation import ToolWorkers

    jobs = [(m, e) for m in args.models for e in args.exporters]
    rows: list[Row] = []
    with ToolWorkers(timeout_s=args.tool_timeout, quiet=not args.verbose) as workers:
        warmed = False
        for index, (model, exporter) in enumerate(jobs, 1):
            t0 = time.perf_counter()
            src = _export(model, exporter, workdir)
            if isinstance(src, str) and src.startswith("error"):
                rows.append(Row(model, exporter, "original", status=src))
                continue
            if not warmed:  # first calls pay lazy imports and caches: not counted
                for tool in tools:
                    workers.run(tool, str(src), str(workdir / f"warmup.{tool}.onnx"))
                warmed = True
            t1 = time.perf_counter()
            model_rows = _run_tools(workers, tools, model, exporter, Path(src), args.repeat)
            t2 = time.perf_counter()
            _measure(model_rows, Path(src), args)
            rows.extend(model_rows)
            logger.info(
                "[%d/%d] %s %s: export %.1f s, tools %.1f s, measure %.1f s",
                index,
                len(jobs),
                model,
                exporter,
                t1 - t0,
                t2 - t1,
                time.perf_counter() - t2,
            )
    return rows


def _export(model: str, exporter: str, workdir: Path) -> Path | str:
    path = workdir / f"{model}.{exporter}.onnx"
    if path.exists():
        return path
    try:
        from bnfold.testing.zoo import ZOO, export_onnx

        module, inputs = ZOO[model]()
        return export_onnx(module, inputs, path, exporter=exporter)
    except Exception as err:
        return f"error: export: {type(err).__name__}: {' '.join(str(err).split())[:80]}"


def _run_tools(
    workers: Any, tools: list[str], model: str, exporter: str, src: Path, repeat: int
) -> list[Row]:
    """Every tool ``repeat`` times, tools interleaved within each repeat; median time."""
    from adapters import FLOOR
    from measure import op_counts

    counts = op_counts(str(src))
    bn_in = counts["BatchNormalization"]
    original = Row(model, exporter, "original", bn_in=bn_in, bn_out=bn_in)
    original.nodes = sum(counts.values())
    rows = {t: Row(model, exporter, t, bn_in=bn_in) for t in tools}
    rows[FLOOR.name] = Row(model, exporter, FLOOR.name)
    times: dict[str, list[float]] = {t: [] for t in rows}
    for _ in range(repeat):
        for tool in rows:
            if not rows[tool].ok:
                continue
            dst = _out_path(src, "floor" if tool == FLOOR.name else tool)
            result = workers.run(tool, str(src), str(dst))
            if result["status"] != "ok":
                rows[tool].status = result["status"]
            else:
                times[tool].append(result["seconds"])
    floor = rows.pop(FLOOR.name)
    if floor.ok:
        original.floor_s = statistics.median(times[FLOOR.name])
    for tool, row in rows.items():
        if row.ok:
            row.fold_s = statistics.median(times[tool])
            out_counts = op_counts(str(_out_path(src, tool)))
            row.bn_out = out_counts["BatchNormalization"]
            row.nodes = sum(out_counts.values())
    return [original, *rows.values()]


def _measure(rows: list[Row], src: Path, args: argparse.Namespace) -> None:
    """Max error against the original at ORT_DISABLE_ALL, then interleaved latency."""
    from measure import latency, max_error, reference_outputs

    original = rows[0]
    reference = reference_outputs(str(src))
    original.max_abs, original.equivalent, original.error_cell = 0.0, True, "—"
    runnable = {"original": str(src)}
    for row in rows[1:]:
        if not row.ok:
            continue
        check = max_error(str(_out_path(src, row.tool)), reference)
        row.equivalent, row.error_cell = check.equivalent, check.cell()
        row.max_abs = None if check.problem else check.max_abs
        if check.problem is None:
            runnable[row.tool] = str(_out_path(src, row.tool))
    if args.no_latency:
        return
    if "bnfold" in runnable:
        runnable[CONTROL] = runnable["bnfold"]
    result = latency(runnable, LEVELS, args.threads, args.target_s)
    by_tool = {r.tool: r for r in rows}
    for level in result.levels:
        samples = {run.label: run.samples_ms for run in level.runs}
        for run in level.runs:
            row = by_tool.get(run.label)
            if row is None:
                continue  # the control
            row.latency_ms[level.level] = run.latency.median_ms
            row.speedup[level.level] = run.speedup.median if run.speedup else 1.0
        _compare_with_best(by_tool, samples, level.level)


def _compare_with_best(
    by_tool: dict[str, Row], samples: dict[str, list[float]], level: str
) -> None:
    """bnfold vs the fastest equivalent other tool, pairwise over the same rounds."""
    from bnfold.latency.timing import Speedup

    bnfold = by_tool.get("bnfold")
    if bnfold is None or "bnfold" not in samples:
        return
    others = [
        r
        for t, r in by_tool.items()
        if t not in ("bnfold", "original") and t in samples and r.equivalent
    ]
    if not others:
        return
    best = min(others, key=lambda r: r.latency_ms[level])
    ratio = Speedup.from_pairs(samples[best.tool], samples["bnfold"]).median
    bnfold.vs_best[level] = (best.tool, ratio)
    if CONTROL in samples:  # the same file against itself: what noise alone does
        bnfold.control[level] = Speedup.from_pairs(samples[CONTROL], samples["bnfold"]).median


def _out_path(src: Path, tool: str) -> Path:
    return src.with_name(f"{src.stem}.{tool}.onnx")


def _cleanup(workdir: Path) -> None:
    for path in workdir.glob("*"):
        path.unlink()
    workdir.rmdir()


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", help=f"comma-separated zoo names [{','.join(DEFAULT_MODELS)}]")
    parser.add_argument("--exporters", default=",".join(EXPORTERS), help="dynamo,legacy")
    parser.add_argument("--tools", help="comma-separated subset of the tools [all]")
    parser.add_argument("--quick", action="store_true", help="4 models, 1 repeat, 0.3 s/level")
    parser.add_argument("--repeat", type=int, default=3, help="fold runs per tool [3]")
    parser.add_argument("--threads", type=int, default=1, help="ORT intra-op threads [1]")
    parser.add_argument("--target-s", type=float, default=2.0, help="latency time per level [2]")
    parser.add_argument("--no-latency", action="store_true", help="skip latency measurement")
    parser.add_argument("--tool-timeout", type=float, default=300.0, help="seconds per tool run")
    parser.add_argument("--workdir", help="keep exported models here (reused when present)")
    parser.add_argument("--out", default=str(HERE / "results"), help="where results are written")
    parser.add_argument("--verbose", action="store_true", help="let tools print")
    args = parser.parse_args(argv)
    if args.quick:
        args.repeat, args.target_s = 1, 0.3
    default = QUICK_MODELS if args.quick else DEFAULT_MODELS
    args.models = [m for m in (args.models or ",".join(default)).split(",") if m]
    args.exporters = [e for e in args.exporters.split(",") if e]
    args.argv = sys.argv[1:] if argv is None else list(argv)
    return args


if __name__ == "__main__":
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    raise SystemExit(main())
