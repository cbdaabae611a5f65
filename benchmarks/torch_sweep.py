"""Executed BN folded on timm architectures: module path (with/without inputs), ONNX path, fx.fuse.

One small architecture per timm family that holds BatchNorm (``sweep_models.select_timm``'s
first pass), built as the sweep builds them (random BN statistics, smallest accepted input).
Per model, in a child process each (a crash or hang costs one cell, not the run):

- ``module``: ``bnfold.fold(model, example_inputs=(x,))`` and ``bnfold.fold(model)``; BN ops
  executed by the result (``torch_fold_bench.count_bn_ops``) and the max relative error;
- ``onnx``: the model exported with BN kept (the sweep's cached dynamo export when present,
  else ``bnfold.torch.export.export_unfolded``), then ``bnfold.fold`` on the ONNX model;
- ``fuse``: ``torch.fx.experimental.optimization.fuse``.

    nice .venv/bin/python benchmarks/torch_sweep.py [--models a,b] [--parts module,onnx,fuse]
        [--redo] [--out benchmarks/results/torch_sweep.md]

Results are cached per (model, part) under ``~/.cache/bnfold-torch-sweep``; ``--render``
only rebuilds the table.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
CACHE = Path("~/.cache/bnfold-torch-sweep").expanduser()
SWEEP_EXPORTS = Path("~/.cache/bnfold-sweep/exports").expanduser()
CATALOGUE = Path("~/.cache/bnfold-sweep/timm_catalogue.json").expanduser()
PARTS = ("module", "onnx", "fuse", "floor")
EXTRA = ("repvgg_a0", "mobileone_s0")  # re-parameterisable blocks beside each family's pick
TOLERANCE = 1e-5  # max relative error of a correct fold …
NOISE_FACTOR = 16.0  # … or within this multiple of the model's own noise floor


def models() -> list[str]:
    """First-pass picks (one per timm family holding BN), smallest first, plus EXTRA."""
    sys.path.insert(0, str(HERE))
    import sweep_models as sm

    picks = sm.select_timm(json.loads(CATALOGUE.read_text()))
    first: dict[str, Any] = {}
    for m in picks:
        first.setdefault(m.family, m)
    names = [m.name for m in sorted(first.values(), key=lambda m: m.params)]
    return names + [n for n in EXTRA if n not in names]


# ---- one (model, part), in a child process ----------------------------------------------


def run_one(name: str, part: str) -> dict[str, Any]:
    import copy
    import warnings

    import torch

    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    sys.path.insert(0, str(HERE))
    import sweep_models as sm
    from torch_fold_bench import count_bn_ops

    net, inputs = sm.build(sm.Model(name, "timm", "?"))
    with torch.no_grad():
        ref = net(*inputs)
    scale = float(ref.abs().max())
    out: dict[str, Any] = {"model": name, "part": part, "executed": count_bn_ops(net, inputs)}
    out["commit"] = _commit()
    if part == "module":
        import bnfold

        net64 = copy.deepcopy(net).double()
        inputs64 = tuple(x.double() if x.is_floating_point() else x for x in inputs)
        with torch.no_grad():
            ref64 = net64(*inputs64)
        scale64 = float(ref64.abs().max())
        for key, ex in (("with_inputs", inputs), ("without_inputs", None)):
            start = time.perf_counter()
            result = bnfold.fold(net, example_inputs=ex)
            folded = result.model
            with torch.no_grad():
                got = folded(*inputs)
            left = count_bn_ops(folded, inputs)
            counts = result.report.counts()["batchnorm"]
            out[key] = {
                "left": left,
                "rel_error": float((got.double() - ref.double()).abs().max()) / max(scale, 1e-12),
                "seconds": round(time.perf_counter() - start, 1),
                "report": counts,
                "reasons": _reasons(result.report),
                "root_traced": not {"", "<root>"} & set(result.trace_failures),
                "warnings": result.report.warnings,
            }
            # the same fold in float64: the fold's own error, free of float32 rounding chaos
            result64 = bnfold.fold(net64, example_inputs=None if ex is None else inputs64)
            with torch.no_grad():
                got64 = result64.model(*inputs64)
            out[key]["left_f64"] = count_bn_ops(result64.model, inputs64)
            out[key]["rel_error_f64"] = float((got64 - ref64).abs().max()) / max(scale64, 1e-300)
    elif part == "floor":
        out["floor"] = _noise_floor(net, inputs, ref, scale)
    elif part == "fuse":
        from torch.fx.experimental.optimization import fuse

        try:
            fused = fuse(net)
            with torch.no_grad():
                got = fused(*inputs)
            out["fuse"] = {
                "left": count_bn_ops(fused, inputs),
                "rel_error": float((got.double() - ref.double()).abs().max()) / max(scale, 1e-12),
            }
        except Exception as exc:  # fx cannot trace it
            out["fuse"] = {"failure": f"{type(exc).__name__}: {str(exc)[:80]}"}
    else:
        out["onnx"] = _onnx(name, net, inputs)
    return out


def _commit() -> str:
    """The bnfold commit a result was measured with (``+`` when the tree had changes)."""

    def git(*args: str) -> str:
        proc = subprocess.run(["git", *args], capture_output=True, text=True, cwd=HERE)
        return proc.stdout.strip()

    return git("rev-parse", "--short", "HEAD") + (
        "+" if git("status", "--porcelain", "bnfold") else ""
    )


def _noise_floor(net: Any, inputs: tuple[Any, ...], ref: Any, scale: float) -> float:
    """The model's own relative output change when its input moves by one ulp (2 seeds)."""
    import torch

    floor = 0.0
    for seed in (1, 2):
        gen = torch.Generator().manual_seed(seed)
        x = inputs[0]
        sign = torch.randint(0, 2, x.shape, generator=gen).to(x.dtype) * 2 - 1
        nudged = x + x * torch.finfo(x.dtype).eps * sign
        with torch.no_grad():
            out = net(nudged, *inputs[1:])
        floor = max(floor, float((out.double() - ref.double()).abs().max()) / max(scale, 1e-12))
    return floor


def _onnx(name: str, net: Any, inputs: tuple[Any, ...]) -> dict[str, Any]:
    import bnfold
    from bnfold.torch.export import export_unfolded

    cached = SWEEP_EXPORTS / name / "dynamo.onnx"
    with tempfile.TemporaryDirectory() as tmp:
        path = cached if cached.exists() else Path(tmp) / "model.onnx"
        if not cached.exists():
            export_unfolded(net, inputs, path, exporter="auto")
        result = bnfold.fold(str(path))
        counts = result.report.counts()["batchnorm"]
        return {
            "found": counts["found"],
            "left": counts["left"],
            "export": "sweep cache" if cached.exists() else "export_unfolded",
            "reasons": _reasons(result.report),
        }


def _reasons(report: Any) -> dict[str, int]:
    out: dict[str, int] = {}
    for e in report.batchnorms:
        if e.status == "left":
            key = (e.reason or "?")[:100]
            out[key] = out.get(key, 0) + 1
    return out


# ---- driver and table ---------------------------------------------------------------------


def drive(names: list[str], parts: list[str], redo: bool, timeout: int) -> None:
    CACHE.mkdir(parents=True, exist_ok=True)
    for name in names:
        for part in parts:
            path = CACHE / f"{name}__{part}.json"
            if path.exists() and not redo:
                continue
            start = time.perf_counter()
            cmd = [sys.executable, __file__, "--one", name, "--part", part]
            try:
                proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
                data = _last_json(proc.stdout)
                if data is None:
                    tail = (proc.stderr or "").strip().splitlines()[-1:] or ["no output"]
                    data = {"model": name, "part": part, "failure": tail[0][:200]}
            except subprocess.TimeoutExpired:
                data = {"model": name, "part": part, "failure": f"timeout {timeout}s"}
            path.write_text(json.dumps(data, indent=1))
            took = time.perf_counter() - start
            print(f"{name} {part}: {took:.0f}s {data.get('failure', '')}", flush=True)


def _last_json(text: str) -> dict[str, Any] | None:
    for line in reversed(text.strip().splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    return None


def render(names: list[str]) -> str:
    rows, totals = [], {"executed": 0, "with": 0, "without": 0, "onnx": 0, "fuse": 0}
    worst, worst64, failures, short, untraced, wrong = 0.0, 0.0, [], [], [], []
    commits: set[str] = set()
    for name in names:
        cells = {p: _load(name, p) for p in PARTS}
        mod, onnx, fuse = cells["module"], cells["onnx"], cells["fuse"]
        if mod is None:
            continue  # not run yet
        if "failure" in mod:
            failures.append(f"{name} ({mod['failure'][:60]})")
            continue
        commits.add(mod.get("commit", "before c6c9832"))
        ex = mod["executed"]
        w, wo = ex - mod["with_inputs"]["left"], ex - mod["without_inputs"]["left"]
        worst = max(worst, mod["with_inputs"]["rel_error"], mod["without_inputs"]["rel_error"])
        o = onnx.get("onnx") if onnx else None
        o_cell = f"{o['found'] - o['left']}/{o['found']}" if o else "—"
        f = fuse.get("fuse") if fuse else None
        f_cell = (
            "trace failed" if f and "failure" in f else (f"{ex - f['left']}/{ex}" if f else "—")
        )
        if o and f:  # totals over models every path has run on
            totals["executed"] += ex
            totals["with"] += w
            totals["without"] += wo
            totals["onnx"] += ex - min(o["left"], ex)
            totals["fuse"] += 0 if "failure" in f else ex - f["left"]
        traced = mod["without_inputs"].get("root_traced", True)
        if o and mod["with_inputs"]["left"] > o["left"]:
            short.append(name)
        if o and mod["without_inputs"]["left"] > o["left"]:
            (short if traced else untraced).append(name)
        err = max(mod["with_inputs"]["rel_error"], mod["without_inputs"]["rel_error"])
        fl = cells["floor"].get("floor") if cells["floor"] else None
        fl_cell = f"{fl:.1e}" if fl is not None else "—"
        e64 = [mod[k].get("rel_error_f64") for k in ("with_inputs", "without_inputs")]
        err64 = max(e for e in e64 if e is not None) if None not in e64 else None
        if err64 is not None:
            worst64 = max(worst64, err64)
        beyond_noise = err > TOLERANCE and (fl is None or err > NOISE_FACTOR * fl)
        if (err64 > TOLERANCE) if err64 is not None else beyond_noise:
            wrong.append(name)
        e64_cell = f"{err64:.1e}" if err64 is not None else "—"
        wo_cell = f"{wo}/{ex}" + ("" if traced else " ¹")
        rows.append(
            f"| {name} | {ex} | {w}/{ex} | {wo_cell} | {o_cell} | {f_cell} | {err:.1e} "
            f"| {fl_cell} | {e64_cell} |"
        )
    ex = max(totals["executed"], 1)
    head = [
        "# bnfold on nn.Modules vs the ONNX path vs fx.fuse (timm, one model per family)",
        "",
        "Executed BN ops folded (BN left = BN ops the result still runs in one forward pass; "
        "ONNX: BatchNormalization nodes of the unfolded export, folded by `bnfold.fold`). "
        "max rel err: module path, worst of with/without inputs, vs max|output|; noise floor: "
        "the original's own relative output change when its input moves by one ulp (a model "
        "with random BN statistics can be chaotic: then any rounding change moves it that much). "
        "float64 rel err: the same folds on a float64 copy of the model (with and without "
        "inputs), i.e. the fold's own error without float32 rounding. ¹ the model's root is "
        "not fx-traceable: without inputs only its traceable parts are folded.",
        "",
        "| model | BN run | module + inputs | module, no inputs | ONNX path | fx.fuse "
        "| max rel err (float32) | noise floor | max rel err (float64) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    summary = [
        "",
        f"- models: {len(rows)}; module-path failures: {', '.join(failures) or 'none'}",
        "- totals over the models where every path ran (fx.fuse: 0 where it cannot trace):",
        f"- module path with inputs: {totals['with']}/{ex} ({100 * totals['with'] / ex:.1f}%)",
        f"- module path without inputs: {totals['without']}/{ex} "
        f"({100 * totals['without'] / ex:.1f}%)",
        f"- ONNX path (executed BN minus BN nodes left): {totals['onnx']}/{ex} "
        f"({100 * totals['onnx'] / ex:.1f}%)",
        f"- fx.fuse: {totals['fuse']}/{ex} ({100 * totals['fuse'] / ex:.1f}%)",
        f"- module path (with or without inputs) leaves more BN than the ONNX path on: "
        f"{', '.join(short) or 'none'}",
        f"- … and without inputs on models whose root fx cannot trace: "
        f"{', '.join(untraced) or 'none'}",
        f"- module-path results measured at commits: {', '.join(sorted(commits)) or '?'}",
        f"- worst max relative error (module path): float32 {worst:.1e}, float64 {worst64:.1e}; "
        f"models whose fold error is above {TOLERANCE:g} (float64; float32 beyond "
        f"{NOISE_FACTOR:g}× its noise floor where float64 was not run): "
        f"{', '.join(wrong) or 'none'}",
    ]
    return "\n".join(head + rows + summary) + "\n"


def _load(name: str, part: str) -> dict[str, Any] | None:
    path = CACHE / f"{name}__{part}.json"
    return json.loads(path.read_text()) if path.exists() else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", help="comma-separated timm names (default: the selection)")
    parser.add_argument("--parts", default=",".join(PARTS))
    parser.add_argument("--redo", action="store_true", help="ignore cached results")
    parser.add_argument("--render", action="store_true", help="only rebuild the table")
    parser.add_argument("--timeout", type=int, default=900)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "torch_sweep.md")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--part", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(run_one(args.one, args.part)))
        return 0
    names = args.models.split(",") if args.models else models()
    if not args.render:
        drive(names, args.parts.split(","), args.redo, args.timeout)
    text = render(names)
    args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
