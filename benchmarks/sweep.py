"""Sweep bnfold over models nobody on the team wrote: timm, torchvision, paddle, third-party.

    python benchmarks/sweep.py --quick                      # ~20 exports: 10 families × 2 exporters
    python benchmarks/sweep.py --extra /tmp/tp/models       # everything, plus *.onnx in a folder
    python benchmarks/sweep.py --redo bnfold                # re-run only the bnfold column
    python benchmarks/sweep.py --render                     # only rebuild the tables from the cache
    python benchmarks/sweep.py --models resnet10t,tv_resnet18 --variants dynamo,fp16

Models: one small BatchNorm architecture per timm family (then one per further architecture
in a family), torchvision classification / video / detection / segmentation models, the
paddle2onnx fixtures and any ``--extra`` folder. Each is exported with the dynamo exporter
(``optimize=False``) and the legacy one (``do_constant_folding=False``), random BN statistics;
a subset also as fp16, opset 11 / 13, external data and a training-mode export
(``sweep_models.py``). For every export the default CLI runs exactly as a user would
(``bnfold MODEL -o OUT --json``, in a subprocess with a time limit), then every other tool of
``adapters.py`` in its own worker; their outputs are judged with ``bnfold.verify``.
Exports and per-model results are cached outside the repository (``--cache``), so a rerun
resumes; ``sweep_render.py`` writes ``results/sweep.{md,json}``.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

import sweep_models as sm  # noqa: E402
from sweep_worker import Worker  # noqa: E402

logger = logging.getLogger("sweep")

TOOLS = ("onnxscript", "ort-basic", "onnxoptimizer", "onnxsim", "onnxslim")
BNFOLD_TIMEOUT_S = 900
TOOL_TIMEOUT_S = 300
CHECK_TIMEOUT_S = 600
EXPORT_TIMEOUT_S = 900
QUICK = (
    "resnet10t",
    "mobilenetv3_small_050",
    "regnetx_002",
    "levit_128s",
    "ghostnet_050",
    "dla46x_c",
    "repvit_m1",
    "mobilevit_xxs",
    "efficientvit_m0",
    "tv_resnet18",
)
PADDLE = REPO / "tests" / "fixtures" / "paddle"

Entry = tuple[sm.Model, str]


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s")
    cache = Path(args.cache).expanduser()
    (cache / "results").mkdir(parents=True, exist_ok=True)
    entries = plan(args, cache)
    print(f"sweep: {len(entries)} exports planned, cache {cache}", flush=True)
    if not args.render:
        run(entries, cache, args.redo)
    import sweep_render

    out_dir = cache if args.quick else HERE / "results"
    done = sweep_render.write(entries, cache, out_dir, quick=args.quick)
    print(f"sweep: rendered {done} results to {out_dir}", flush=True)
    return 0


# ---- what to run ----------------------------------------------------------------------


def plan(args: argparse.Namespace, cache: Path) -> list[Entry]:
    """Run order: quick set, fixture files, half the format variants, one model per family
    (timm, with the torchvision models spread among them), the other half of the format
    variants, then the further timm architectures."""
    timm = sm.select_timm(catalogue(cache))
    models = [*timm, *sm.torchvision_models()]
    files = _files(args.extra)
    by_name = {m.name: m for m in models}
    quick = [by_name[n] for n in QUICK if n in by_name]
    if args.quick:
        ordered = [(m, v) for m in quick for v in sm.BASE_VARIANTS] + [(files[0], "file")]
    else:
        ordered = [(m, v) for m in quick for v in sm.BASE_VARIANTS]
        ordered += [(f, "file") for f in files]
        subset = [by_name[n] for n in sm.VARIANT_MODELS if n in by_name]
        formats = [(m, v) for m in subset for v in sm.FORMAT_VARIANTS]
        first = list({m.family: m for m in reversed(timm)}.values())
        tv = sorted(sm.torchvision_models(), key=lambda m: m.family.endswith("classification"))
        families = _interleave(sorted(first, key=lambda m: m.family), tv)
        ordered += formats[: len(formats) // 2]
        ordered += [(m, v) for m in families for v in sm.BASE_VARIANTS]
        ordered += formats[len(formats) // 2 :]
        ordered += [(m, v) for m in timm if m not in first for v in sm.BASE_VARIANTS]
    seen: set[tuple[str, str]] = set()
    entries = []
    for model, variant in ordered:
        if (model.name, variant) not in seen and _wanted(args, model, variant):
            seen.add((model.name, variant))
            entries.append((model, variant))
    return entries


def _interleave(many: list[sm.Model], few: list[sm.Model]) -> list[sm.Model]:
    """``many`` with ``few`` spread evenly through it (torchvision among the timm families)."""
    step = max(1, len(many) // max(1, len(few)))
    out: list[sm.Model] = []
    for i, model in enumerate(many):
        out.append(model)
        if i % step == step - 1 and few:
            out.append(few.pop(0))
    return out + few


def _wanted(args: argparse.Namespace, model: sm.Model, variant: str) -> bool:
    if args.models and model.name not in args.models.split(","):
        return False
    if args.families and not any(f in model.family for f in args.families.split(",")):
        return False
    return not (args.variants and variant != "file" and variant not in args.variants.split(","))


def _files(extra: str | None) -> list[sm.Model]:
    """The paddle fixtures (both folders) and any *.onnx in ``extra``, as ready-made models."""
    found = [(p, "paddle") for p in sorted(PADDLE.glob("*.onnx"))]
    found += [(p, "paddle") for p in sorted((PADDLE / "constant_weights").glob("*.onnx"))]
    if extra:
        found += [(p, "extra") for p in sorted(Path(extra).glob("*.onnx"))]
    models = []
    for path, source in found:
        prefix = "paddle1_" if path.parent.name == "constant_weights" else f"{source}_"
        family = f"{source}{'1' if prefix == 'paddle1_' else ''}"
        models.append(sm.Model(prefix + path.stem, source, family, path=str(path)))
    return models


def catalogue(cache: Path) -> dict[str, list[Any]]:
    """The timm catalogue (built once in a worker, ~7 min) from the cache."""
    path = cache / "timm_catalogue.json"
    if not path.exists():
        print("sweep: building the timm catalogue (meta device, once)…", flush=True)
        with Worker("catalogue", timeout_s=3600) as worker:
            result = worker.call("sweep_models:build_catalogue", str(path))
        if result["status"] != "ok":
            raise SystemExit(f"timm catalogue failed: {result.get('error')}")
    return json.loads(path.read_text())


# ---- running --------------------------------------------------------------------------


def run(entries: list[Entry], cache: Path, redo: str | None) -> None:
    """Export, fold with the CLI, run the other tools; one cached JSON per entry."""
    from isolation import ToolWorkers

    exporter = Worker("export", EXPORT_TIMEOUT_S, recycle_every=8)
    checker = Worker("check", CHECK_TIMEOUT_S, recycle_every=40)
    with exporter, checker, ToolWorkers(timeout_s=TOOL_TIMEOUT_S) as tools:
        for i, (model, variant) in enumerate(entries, 1):
            start = time.perf_counter()
            record = process(model, variant, cache, redo, exporter, checker, tools)
            seconds = time.perf_counter() - start
            key = _key(model, variant)
            print(
                f"[{i}/{len(entries)}] {key}: {progress_line(record)} ({seconds:.0f} s)", flush=True
            )


def process(
    model: sm.Model,
    variant: str,
    cache: Path,
    redo: str | None,
    exporter: Worker,
    checker: Worker,
    tools: Any,
) -> dict[str, Any]:
    """Bring one entry's record up to date, saving it after every step."""
    key = _key(model, variant)
    path = cache / "results" / f"{key}.json"
    record = json.loads(path.read_text()) if path.exists() else {}
    if redo == "all":
        record = {}
    elif redo == "bnfold":
        record.pop("bnfold", None)
    record.update(model=model.name, source=model.source, family=model.family, variant=variant)
    src = _source(model, variant, cache)
    if "export" not in record:
        record["export"] = _export(model, variant, src, exporter)
        _save(path, record)
    if record["export"]["status"] != "ok":
        return record
    if "bn_before" not in record:
        from measure import op_counts

        counts = op_counts(str(src))
        record["bn_before"] = counts["BatchNormalization"]
        record["dropout_before"] = counts["Dropout"]
    out_dir = cache / "out" / key
    training = variant == "training"
    if "bnfold" not in record:
        record["bnfold"] = run_bnfold(src, out_dir, training, checker)
        _save(path, record)
    shapes = record["bnfold"].get("shapes") or {}
    if "ort_original" not in record:
        result = checker.call("sweep_worker:ort_runs", str(src), shapes)
        record["ort_original"] = {"runs": result["status"] == "ok", "error": result.get("error")}
        _save(path, record)
    if "tools" not in record:
        record["tools"] = {
            t: run_tool(tools, checker, t, src, out_dir, shapes, training) for t in TOOLS
        }
        _save(path, record)
    shutil.rmtree(out_dir, ignore_errors=True)
    return record


def _key(model: sm.Model, variant: str) -> str:
    return f"{model.name}__{variant}"


def _source(model: sm.Model, variant: str, cache: Path) -> Path:
    if model.path is not None:
        return Path(model.path)
    return cache / "exports" / model.name / f"{variant}.onnx"


def _save(path: Path, record: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=1, default=str))
    tmp.replace(path)


def _export(model: sm.Model, variant: str, src: Path, worker: Worker) -> dict[str, Any]:
    if model.path is not None:
        return {"status": "ok", "input_shape": None, "seconds": 0.0}
    if src.exists():
        meta = src.with_suffix(".json")
        return json.loads(meta.read_text()) if meta.exists() else {"status": "ok"}
    src.parent.mkdir(parents=True, exist_ok=True)
    result = worker.call("sweep_models:export_entry", model, variant, str(src))
    if result["status"] != "ok" or not src.exists():
        for leftover in src.parent.glob(f"{variant}.onnx*"):
            leftover.unlink()
        error = result.get("error") or "no file written"
        return {"status": "export failed", "error": error}
    record = {"status": "ok", **result["value"]}
    src.with_suffix(".json").write_text(json.dumps(record))
    return record


# ---- bnfold, as a user runs it ---------------------------------------------------------


def bnfold_command(src: Path, out: Path, training: bool, force: bool = False) -> list[str]:
    exe = Path(sys.executable).parent / "bnfold"
    cmd = [str(exe if exe.exists() else "bnfold"), str(src), "-o", str(out), "--json"]
    return cmd + (["--assume-eval"] if training else []) + (["--force"] if force else [])


def run_bnfold(src: Path, out_dir: Path, training: bool, checker: Worker) -> dict[str, Any]:
    """The default CLI in a subprocess, its JSON report parsed; then a second opinion."""
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / "bnfold.onnx"
    cmd = bnfold_command(src, out, training)
    record: dict[str, Any] = {"command": "bnfold " + " ".join(cmd[1:])}
    start = time.perf_counter()
    try:
        proc = subprocess.run(
            cmd, capture_output=True, text=True, timeout=BNFOLD_TIMEOUT_S, cwd=REPO
        )
    except subprocess.TimeoutExpired:
        return {
            **record,
            "exit": None,
            "crash": True,
            "error": f"timed out after {BNFOLD_TIMEOUT_S} s",
        }
    record["seconds"] = round(time.perf_counter() - start, 2)
    record["exit"] = proc.returncode
    record.update(parse_report(_json(proc.stdout)))
    traceback = "Traceback (most recent call last)" in proc.stderr
    record["crash"] = traceback or proc.returncode not in (0, 1, 2)
    if record["crash"] or proc.returncode != 0:
        record["stderr"] = proc.stderr[-4000:]
        if not record.get("error"):
            lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
            record["error"] = lines[-1][:300] if lines else f"exit {proc.returncode}"
    record["check"] = second_opinion(record, src, out, training, checker)
    return record


def parse_report(doc: dict[str, Any]) -> dict[str, Any]:
    """Counts, skip reasons, verdict and inputs from ``bnfold --json``."""
    if not doc:
        return {}
    report = doc.get("report") or {}
    counts = report.get("counts") or {}
    verification = doc.get("verification") or {}
    reasons: Counter[str] = Counter()
    for entry in report.get("entries") or []:
        if entry.get("status") == "left" and "dropout" not in entry.get("kind", "").lower():
            reasons[entry.get("reason") or "?"] += 1
    inputs = verification.get("inputs") or {}
    return {
        "status": doc.get("status"),
        "error": doc.get("error"),
        "bn": counts.get("batchnorm"),
        "dropout": counts.get("dropout"),
        "left_reasons": dict(reasons),
        "warnings": report.get("warnings") or [],
        "equivalent": verification.get("equivalent"),
        "summary": verification.get("summary"),
        "inputs": inputs,
        "shapes": _shapes(inputs),
        "outputs": [
            {k: o.get(k) for k in ("name", "passed", "max_abs", "floor", "threshold")}
            for o in verification.get("outputs") or []
        ],
    }


def _shapes(inputs: dict[str, str]) -> dict[str, list[int]]:
    """``{"x": "float32 1x3x32x32 (synthesised)"}`` → ``{"x": [1, 3, 32, 32]}``."""
    shapes = {}
    for name, text in inputs.items():
        match = re.search(r"\s(\d+(?:x\d+)*)(\s|$)", f" {text}")
        if match:
            shapes[name] = [int(d) for d in match.group(1).split("x")]
    return shapes


def _json(text: str) -> dict[str, Any]:
    try:
        doc = json.loads(text)
    except json.JSONDecodeError:
        start = text.find("{")
        try:
            doc = json.loads(text[start:]) if start >= 0 else {}
        except json.JSONDecodeError:
            return {}
    return doc if isinstance(doc, dict) else {}


def second_opinion(
    record: dict[str, Any], src: Path, out: Path, training: bool, checker: Worker
) -> dict[str, Any]:
    """Judge bnfold's verdict without its verifier.

    exit 0: max |Δ| of the written output vs the original (1e-4 relative).
    exit 1: is the original equivalent to itself under bnfold.verify, and does the
    ``--force``-written output pass the independent check? Either makes it a false failure.
    """
    shapes = record.get("shapes") or {}
    if record.get("exit") == 0 and out.exists():
        return _value(
            checker.call("sweep_worker:independent_error", str(src), str(out), shapes, training)
        )
    if record.get("exit") != 1:
        return {}
    check: dict[str, Any] = {}
    own = checker.call("sweep_worker:verify_output", str(src), str(src), shapes, training)
    check["self_verify"] = _value(own)
    forced = subprocess.run(
        bnfold_command(src, out, training, force=True),
        capture_output=True,
        text=True,
        timeout=BNFOLD_TIMEOUT_S,
        cwd=REPO,
    )
    if out.exists():
        result = checker.call(
            "sweep_worker:independent_error", str(src), str(out), shapes, training
        )
        check.update(_value(result))
    else:
        check["problem"] = f"--force wrote nothing (exit {forced.returncode})"
    check["false_failure"] = bool(
        check["self_verify"].get("equivalent") is False or check.get("passed")
    )
    return check


def _value(result: dict[str, Any]) -> dict[str, Any]:
    if result["status"] == "ok":
        return result["value"]
    return {"problem": result.get("error"), "passed": None}


# ---- the other tools ------------------------------------------------------------------


def run_tool(
    tools: Any,
    checker: Worker,
    tool: str,
    src: Path,
    out_dir: Path,
    shapes: dict[str, list[int]],
    training: bool,
) -> dict[str, Any]:
    """One tool in its worker: BN left, crash, and bnfold.verify of its output."""
    from measure import op_counts

    out_dir.mkdir(parents=True, exist_ok=True)
    dst = out_dir / f"{tool}.onnx"
    result = tools.run(tool, str(src), str(dst))
    status = result["status"]
    record: dict[str, Any] = {"status": status, "seconds": result.get("seconds")}
    record["crash"] = "crashed" in status or "timed out" in status
    if status != "ok" or not dst.exists():
        record["equivalent"] = False
        return record
    try:
        record["bn_left"] = op_counts(str(dst))["BatchNormalization"]
    except Exception as err:
        record.update(equivalent=False, problem=f"unreadable output: {type(err).__name__}")
        return record
    check = checker.call("sweep_worker:verify_output", str(src), str(dst), shapes, training)
    value = _value(check)
    record["equivalent"] = bool(value.get("equivalent"))
    record["verify"] = value.get("summary") or value.get("problem")
    return record


def progress_line(record: dict[str, Any]) -> str:
    """One line per entry for the log."""
    from sweep_render import crashed

    if record.get("export", {}).get("status") != "ok":
        return f"export failed: {record.get('export', {}).get('error', '')[:120]}"
    b = record.get("bnfold", {})
    bn = b.get("bn") or {}
    verdict = {True: "equivalent", False: "NOT equivalent", None: "no verdict"}[b.get("equivalent")]
    parts = [
        f"bnfold exit {b.get('exit')}{' CRASH' if crashed(b) else ''}",
        f"BN {bn.get('found', '?')}/{bn.get('folded', '?')}/{bn.get('left', '?')}",
        verdict,
    ]
    if b.get("exit") not in (0, None) and b.get("error"):
        parts.append(str(b["error"])[:100])
    for tool, t in (record.get("tools") or {}).items():
        mark = "" if t.get("equivalent") else "✗"
        parts.append(f"{tool} {t.get('bn_left', '-')}{mark}")
    return " | ".join(parts)


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="~20 exports, mixed families")
    parser.add_argument("--models", help="comma-separated model names")
    parser.add_argument("--families", help="comma-separated family substrings (timm module…)")
    parser.add_argument("--variants", help="comma-separated: dynamo,legacy,fp16,opset11,…")
    parser.add_argument("--extra", help="folder of third-party *.onnx to include")
    parser.add_argument("--cache", default="~/.cache/bnfold-sweep", help="exports and results")
    parser.add_argument("--redo", choices=("bnfold", "all"), help="re-run cached results")
    parser.add_argument("--render", action="store_true", help="only render the cached results")
    return parser.parse_args(argv)


if __name__ == "__main__":
    raise SystemExit(main())
