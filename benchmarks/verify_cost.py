"""What verification adds to ``bnfold MODEL``: the whole command with and without it.

    python benchmarks/verify_cost.py                 # ResNet-50, both exporters, 5 rounds
    python benchmarks/verify_cost.py --rounds 3 --exporters dynamo
    python benchmarks/verify_cost.py --profile       # also: cProfile + wall time per phase

Target (issue 18): ``bnfold resnet50.onnx`` ≤ 2.0× ``bnfold resnet50.onnx --no-verify``.

torchvision's ResNet-50 with random BN statistics is exported once per exporter
(``dynamo=True, optimize=False`` and legacy ``dynamo=False, do_constant_folding=False``)
and cached in ``--cache`` (default ``~/.cache/bnfold-verifycost``). Each round runs both
commands as a user would (a fresh ``bnfold`` process each), interleaved, in a rotating
order; the table gives medians of wall time and of CPU time (user + sys of the child:
on a shared machine the wall ratio moves with other people's load, the CPU ratio much
less) and the median of the per-round ratios. The load average before and after the
run is printed and written with the results to ``benchmarks/results/verify_cost.md``.
"""

from __future__ import annotations

import argparse
import datetime
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
TARGET = 2.0
EXPORTERS = ("dynamo", "legacy")
BNFOLD = [str(Path(sys.executable).with_name("bnfold"))]  # the console script beside python


def export(exporter: str, cache: Path) -> Path:
    """torchvision ResNet-50 (random BN statistics), BN left unfolded; cached."""
    path = cache / f"resnet50_{exporter}.onnx"
    if path.exists():
        return path
    import torch
    import torchvision

    from bnfold.testing.zoo import export_onnx, randomize_bn

    cache.mkdir(parents=True, exist_ok=True)
    model = randomize_bn(torchvision.models.resnet50()).eval()
    export_onnx(model, (torch.randn(1, 3, 224, 224),), path, exporter=exporter)
    return path


def timed(cmd: list[str]) -> tuple[float, float]:
    """Wall and CPU (user + sys) seconds of one child process; fails loudly on exit ≠ 0."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stderr}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def measure(model: Path, rounds: int, out_dir: Path) -> dict[str, list[tuple[float, float]]]:
    """The three commands per round, order rotating; one warm-up of each first (page cache).

    ``floor``: ``--measure-floor``, the noise floor measured even though no verdict needs
    it: what a check costs on a model whose outputs need the floor (the rule's full run
    count), shown beside the target.
    """
    out = out_dir / f"{model.stem}.folded.onnx"
    cmds = {
        "verify": [*BNFOLD, str(model), "-o", str(out)],
        "no-verify": [*BNFOLD, str(model), "-o", str(out), "--no-verify"],
        "floor": [*BNFOLD, str(model), "-o", str(out), "--measure-floor"],
    }
    for cmd in cmds.values():
        timed(cmd)
    times: dict[str, list[tuple[float, float]]] = {k: [] for k in cmds}
    keys = list(cmds)
    for r in range(rounds):
        for key in keys[r % len(keys) :] + keys[: r % len(keys)]:
            times[key].append(timed(cmds[key]))
    return times


def summarise(times: dict[str, list[tuple[float, float]]]) -> dict[str, float]:
    v, n, f = times["verify"], times["no-verify"], times["floor"]
    return {
        "verify_wall": statistics.median(w for w, _ in v),
        "noverify_wall": statistics.median(w for w, _ in n),
        "floor_wall": statistics.median(w for w, _ in f),
        "verify_cpu": statistics.median(c for _, c in v),
        "noverify_cpu": statistics.median(c for _, c in n),
        "ratio_wall": statistics.median(a[0] / b[0] for a, b in zip(v, n, strict=True)),
        "ratio_cpu": statistics.median(a[1] / b[1] for a, b in zip(v, n, strict=True)),
        "floor_ratio_wall": statistics.median(a[0] / b[0] for a, b in zip(f, n, strict=True)),
    }


def profile(model: Path) -> str:
    """cProfile of verify() on the model and its folded copy, plus wall time per phase."""
    import cProfile
    import io
    import pstats

    from bnfold.equivalence.api import verify
    from bnfold.onnx.api import fold_onnx

    lines = []
    with tempfile.TemporaryDirectory() as tmp:
        folded = Path(tmp) / "folded.onnx"
        start = time.perf_counter()
        fold_onnx(model).save(folded)
        lines.append(f"fold + save: {time.perf_counter() - start:.3f} s")
        verify(model, folded)  # warm-up: imports, page cache
        prof = cProfile.Profile()
        start = time.perf_counter()
        prof.enable()
        verify(model, folded)
        prof.disable()
        lines.append(f"verify(): {time.perf_counter() - start:.3f} s wall")
        text = io.StringIO()
        pstats.Stats(prof, stream=text).sort_stats("cumulative").print_stats(25)
        lines.append(text.getvalue())
    return "\n".join(lines)


def load() -> str:
    one, five, _ = os.getloadavg()
    return f"{one:.2f} (1 min), {five:.2f} (5 min)"


def mark(ratio: float) -> str:
    return "✓" if ratio <= TARGET else "✗"


def render(rows: list[tuple[str, dict[str, float]]], meta: dict[str, str]) -> str:
    lines = [
        "# verify_cost",
        "",
        f"`python benchmarks/verify_cost.py {meta['args']}` — {meta['when']}, {meta['cpus']} CPUs,",
        f"load average before {meta['load_before']}, after {meta['load_after']}"
        " (other processes shared the machine: see the note in benchmarks/README.md).",
        "",
        "| model | `bnfold M` wall (s) | `--no-verify` wall (s) | ratio wall | "
        "CPU (s) | `--no-verify` CPU (s) | ratio CPU | target ≤ 2.0× (wall) "
        "| `--measure-floor` wall (s) | its ratio wall |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, s in rows:
        lines.append(
            f"| {name} | {s['verify_wall']:.2f} | {s['noverify_wall']:.2f} | "
            f"{s['ratio_wall']:.2f}× | {s['verify_cpu']:.2f} | {s['noverify_cpu']:.2f} | "
            f"{s['ratio_cpu']:.2f}× | {mark(s['ratio_wall'])} | {s['floor_wall']:.2f} | "
            f"{s['floor_ratio_wall']:.2f}× |"
        )
    lines += [
        "",
        "Medians over the rounds; the ratios are medians of per-round ratios (the commands",
        "run back to back in each round, order rotating). `bnfold M` measures the noise floor",
        "only when an output exceeds its fixed tolerance; `--measure-floor` always measures it,",
        "which is what the check costs on a model whose outputs need the floor.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--exporters", default=",".join(EXPORTERS))
    parser.add_argument("--cache", type=Path, default=Path("~/.cache/bnfold-verifycost"))
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "verify_cost.md")
    args = parser.parse_args(argv)
    cache = args.cache.expanduser()
    exporters = [e for e in args.exporters.split(",") if e]
    models = {e: export(e, cache) for e in exporters}
    meta = {
        "args": " ".join(argv if argv is not None else sys.argv[1:]),
        "when": datetime.date.today().isoformat(),
        "cpus": str(len(os.sched_getaffinity(0))),
        "load_before": load(),
    }
    rows = []
    with tempfile.TemporaryDirectory(prefix="bnfold-verifycost-") as tmp:
        for exporter, model in models.items():
            s = summarise(measure(model, args.rounds, Path(tmp)))
            name = f"ResNet-50 ({exporter}, {model.stat().st_size / 1e6:.0f} MB)"
            rows.append((name, s))
            print(
                f"{name}: {s['verify_wall']:.2f} s vs {s['noverify_wall']:.2f} s --no-verify: "
                f"{s['ratio_wall']:.2f}× wall ({s['ratio_cpu']:.2f}× CPU), "
                f"target ≤ {TARGET}× {mark(s['ratio_wall'])}; --measure-floor "
                f"{s['floor_wall']:.2f} s ({s['floor_ratio_wall']:.2f}×)",
                flush=True,
            )
    meta["load_after"] = load()
    text = render(rows, meta)
    if args.profile:
        text += "\n## Profile (dynamo export)\n\n```\n" + profile(next(iter(models.values())))
        text += "```\n"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(f"load average before {meta['load_before']}, after {meta['load_after']}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
