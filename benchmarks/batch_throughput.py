"""Throughput of ``bnfold FOLDER -j 2`` against ``-j 1`` (fold + verify + write, every model).

    python benchmarks/batch_throughput.py            # 24 timm models, 3 rounds
    python benchmarks/batch_throughput.py --set zoo  # bnfold.testing.zoo (27 tiny models)
    python benchmarks/batch_throughput.py --rounds 5 --jobs 1,2

Target (issue 18): on a folder of ≥ 20 models, ``-j 2`` gives ≥ 1.6× the throughput of
``-j 1`` on 2 cores.

Models: ``timm`` — 24 small timm architectures with random BN statistics, exported at
160 px with ``dynamo=True, optimize=False`` (BN unfolded); ``zoo`` — the plain-torch
``bnfold.testing.zoo`` models (0.1–0.4 MB each: start-up dominates). Exported once into
``--cache`` (default ``~/.cache/bnfold-batchbench``). Each round runs the whole command
once per ``-j`` value, interleaved in a rotating order; throughput is models per second
of wall time, the ratio is the median of the per-round ratios. The CPU time of each run
(user + sys of the whole process tree) gives how many cores it kept busy; ``-j N`` can gain
at most cores ÷ (cores busy at ``-j 1``) over ``-j 1``, printed as the ceiling. The load
average before and after is printed and written to ``benchmarks/results/batch_throughput.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
TARGET = 1.6
BNFOLD = str(Path(sys.executable).with_name("bnfold"))  # the console script beside python
TIMM = (
    "resnet10t", "resnet14t", "resnet18", "resnet26", "mobilenetv2_050", "mobilenetv2_100",
    "mobilenetv3_small_050", "mobilenetv3_large_100", "efficientnet_lite0", "efficientnet_b0",
    "ghostnet_050", "mixnet_s", "regnetx_002", "regnety_002", "rexnet_100", "tinynet_a",
    "lcnet_050", "fbnetc_100", "mnasnet_small", "semnasnet_050", "spnasnet_100", "dla34",
    "hardcorenas_a", "densenet121",
)  # fmt: skip


def export_timm(folder: Path) -> None:
    import timm
    import torch

    from bnfold.testing.zoo import export_onnx, randomize_bn

    folder.mkdir(parents=True, exist_ok=True)
    for name in TIMM:
        path = folder / f"{name}.onnx"
        if not path.exists():
            model = randomize_bn(timm.create_model(name, pretrained=False)).eval()
            export_onnx(model, (torch.randn(1, 3, 160, 160),), path, exporter="dynamo")


def export_zoo(folder: Path) -> None:
    from bnfold.testing.zoo import ZOO, ZooExportError, export_onnx

    folder.mkdir(parents=True, exist_ok=True)
    for name, make in ZOO.items():
        path = folder / f"{name}.onnx"
        if not path.exists():
            model, inputs = make()
            with contextlib.suppress(ZooExportError):  # data-dependent control flow
                export_onnx(model, inputs, path, exporter="dynamo")


def run_batch(folder: Path, jobs: int, out: Path) -> tuple[float, float, str]:
    """Wall and CPU seconds of one ``bnfold FOLDER -j N -o OUT``, and its summary's count
    line (CPU: user + sys of the command and its worker processes)."""
    shutil.rmtree(out, ignore_errors=True)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(
        [BNFOLD, str(folder), "-j", str(jobs), "-o", str(out)], capture_output=True, text=True
    )
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if proc.returncode not in (0, 2):  # 2: a model onnxruntime cannot run (same in every run)
        raise SystemExit(f"-j {jobs} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    counts = next((ln for ln in proc.stdout.splitlines() if " models: " in ln), "").strip()
    return wall, cpu, counts


def load() -> str:
    one, five, _ = os.getloadavg()
    return f"{one:.2f} (1 min), {five:.2f} (5 min)"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--set", choices=("timm", "zoo"), default="timm")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--jobs", default="1,2")
    parser.add_argument("--cache", type=Path, default=Path("~/.cache/bnfold-batchbench"))
    parser.add_argument("--out", type=Path, default=HERE / "results" / "batch_throughput.md")
    args = parser.parse_args(argv)
    folder = args.cache.expanduser() / args.set
    (export_timm if args.set == "timm" else export_zoo)(folder)
    count = len(list(folder.glob("*.onnx")))
    jobs = [int(j) for j in args.jobs.split(",")]
    before = load()
    walls: dict[int, list[float]] = {j: [] for j in jobs}
    cpus: dict[int, list[float]] = {j: [] for j in jobs}
    counts = ""
    with tempfile.TemporaryDirectory(prefix="bnfold-batch-") as tmp:
        run_batch(folder, jobs[0], Path(tmp) / "warm")  # page cache, imports
        for r in range(args.rounds):
            order = jobs[r % len(jobs) :] + jobs[: r % len(jobs)]
            for j in order:
                wall, cpu, counts = run_batch(folder, j, Path(tmp) / f"j{j}")
                walls[j].append(wall)
                cpus[j].append(cpu)
                print(f"round {r + 1}: -j {j}: {wall:.2f} s, CPU {cpu:.2f} s", flush=True)
    after = load()
    base = jobs[0]
    lines = [
        "# batch_throughput",
        "",
        f"`python benchmarks/batch_throughput.py {' '.join(argv or sys.argv[1:])}` — "
        f"{datetime.date.today().isoformat()}, {len(os.sched_getaffinity(0))} CPUs, "
        f"{count} models ({args.set}); load average before {before}, after {after} "
        "(other processes shared the machine).",
        "",
        f"Summary of each run: {counts}",
        "",
        f"| -j | wall (s, median) | CPU (s, median) | cores busy | models/s "
        f"| throughput vs -j {base} | target ≥ {TARGET}× |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    cores = len(os.sched_getaffinity(0))
    busy = {
        j: statistics.median(c / w for c, w in zip(cpus[j], walls[j], strict=True)) for j in jobs
    }
    for j in jobs:
        med, cpu = statistics.median(walls[j]), statistics.median(cpus[j])
        ratio = statistics.median(b / w for b, w in zip(walls[base], walls[j], strict=True))
        ok = "" if j == base else ("✓" if ratio >= TARGET else "✗")
        lines.append(
            f"| {j} | {med:.2f} | {cpu:.2f} | {busy[j]:.2f} | {count / med:.2f} "
            f"| {ratio:.2f}× | {ok} |"
        )
        print(f"-j {j}: {med:.2f} s, {busy[j]:.2f} cores busy, {ratio:.2f}× {ok}")
    ceiling = cores / busy[base]
    lines += [
        "",
        f"Ceiling: `-j {base}` already keeps {busy[base]:.2f} of {cores} cores busy, so no "
        f"setting can gain more than {ceiling:.2f}× over it on this machine (cores ÷ cores "
        f"busy at -j {base}), whatever the scheduling.",
        "",
        f"Rounds: {args.rounds}, both settings run back to back in each round.",
        "",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines))
    print(f"load average before {before}, after {after}; wrote {args.out}")


if __name__ == "__main__":
    main()
