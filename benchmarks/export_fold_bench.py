"""BN folding in ``torch.export`` programs: bnfold vs the ExecuTorch rule vs bnfold's module path.

For each sweep model (timm, the smallest BN architecture of every family, as
``sweep_models.select_timm`` picks them; random BN statistics) exported with
``torch.export.export``:

- **bnfold (program)**: ``bnfold.fold(ep)`` on the program as exported, and on
  ``ep.run_decompositions()``; verified and rolled back per BN by bnfold itself;
- **ExecuTorch rule**: conv → BN where the convolution has a single user, folded with
  ``torch.nn.utils.fusion.fuse_conv_bn_weights`` into the convolution's *own* weight
  attribute, as ExecuTorch's backend passes do (executorch
  ``backends/transforms/fuse_batch_norm_with_conv.py`` ``FuseBatchNormWithConvPass``;
  ``backends/xnnpack/_passes/fuse_batch_norm.py``; reimplemented here because executorch
  pins its own torch). Applied to the decomposed program (edge dialect spells BN as
  ``_native_batch_norm_legit_no_training`` after ``aten.convolution``);
- **bnfold (module)**: ``bnfold.fold(module, example_inputs)``.

Reported per model: BN calls in the program, BN folded by each, max abs error of each
against the original module on the example input (relative to max|ref|), seconds.

    nice .venv/bin/python benchmarks/export_fold_bench.py [--models a,b] [--limit N]
    .venv/bin/python benchmarks/export_fold_bench.py --render   # table from the cache

Each model runs in a child process with a time limit; results are cached per model in
``~/.cache/bnfold-export-bench`` so a rerun resumes. Writes ``results/export_fold.md``.
"""

from __future__ import annotations

import argparse
import json
import operator
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
CACHE = Path("~/.cache/bnfold-export-bench").expanduser()
SWEEP_CACHE = Path("~/.cache/bnfold-sweep").expanduser()
TIMEOUT_S = 600


def families() -> list[Any]:
    """Pass 1 of the sweep's selection: the smallest BN architecture of every timm family."""
    import sweep_models as sm

    catalogue = json.loads((SWEEP_CACHE / "timm_catalogue.json").read_text())
    picks = sm.select_timm(catalogue)
    first: dict[str, Any] = {}
    for model in picks:
        first.setdefault(model.family, model)
    return sorted(first.values(), key=lambda m: m.params)


# ---- one model (in a child process) ----------------------------------------------------


def measure(name: str) -> dict[str, Any]:
    import warnings

    import sweep_models as sm
    import torch

    import bnfold
    from bnfold.export.program import BN_OPS

    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    model, inputs = sm.build(sm.Model(name, "timm", ""))
    with torch.no_grad():
        ref = model(*inputs)
    scale = float(ref.abs().max()) or 1.0
    row: dict[str, Any] = {"model": name, "input": list(inputs[0].shape)}
    start = time.perf_counter()
    ep = torch.export.export(model, inputs)
    row["export_s"] = time.perf_counter() - start
    row["bn"] = sum(n.target in BN_OPS for n in ep.graph_module.graph.nodes)
    start = time.perf_counter()
    decomposed = ep.run_decompositions()
    row["decompose_s"] = time.perf_counter() - start

    def error(program_or_module: Any) -> float:
        runnable = program_or_module
        if isinstance(program_or_module, torch.export.ExportedProgram):
            runnable = program_or_module.module()
        with torch.no_grad():
            got = runnable(*inputs)
        return float((got - ref).abs().max()) / scale

    for label, program in (("program", ep), ("decomposed", decomposed)):
        row[label] = _run(lambda p=program: _bnfold_program(bnfold, p), error)
    row["executorch"] = _run(lambda: _executorch_rule(decomposed), error)
    row["module"] = _run(lambda: _bnfold_module(bnfold, model, inputs), error)
    return row


def _run(fold: Any, error: Any) -> dict[str, Any]:
    start = time.perf_counter()
    try:
        result, folded, note = fold()
    except Exception as err:
        return {"error": f"{type(err).__name__}: {str(err).splitlines()[0][:160]}"}
    out = {"folded": folded, "seconds": time.perf_counter() - start}
    try:
        out["rel_error"] = error(result)
    except Exception as err:
        out["error"] = f"runs no more: {type(err).__name__}: {str(err).splitlines()[0][:120]}"
    if note:
        out["note"] = note
    return out


def _bnfold_program(bnfold: Any, ep: Any) -> tuple[Any, int, str]:
    result = bnfold.fold(ep)
    counts = result.report.counts()["batchnorm"]
    note = "" if result.verification is None or result.verification else "NOT equivalent"
    return result.program, counts["folded"], note


def _bnfold_module(bnfold: Any, model: Any, inputs: Any) -> tuple[Any, int, str]:
    result = bnfold.fold(model, example_inputs=inputs)
    counts = result.report.counts()["batchnorm"]
    note = "" if result.verification is None or result.verification else "NOT equivalent"
    return result.model, counts["folded"], note


def _executorch_rule(decomposed: Any) -> tuple[Any, int, str]:
    """ExecuTorch's conv+BN rule on the unlifted module (weights overwritten in place)."""
    import copy

    import torch
    from torch.nn.utils.fusion import fuse_conv_bn_weights

    aten = torch.ops.aten
    gm = copy.deepcopy(decomposed.module())
    graph = gm.graph
    folded = 0
    for bn in list(graph.nodes):
        if bn.target != aten._native_batch_norm_legit_no_training.default:
            continue
        conv = bn.args[0]
        if conv.target != aten.convolution.default or len(conv.users) != 1:
            continue
        if any(u.target is not operator.getitem or u.args[1] != 0 for u in bn.users):
            continue
        attrs = [conv.args[1], conv.args[2], *bn.args[1:5]]
        if any(a is not None and a.op != "get_attr" for a in attrs):
            continue
        try:
            w, b = _attr(gm, conv.args[1]), _attr(gm, conv.args[2])
            bn_w, bn_b, rm, rv = (_attr(gm, a) for a in bn.args[1:5])
        except AttributeError:
            continue
        eps = float(bn.args[6])
        fused_w, fused_b = fuse_conv_bn_weights(
            w, b, rm, rv, eps, bn_w, bn_b, transpose=bool(conv.args[6])
        )
        _set_attr(gm, conv.args[1].target, fused_w)  # in place: a shared weight changes too
        if conv.args[2] is None:
            name = conv.args[1].target.rsplit(".", 1)[0] + ".bias_fused"
            _set_attr(gm, name, fused_b)
            with graph.inserting_before(conv):
                bias = graph.get_attr(name)
            args = list(conv.args)
            args[2] = bias
            conv.args = tuple(args)
        else:
            _set_attr(gm, conv.args[2].target, fused_b)
        for user in list(bn.users):
            user.replace_all_uses_with(conv)
            graph.erase_node(user)
        graph.erase_node(bn)
        folded += 1
    graph.eliminate_dead_code()
    gm.recompile()
    return gm, folded, ""


def _attr(gm: Any, node: Any) -> Any:
    if node is None:
        return None
    obj = gm
    for part in node.target.split("."):
        obj = getattr(obj, part)
    return obj


def _set_attr(gm: Any, target: str, value: Any) -> None:
    import torch

    *path, last = target.split(".")
    owner = gm
    for part in path:
        owner = getattr(owner, part)
    setattr(owner, last, torch.nn.Parameter(value.detach(), requires_grad=False))


# ---- the sweep ------------------------------------------------------------------------


def sweep(names: list[str]) -> None:
    CACHE.mkdir(parents=True, exist_ok=True)
    for name in names:
        out = CACHE / f"{name}.json"
        if out.exists():
            continue
        print(f"export_fold_bench: {name}", flush=True)
        start = time.perf_counter()
        try:
            proc = subprocess.run(
                [sys.executable, __file__, "--one", name],
                capture_output=True,
                text=True,
                timeout=TIMEOUT_S,
                cwd=HERE.parent,
            )
            if proc.returncode != 0:
                tail = (proc.stderr.strip().splitlines() or ["?"])[-1]
                row = {"model": name, "failure": tail[:200]}
            else:
                row = json.loads(proc.stdout.strip().splitlines()[-1])
        except subprocess.TimeoutExpired:
            row = {"model": name, "failure": f"timed out after {TIMEOUT_S} s"}
        row["total_s"] = time.perf_counter() - start
        out.write_text(json.dumps(row))


def render(names: list[str]) -> str:
    rows = [
        json.loads((CACHE / f"{n}.json").read_text())
        for n in names
        if (CACHE / f"{n}.json").exists()
    ]
    head = (
        "| model | BN | bnfold (program) | bnfold (decomposed) | ExecuTorch rule "
        "| bnfold (module) |\n|---|---:|---|---|---|---|"
    )
    lines = [
        "# BN folding in torch.export programs",
        "",
        "Generated by `python benchmarks/export_fold_bench.py` (torch 2.13 CPU, timm, random BN "
        "statistics, one thread). Each cell: BN folded / max abs error relative to max|ref| / "
        "seconds. *ExecuTorch rule*: conv → BN with a single-user conv, "
        "`fuse_conv_bn_weights` into the conv's own weight (executorch "
        "`backends/transforms/fuse_batch_norm_with_conv.py`), on the decomposed program.",
        "",
        head,
    ]
    totals = {k: 0 for k in ("bn", "program", "decomposed", "executorch", "module")}
    fails = {k: 0 for k in totals}
    for r in rows:
        if "failure" in r:
            lines.append(f"| {r['model']} | – | {r['failure']} | | | |")
            continue
        totals["bn"] += r["bn"]
        cells = []
        for key in ("program", "decomposed", "executorch", "module"):
            cell = r.get(key, {})
            if "error" in cell and "folded" not in cell:
                cells.append(f"error: {cell['error']}")
                fails[key] += 1
                continue
            totals[key] += cell.get("folded", 0)
            err = cell.get("rel_error")
            text = (
                f"{cell['folded']} / {err:.1e} / {cell['seconds']:.1f}s"
                if err is not None
                else f"{cell['folded']} / – "
            )
            if cell.get("note") or "error" in cell:
                text += f" ({cell.get('note') or cell['error']})"
                fails[key] += 1
            cells.append(text)
        lines.append(f"| {r['model']} | {r['bn']} | " + " | ".join(cells) + " |")
    lines += [
        "",
        f"Models: {len(rows)}. BN calls: {totals['bn']}. Folded: bnfold (program) "
        f"{totals['program']}, bnfold (decomposed) {totals['decomposed']}, ExecuTorch rule "
        f"{totals['executorch']}, bnfold (module) {totals['module']}. Failures (error or not "
        f"equivalent): program {fails['program']}, decomposed {fails['decomposed']}, "
        f"ExecuTorch rule {fails['executorch']}, module {fails['module']}.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", help="comma-separated timm names (default: one per family)")
    parser.add_argument("--limit", type=int, default=None, help="first N families by size")
    parser.add_argument("--render", action="store_true", help="only write the table")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one)))
        return
    names = args.models.split(",") if args.models else [m.name for m in families()]
    names = names[: args.limit] if args.limit else names
    if not args.render:
        sweep(names)
    table = render(names)
    (HERE / "results" / "export_fold.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
