"""Render the sweep's cached per-model results to ``results/sweep.md`` and ``sweep.json``.

A tool's BN count counts as folded only where its output is equivalent under
``bnfold.verify``; bnfold's only where the CLI exited 0. Entries whose export failed, or whose
original onnxruntime cannot run, are listed but left out of the "must pass" figures.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

TOOLS = ("onnxscript", "ort-basic", "onnxoptimizer", "onnxsim", "onnxslim")


def write(entries: list[Any], cache: Path, out_dir: Path, quick: bool = False) -> int:
    """Load the records of ``entries`` that exist, write the tables; returns how many."""
    records = []
    for model, variant in entries:
        path = cache / "results" / f"{model.name}__{variant}.json"
        if path.exists():
            record = json.loads(path.read_text())
            if "bnfold" in record or record.get("export", {}).get("status") != "ok":
                records.append(record)
    name = "sweep_quick" if quick else "sweep"
    summary = summarise(records, planned=len(entries))
    out_dir.mkdir(exist_ok=True)
    (out_dir / f"{name}.md").write_text(markdown(records, summary) + "\n")
    doc = {"summary": summary, "records": [_slim(r) for r in records]}
    lines = [json.dumps(r, default=str, ensure_ascii=False) for r in doc["records"]]
    text = '{"summary": ' + json.dumps(summary) + ',\n"records": [\n' + ",\n".join(lines) + "\n]}\n"
    (out_dir / f"{name}.json").write_text(text)  # one record per line: diffs stay readable
    return len(records)


def _slim(record: dict[str, Any]) -> dict[str, Any]:
    """The record for sweep.json: skip reasons grouped without node names, stderr's tail."""
    b = record.get("bnfold")
    if not b:
        return record
    grouped: Counter[str] = Counter()
    for reason, n in (b.get("left_reasons") or {}).items():
        grouped[abbreviate(reason)] += n
    slim = {**b, "left_reasons": dict(grouped.most_common())}
    if slim.get("stderr"):
        slim["stderr"] = slim["stderr"][-1000:]
    return {**record, "bnfold": slim}


# ---- per-record facts -----------------------------------------------------------------


def exported(r: dict[str, Any]) -> bool:
    return r.get("export", {}).get("status") == "ok" and "bnfold" in r


def must_pass(r: dict[str, Any]) -> bool:
    return exported(r) and bool(r.get("ort_original", {}).get("runs"))


def bnfold_left(r: dict[str, Any]) -> int:
    """BN bnfold leaves: its report's count when it wrote a model, else all of them."""
    b = r["bnfold"]
    if b.get("exit") == 0 and b.get("bn"):
        return int(b["bn"].get("left", 0))
    return int(r.get("bn_before", 0))


def tool_left(r: dict[str, Any], tool: str) -> int | None:
    """BN a tool leaves where its output is correct; None where broken or crashed."""
    t = (r.get("tools") or {}).get(tool) or {}
    return t.get("bn_left") if t.get("equivalent") else None


def best_other(r: dict[str, Any]) -> tuple[str, int] | None:
    counts = [(tool_left(r, t), t) for t in TOOLS]
    good = [(n, t) for n, t in counts if n is not None]
    return (min(good)[1], min(good)[0]) if good else None


def crashed(b: dict[str, Any]) -> bool:
    """A traceback, a signal, a timeout, or the CLI's own "internal error" message."""
    return bool(b.get("crash")) or "internal error" in str(b.get("error") or "")


def false_failure(r: dict[str, Any]) -> bool:
    """Exit 1 where the original fails against itself or the forced output passes anyway."""
    b = r["bnfold"]
    if b.get("exit") != 1:
        return False
    own = (b.get("check") or {}).get("self_verify") or {}
    return own.get("equivalent") is False or independent_ok(r) is True


def independent_ok(r: dict[str, Any]) -> bool | None:
    """The second opinion on bnfold's output: max |Δ| ≤ rtol·max(1, max |ref|).

    rtol is 1e-4, or 4e-3 (about 4 fp16 ulps at unit scale) for the fp16 variant, whose
    folded weights round differently from the unfolded model's fp16 arithmetic.
    """
    check = r["bnfold"].get("check") or {}
    if check.get("max_abs") is None:
        return check.get("passed")
    rtol = 4e-3 if r.get("variant") == "fp16" else 1e-4
    return check["max_abs"] <= rtol * max(1.0, check.get("ref_scale") or 0.0)


def false_pass(r: dict[str, Any]) -> bool:
    return r["bnfold"].get("exit") == 0 and independent_ok(r) is False


# ---- summary --------------------------------------------------------------------------


def summarise(records: list[dict[str, Any]], planned: int) -> dict[str, Any]:
    done = [r for r in records if exported(r)]
    gate = [r for r in done if must_pass(r)]
    exits = Counter(r["bnfold"].get("exit") for r in done)
    crashes = [r for r in done if crashed(r["bnfold"])]
    found = sum(int(r.get("bn_before", 0)) for r in gate)
    folded = {"bnfold": sum(int(r.get("bn_before", 0)) - bnfold_left(r) for r in gate)}
    for tool in TOOLS:
        folded[tool] = sum(
            int(r.get("bn_before", 0)) - n for r in gate if (n := tool_left(r, tool)) is not None
        )
    pct = {t: (100.0 * f / found if found else 0.0) for t, f in folded.items()}
    best = max(TOOLS, key=lambda t: pct[t])
    worse = [r for r in gate if (b := best_other(r)) is not None and b[1] < bnfold_left(r)]
    return {
        "planned": planned,
        "results": len(records),
        "exported": len(done),
        "export_failed": len(records) - len(done),
        "architectures": len({r["model"] for r in done}),
        "ort_cannot_run_original": len(done) - len(gate),
        "must_pass": len(gate),
        "must_pass_exit0": sum(r["bnfold"].get("exit") == 0 for r in gate),
        "exit0": exits.get(0, 0),
        "exit1": exits.get(1, 0),
        "exit2": exits.get(2, 0),
        "other_exit": sum(n for e, n in exits.items() if e not in (0, 1, 2)),
        "crashes": len(crashes),
        "false_failures": sum(false_failure(r) for r in done),
        "false_passes": sum(false_pass(r) for r in done),
        "bn_found": found,
        "bn_folded": folded,
        "pct": pct,
        "best_other": best,
        "bnfold_leaves_more": len(worse),
    }


def headline(s: dict[str, Any]) -> str:
    failed = s["exit1"] + s["exit2"] + s["other_exit"]
    return (
        f"{s['exported']} models: {s['exit0']} exit 0, {failed} failed "
        f"({s['exit1']} not equivalent, of which {s['false_failures']} false failures; "
        f"{s['exit2']} exit 2; {s['other_exit']} other), {s['crashes']} crashes; "
        f"BN folded {s['pct']['bnfold']:.1f}% (bnfold) vs best other tool "
        f"{s['pct'][s['best_other']]:.1f}% ({s['best_other']}); models where bnfold leaves "
        f"more BN than the best correct tool: {s['bnfold_leaves_more']}"
    )


# ---- Markdown -------------------------------------------------------------------------


def markdown(records: list[dict[str, Any]], s: dict[str, Any]) -> str:
    lines = [
        "# bnfold sweep over third-party models",
        "",
        f"**{headline(s)}**",
        "",
        f"Covered {s['results']} of {s['planned']} planned exports ({s['architectures']} "
        f"architectures exported; {s['export_failed']} exports failed, not bnfold failures). "
        f"Must pass (exported, original runs in onnxruntime): {s['must_pass']}, of which "
        f"{s['must_pass_exit0']} exit 0; onnxruntime cannot run the original of "
        f"{s['ort_cannot_run_original']}. Independent check (max |Δ| ≤ 1e-4·max(1, |ref|), fp16 "
        f"4e-3, over 2 input sets) disagrees with an exit 0 on {s['false_passes']}.",
        "",
        "BN folded over the must-pass exports (a tool counts only where `bnfold.verify` finds "
        f"its output equivalent): {s['bn_found']} BN; "
        + ", ".join(f"{t} {s['pct'][t]:.1f}%" for t in ("bnfold", *TOOLS))
        + ".",
        "",
        "Generated by `python benchmarks/sweep.py` (see benchmarks/README.md).",
        "",
        *worst_cases(records),
        "",
        "## All models",
        "",
        "BN = found/folded/left by `bnfold MODEL -o OUT --json`; dropout = found/removed; "
        "tools: BN left, ✗ broken output (not equivalent or does not run), 💥 crash/timeout.",
        "",
        "| model | family | variant | exit | BN | left reasons | dropout | verdict | input | s | "
        + " | ".join(TOOLS)
        + " |",
        "|---|---|---|---:|---|---|---|---|---|---:|" + "---:|" * len(TOOLS),
    ]
    lines += [row(r) for r in records]
    return "\n".join(lines)


def row(r: dict[str, Any]) -> str:
    head = f"| {r['model']} | {r['family']} | {r['variant']} |"
    if not exported(r):
        error = _cell(r.get("export", {}).get("error", ""), 80)
        return head + f" – | export failed: {error} |" + " |" * (6 + len(TOOLS) - 1)
    b = r["bnfold"]
    bn = b.get("bn") or {}
    exit_cell = f"{b.get('exit')}{' 💥' if crashed(b) else ''}"
    bn_cell = f"{bn.get('found', r.get('bn_before'))}/{bn.get('folded', '–')}/{bn.get('left', '–')}"
    d = b.get("dropout") or {}
    drop = f"{d.get('found', r.get('dropout_before', 0))}/{d.get('removed', '–')}"
    verdict = {True: "eq", False: "NOT eq", None: "–"}[b.get("equivalent")]
    if false_failure(r):
        verdict += " (false failure)"
    if not r.get("ort_original", {}).get("runs"):
        verdict += " (ORT cannot run original)"
    cells = [
        exit_cell,
        bn_cell,
        _cell(reasons(b), 90),
        drop,
        verdict,
        _inputs(b),
        f"{b.get('seconds', 0):.1f}",
    ]
    return head + " " + " | ".join(cells + [tool_cell(r, t) for t in TOOLS]) + " |"


def tool_cell(r: dict[str, Any], tool: str) -> str:
    t = (r.get("tools") or {}).get(tool)
    if t is None:
        return "–"
    if t.get("crash"):
        return "💥"
    if "bn_left" not in t:
        return "✗ " + _cell(t.get("status", ""), 24)
    return f"{t['bn_left']}" + ("" if t.get("equivalent") else " ✗")


def reasons(b: dict[str, Any], width: int = 60) -> str:
    """Skip reasons grouped once node names are dropped: ``3× producer: Relu is not …``."""
    grouped: Counter[str] = Counter()
    for reason, n in (b.get("left_reasons") or {}).items():
        grouped[abbreviate(reason)] += n
    parts = []
    for reason, n in grouped.most_common():
        text = reason if len(reason) <= width else reason[: width - 1] + "…"
        parts.append(f"{n}× {text}")
    return " · ".join(parts)


def abbreviate(reason: str) -> str:
    """Drop quoted node / value names and per-instance numbers from a skip reason."""
    text = re.sub(r"'[^']*'", "", reason)
    text = re.sub(r"\binput \d+", "input N", text)
    text = re.sub(r"\((?=[^()]*\d)[^()]*\)", "(…)", text)  # shapes and counts
    text = re.sub(r"\s+:", ":", text)
    return " ".join(text.split())


def _inputs(b: dict[str, Any]) -> str:
    shapes = b.get("shapes") or {}
    return ", ".join("x".join(str(d) for d in dims) for dims in shapes.values()) or "–"


def _cell(text: str, width: int) -> str:
    text = " ".join(str(text).split()).replace("|", "\\|")
    return text if len(text) <= width else text[: width - 1] + "…"


def worst_cases(records: list[dict[str, Any]]) -> list[str]:
    done = [r for r in records if exported(r)]
    out = ["## Worst cases", ""]
    sections = [
        ("Non-zero exits", [r for r in done if r["bnfold"].get("exit") != 0], _exit_line),
        (
            "Crashes (traceback, internal error, signal or timeout)",
            [r for r in done if crashed(r["bnfold"])],
            _crash_line,
        ),
        ("False verification failures", [r for r in done if false_failure(r)], _false_line),
        (
            "Exit 0 but the independent check disagrees",
            [r for r in done if false_pass(r)],
            _false_line,
        ),
        (
            "A correct tool leaves fewer BN than bnfold",
            [r for r in done if must_pass(r) and (b := best_other(r)) and b[1] < bnfold_left(r)],
            _fewer_line,
        ),
        (
            "onnxruntime cannot run the original (not counted)",
            [r for r in done if not must_pass(r)],
            lambda r: f"{_name(r)}: {_cell(r.get('ort_original', {}).get('error'), 160)}",
        ),
    ]
    for title, rows, fmt in sections:
        out += [f"### {title}: {len(rows)}", ""]
        out += [f"- {fmt(r)}" for r in rows] or ["- none"]
        out.append("")
    return out


def _name(r: dict[str, Any]) -> str:
    return f"**{r['model']}** ({r['variant']}, input {_inputs(r['bnfold'])})"


def _exit_line(r: dict[str, Any]) -> str:
    b = r["bnfold"]
    return (
        f"{_name(r)}: exit {b.get('exit')}: {_cell(b.get('error') or b.get('summary') or '', 200)}"
    )


def _crash_line(r: dict[str, Any]) -> str:
    b = r["bnfold"]
    lines = [ln for ln in (b.get("stderr") or "").splitlines() if ln.strip()]
    return f"{_name(r)}: `{b.get('command')}`: {_cell(lines[-1] if lines else b.get('error'), 200)}"


def _false_line(r: dict[str, Any]) -> str:
    b = r["bnfold"]
    c = b.get("check") or {}
    own = c.get("self_verify", {})
    return (
        f"{_name(r)}: bnfold says {_cell(b.get('summary'), 120)}; original vs itself: "
        f"{own.get('summary', '–')}; independent max |Δ| {c.get('max_abs')} "
        f"(ref scale {c.get('ref_scale')})" + _floors(b)
    )


def _floors(b: dict[str, Any]) -> str:
    """bnfold's own figures per output: max |Δ|, noise floor (— when bnfold did not need
    it: every output within its fixed tolerance) and threshold."""
    cells = [
        f"{o['name']}: max |Δ| {o.get('max_abs')}, floor "
        f"{'—' if o.get('floor') is None else o['floor']}, threshold {o.get('threshold')}"
        for o in b.get("outputs") or []
    ]
    return "; bnfold: " + "; ".join(cells) if cells else ""


def _fewer_line(r: dict[str, Any]) -> str:
    better = ", ".join(
        f"{t} {n}" for t in TOOLS if (n := tool_left(r, t)) is not None and n < bnfold_left(r)
    )
    why = reasons(r["bnfold"], 120) or "no reason given"
    return f"{_name(r)}: bnfold leaves {bnfold_left(r)} ({why}); {better}"
