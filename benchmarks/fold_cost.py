"""What folding a model of 10 MB or more costs: time and peak memory, against two yardsticks.

    python benchmarks/fold_cost.py                  # 5 models × 2 exporters, 7 rounds: ~5 min
    python benchmarks/fold_cost.py --quick          # 3 rounds, 1 memory repeat
    python benchmarks/fold_cost.py --models resnet50 --exporters dynamo --repeat 11

Yardsticks, each timed the same way as bnfold (file → file):

- ``ort-basic``: onnxruntime's offline BASIC optimisation (``optimized_model_filepath`` with
  ``ORT_ENABLE_BASIC``);
- ``load+save``: a bare ``onnx.load`` + ``onnx.save`` of the same file.

Targets (issue 18): on every model, both exporters, in-process ``bnfold.fold(path).save(out)``
≤ 1.0× ort-basic and ≤ 1.0× load+save. Times come from one worker process per model
(``fold_cost_timing.py``: in-process calls after a warm-up, steps interleaved in a random
order each round, ratios pairwise per round). The models and their export cache:
``fold_cost_models.py``.

Memory (ResNet-50, both exporters): each step in a fresh subprocess, peak RSS (``VmHWM``);
"work" subtracts the RSS measured after imports. Target: ≤ 1.5× load+save. Also times
``bnfold --help`` (CLI start-up). Writes ``benchmarks/results/fold_cost.md``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import fold_cost_models as zoo
import fold_cost_stages as stages
import fold_cost_timing as timing

logger = logging.getLogger("fold_cost")

HERE = Path(__file__).resolve().parent
MODES = ("load+save", "bnfold", "ort-basic")
TARGET_MEMORY_RATIO = 1.5
TARGET_TIME_RATIO = 1.0  # vs ort-basic and vs load+save, every model


# --------------------------------------------------------------------------- child side
def _status_mb(field: str) -> float:
    """VmRSS (now) or VmHWM (peak) of this process from /proc, in MiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def child(mode: str, src: str, dst: str) -> dict[str, Any]:
    """Run one operation after its imports; report time and memory (runs in a subprocess)."""
    if mode == "load+save":
        import onnx

        def op() -> None:
            onnx.save(onnx.load(src), dst)
    elif mode == "bnfold":
        from bnfold.onnx.api import fold_onnx

        def op() -> None:
            fold_onnx(src).save(dst)
    elif mode == "ort-basic":
        import onnxruntime as ort

        def op() -> None:
            options = ort.SessionOptions()
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
            options.optimized_model_filepath = dst
            ort.InferenceSession(src, options, providers=["CPUExecutionProvider"])
    else:
        raise SystemExit(f"unknown mode {mode}")
    base = _status_mb("VmRSS")
    start = time.perf_counter()
    op()
    seconds = time.perf_counter() - start
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss over exec from the (torch-sized) parent.
    peak = _status_mb("VmHWM")
    return {"mode": mode, "seconds": seconds, "base_mb": base, "peak_mb": peak}


# --------------------------------------------------------------------------- parent side
def measure(src: Path, workdir: Path, repeat: int) -> dict[str, list[dict[str, Any]]]:
    """Each mode ``repeat`` times, in fresh subprocesses, modes interleaved."""
    results: dict[str, list[dict[str, Any]]] = {m: [] for m in MODES}
    for r in range(repeat):
        for mode in MODES:
            dst = workdir / f"out.{mode}.onnx"
            cmd = [sys.executable, __file__, "--child", mode, str(src), str(dst)]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                tail = (proc.stderr.strip().splitlines() or ["?"])[-1]
                results[mode].append({"mode": mode, "error": tail})
                logger.warning("%s failed: %s", mode, tail)
                continue
            results[mode].append(json.loads(proc.stdout.strip().splitlines()[-1]))
            logger.info(
                "round %d/%d %-9s %.2f s", r + 1, repeat, mode, results[mode][-1]["seconds"]
            )
            dst.unlink(missing_ok=True)
    return results


def cli_startup(repeat: int = 5) -> dict[str, Any]:
    """Median wall time of ``bnfold --help`` and whether it imports heavy libraries."""
    exe = shutil.which("bnfold", path=str(Path(sys.executable).parent)) or shutil.which("bnfold")
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        subprocess.run([exe, "--help"], capture_output=True, check=True)
        times.append(time.perf_counter() - start)
    code = (
        "import sys\nfrom bnfold.cli.main import main\ntry:\n    main(['--help'])\n"
        "except SystemExit:\n    pass\nheavy = ('onnxruntime', 'torch', 'onnx', 'numpy')\n"
        "print(','.join(m for m in heavy if m in sys.modules), file=sys.stderr)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    imported = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else ""
    return {"median_s": statistics.median(times), "heavy_imports": imported or "none"}


def summarise(results: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, float]]:
    out = {}
    for mode, runs in results.items():
        good = [r for r in runs if "error" not in r]
        if not good:
            out[mode] = {"error": runs[0]["error"] if runs else "not run"}
            continue
        out[mode] = {
            "seconds": statistics.median(r["seconds"] for r in good),
            "peak_mb": statistics.median(r["peak_mb"] for r in good),
            "work_mb": statistics.median(r["peak_mb"] - r["base_mb"] for r in good),
        }
    return out


def time_models(
    cache: Path, names: list[str], exporters: list[str], repeat: int, workdir: Path
) -> dict[tuple[str, str], dict[str, Any]]:
    """Per (model, exporter): the worker's per-round seconds, or an error."""
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for name in names:
        for exporter in exporters:
            src = zoo.ensure_export(cache, name, exporter)
            cmd = [sys.executable, str(HERE / "fold_cost_timing.py"), str(src), str(workdir)]
            proc = subprocess.run([*cmd, str(repeat)], capture_output=True, text=True)
            if proc.returncode != 0:
                tail = (proc.stderr.strip().splitlines() or ["?"])[-1]
                out[name, exporter] = {"error": tail}
                logger.warning("%s %s failed: %s", name, exporter, tail)
                continue
            result = json.loads(proc.stdout.strip().splitlines()[-1])
            result["size_mb"] = src.stat().st_size / 2**20
            out[name, exporter] = result
            med = {k: statistics.median(v) for k, v in result["seconds"].items()}
            logger.info(
                "%-22s %-6s bnfold %.3f s  ort-basic %.3f s  load+save %.3f s",
                name, exporter, med["bnfold"], med["ort-basic"], med["load+save"],
            )  # fmt: skip
    return out


def _mark(ratio: float) -> str:
    return "✓" if ratio <= TARGET_TIME_RATIO else "✗"


def time_table(timed: dict[tuple[str, str], dict[str, Any]]) -> tuple[list[str], int, int]:
    """Markdown rows of the timing table; (rows, targets met, targets measured)."""
    lines = [
        "| model | exporter | MB | bnfold (s) | ort-basic (s) | load+save (s) | io floor (s) "
        f"| bnfold / ort-basic (≤ {TARGET_TIME_RATIO}) "
        f"| bnfold / load+save (≤ {TARGET_TIME_RATIO}) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    met = total = 0
    for (name, exporter), result in timed.items():
        if "error" in result:
            lines.append(f"| {name} | {exporter} | | error: {result['error']} | | | | | |")
            continue
        times = result["seconds"]
        med = {k: statistics.median(v) for k, v in times.items()}
        cells = [f"{med[k]:.3f}" for k in ("bnfold", "ort-basic", "load+save", "io-floor")]
        ratios = [timing.ratio(times, "bnfold", b) for b in ("ort-basic", "load+save")]
        met += sum(r <= TARGET_TIME_RATIO for r in ratios)
        total += len(ratios)
        marks = [f"{_mark(r)} {r:.2f}×" for r in ratios]
        size = f"{result['size_mb']:.1f}"
        lines.append(f"| {name} | {exporter} | {size} | " + " | ".join(cells + marks) + " |")
    return lines, met, total


def stage_table(timed: dict[tuple[str, str], dict[str, Any]]) -> list[str]:
    """Markdown rows of the per-stage profile (ms), beside the yardsticks."""
    head = [*stages.STAGES, "total"]
    lines = [
        "| model | exporter | " + " | ".join(head) + " | ort-basic | load+save "
        "| read + checks + deserialize + save |",
        "| --- | --- | " + " | ".join("---" for _ in head) + " | --- | --- | --- |",
    ]
    for (name, exporter), result in timed.items():
        got = result.get("stages")
        if not got:
            continue
        med = {k: statistics.median(v) for k, v in result["seconds"].items()}
        floor = sum(got[k] for k in ("read", "checks", "deserialize", "save"))
        cells = [f"{1000 * got[k]:.0f}" for k in head]
        cells += [f"{1000 * med[k]:.0f}" for k in ("ort-basic", "load+save")]
        cells.append(f"{1000 * floor:.0f}")
        lines.append(f"| {name} | {exporter} | " + " | ".join(cells) + " |")
    return lines


def memory_lines(memory: dict[str, dict[str, Any]]) -> list[str]:
    """The memory table (ResNet-50, per exporter) and its target lines."""
    lines = [
        "| exporter | step | time, fresh process (s) | peak RSS (MB) | work = peak − after "
        "imports (MB) |",
        "| --- | --- | --- | --- | --- |",
    ]
    targets = []
    for exporter, summary in memory.items():
        for mode in MODES:
            s = summary[mode]
            if "error" in s:
                lines.append(f"| {exporter} | {mode} | error: {s['error']} | | |")
                continue
            lines.append(
                f"| {exporter} | {mode} | {s['seconds']:.2f} | {s['peak_mb']:.0f} "
                f"| {s['work_mb']:.0f} |"
            )
        b, ls = summary["bnfold"], summary["load+save"]
        if "error" not in b and "error" not in ls:
            peak, work = b["peak_mb"] / ls["peak_mb"], b["work_mb"] / ls["work_mb"]
            ok = "✓" if max(peak, work) <= TARGET_MEMORY_RATIO else "✗"
            targets.append(
                f"- {ok} Peak memory ≤ {TARGET_MEMORY_RATIO}× load+save ({exporter}): "
                f"{peak:.2f}× (peak RSS), {work:.2f}× (work)."
            )
    return [*lines, "", *targets]


def report(
    timed: dict[tuple[str, str], dict[str, Any]],
    memory: dict[str, dict[str, Any]],
    startup: dict[str, Any],
    args: Any,
) -> str:
    rows, met, total = time_table(timed)
    ok = "✓" if met == total else "✗"
    lines = [
        "# Fold cost: models of 10 MB or more",
        "",
        "Command: `" + " ".join(["python benchmarks/fold_cost.py", *args.argv]) + "`",
        "",
        "Models: torchvision/timm builds with random BN statistics, exported with BN left "
        "unfolded (dynamo: `dynamo=True, optimize=False`; legacy: `dynamo=False, "
        "do_constant_folding=False`). Times: in-process calls in one worker per model, after "
        f"a warm-up, steps in a random order in each of {args.repeat} rounds; medians, and "
        "ratios as the median of the per-round ratios. io floor: bnfold's reading and "
        "writing alone (wire-level parse, onnx-ir deserialize, streaming write), no target. "
        f"{os.cpu_count()} shared cores, {datetime.date.today()}.",
        "",
        *rows,
        "",
        "## Targets",
        "",
        f"- {ok} bnfold fold+save ≤ {TARGET_TIME_RATIO}× ort-basic and ≤ {TARGET_TIME_RATIO}× "
        f"load+save: {met}/{total} (model, exporter, yardstick) cells met.",
        "",
        "## Where bnfold's time goes",
        "",
        "Milliseconds per stage of `bnfold.fold(path).save(out)`, medians over the same number "
        "of calls in the same worker, right after the timed rounds (stages timed by wrapping "
        "the library functions; see `fold_cost_stages.py` for what each stage holds). The last "
        "column is the part no pass can shrink: reading, the input checks, onnx-ir's "
        "deserialize and the write.",
        "",
        *stage_table(timed),
    ]
    lines += [
        "",
        "## Memory (ResNet-50)",
        "",
        f"Each step in a fresh subprocess, median of {args.memory_repeat}.",
        "",
        *memory_lines(memory),
    ]
    ok = "✓" if startup["median_s"] < 1.0 else "✗"
    lines.append(
        f"- {ok} `bnfold --help` start-up: {startup['median_s']:.2f} s (median of 5); heavy "
        f"modules imported: {startup['heavy_imports']}."
    )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        print(json.dumps(child(*argv[1:4])))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default=",".join(zoo.MODELS), help="comma-separated")
    parser.add_argument("--exporters", default=",".join(zoo.EXPORTERS), help="comma-separated")
    parser.add_argument("--repeat", type=int, default=7, help="timing rounds per model")
    parser.add_argument("--memory-repeat", type=int, default=3)
    parser.add_argument("--no-memory", action="store_true", help="skip the memory part")
    parser.add_argument("--quick", action="store_true", help="3 rounds, 1 memory repeat")
    parser.add_argument("--cache", default=str(zoo.CACHE), help="exported models (reused)")
    parser.add_argument("--out", default=str(HERE / "results"))
    args = parser.parse_args(argv)
    args.argv = list(argv)
    if args.quick:
        args.repeat, args.memory_repeat = 3, 1
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    cache = Path(args.cache)
    names = [n for n in args.models.split(",") if n]
    exporters = [e for e in args.exporters.split(",") if e]
    workdir = Path(tempfile.mkdtemp(prefix="bnfold-cost-"))
    try:
        timed = time_models(cache, names, exporters, args.repeat, workdir)
        memory: dict[str, dict[str, Any]] = {}
        if not args.no_memory:
            for exporter in exporters:
                src = zoo.ensure_export(cache, "resnet50", exporter)
                memory[exporter] = summarise(measure(src, workdir, args.memory_repeat))
        text = report(timed, memory, cli_startup(), args)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "fold_cost.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
