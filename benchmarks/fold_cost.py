"""What folding a ResNet-50-sized model costs: time and peak memory, against two yardsticks.

    python benchmarks/fold_cost.py              # ResNet-50 (~100 MB fp32), legacy export
    python benchmarks/fold_cost.py --quick      # 1 repeat
    python benchmarks/fold_cost.py --exporter dynamo --repeat 5

Yardsticks, each run the same way as bnfold (file → file, in a fresh subprocess, timed after
its imports, repeats interleaved so machine drift hits all alike):

- ``load+save``: a bare ``onnx.load`` + ``onnx.save`` of the same file;
- ``ort-basic``: onnxruntime's offline BASIC optimisation (``optimized_model_filepath`` with
  ``ORT_ENABLE_BASIC``).

Peak memory is the child's high-water RSS (``VmHWM``); "work" subtracts the RSS measured
after imports, so it shows what handling the model itself costs. Also times
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

logger = logging.getLogger("fold_cost")

HERE = Path(__file__).resolve().parent
MODES = ("load+save", "bnfold", "ort-basic")
TARGET_MEMORY_RATIO = 1.5
TARGET_TIME_RATIO = 1.5


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
def resnet50() -> Any:
    """torchvision-style ResNet-50 from plain modules (zoo blocks), BN stats randomised."""
    from torch import nn

    from bnfold.testing.zoo import Bottleneck, conv_bn, randomize_bn

    layers: list[nn.Module] = [conv_bn(3, 64, 7, 2), nn.MaxPool2d(3, 2, 1)]
    cin = 64
    for mid, blocks, stride in ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)):
        for i in range(blocks):
            layers.append(Bottleneck(cin, mid, stride if i == 0 else 1))
            cin = mid * 4
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, 1000)]
    return randomize_bn(nn.Sequential(*layers).eval())


def export(path: Path, exporter: str) -> Path:
    if path.exists():
        return path
    import torch

    from bnfold.testing.zoo import export_onnx

    logging.getLogger("torch").setLevel(logging.ERROR)
    model = resnet50()
    params = sum(p.numel() for p in model.parameters())
    logger.info("exporting ResNet-50 (%.1f M parameters, %s exporter)", params / 1e6, exporter)
    return export_onnx(model, (torch.randn(1, 3, 224, 224),), path, exporter=exporter)


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


def report(summary: dict[str, Any], startup: dict[str, Any], args: Any, size_mb: float) -> str:
    lines = [
        "# Fold cost: ResNet-50-sized model",
        "",
        "Command: `" + " ".join(["python benchmarks/fold_cost.py", *args.argv]) + "`",
        "",
        f"Model: ResNet-50 from plain torch modules, {args.exporter} export with BN unfolded, "
        f"{size_mb:.1f} MB. Median of {args.repeat} runs, each in a fresh subprocess, timed "
        f"after imports. {os.cpu_count()} cores, {datetime.date.today()}.",
        "",
        "| step | time (s) | peak RSS (MB) | work = peak − after imports (MB) |",
        "| --- | --- | --- | --- |",
    ]
    for mode in MODES:
        s = summary[mode]
        if "error" in s:
            lines.append(f"| {mode} | error: {s['error']} | | |")
        else:
            lines.append(
                f"| {mode} | {s['seconds']:.2f} | {s['peak_mb']:.0f} | {s['work_mb']:.0f} |"
            )
    lines += ["", "## Targets", ""]
    b, ls, ob = summary["bnfold"], summary["load+save"], summary["ort-basic"]
    if not any("error" in s for s in (b, ls, ob)):
        peak, work = b["peak_mb"] / ls["peak_mb"], b["work_mb"] / ls["work_mb"]
        ok = "✓" if max(peak, work) <= TARGET_MEMORY_RATIO else "✗"
        lines.append(
            f"- {ok} Peak memory ≤ {TARGET_MEMORY_RATIO}× load+save: {peak:.2f}× (peak RSS), "
            f"{work:.2f}× (work)."
        )
        ratio = b["seconds"] / ls["seconds"]
        ok = "✓" if ratio <= TARGET_TIME_RATIO else "✗"
        lines.append(
            f"- {ok} Fold time ≤ {TARGET_TIME_RATIO}× load+save: {b['seconds']:.2f} s vs "
            f"{ls['seconds']:.2f} s ({ratio:.2f}×)."
        )
        ok = "✓" if b["seconds"] <= ob["seconds"] else "✗"
        lines.append(
            f"- {ok} Fold time ≤ ort-basic: {b['seconds']:.2f} s vs {ob['seconds']:.2f} s "
            f"({b['seconds'] / ob['seconds']:.2f}×)."
        )
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
    parser.add_argument("--exporter", choices=("legacy", "dynamo"), default="legacy")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="one repeat")
    parser.add_argument("--workdir", help="keep the exported model here (reused when present)")
    parser.add_argument("--out", default=str(HERE / "results"))
    args = parser.parse_args(argv)
    args.argv = list(argv)
    if args.quick:
        args.repeat = 1
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="bnfold-cost-"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        src = export(workdir / f"resnet50.{args.exporter}.onnx", args.exporter)
        size_mb = src.stat().st_size / 2**20
        summary = summarise(measure(src, workdir, args.repeat))
        text = report(summary, cli_startup(), args, size_mb)
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "fold_cost.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
