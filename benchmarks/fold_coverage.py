"""How many BatchNorm nodes does each tool fold on the zoo, without changing the results?

    python benchmarks/fold_coverage.py                     # every zoo model, both exporters
    python benchmarks/fold_coverage.py --models levit,mixnet --exporters dynamo
    python benchmarks/fold_coverage.py --workdir /tmp/zoo  # keep and reuse the exports

Each zoo model (``zoo.py``, random BN statistics) is exported with the dynamo exporter
(``optimize=False``) and the legacy one (``do_constant_folding=False``), both of which leave
BN unfolded. Every tool (``adapters.py``; each in its own worker process, so a crash is a
cell, not the end of the run) cleans the model; we count BatchNormalization nodes before and
after and compare the outputs with the original's at ORT_DISABLE_ALL (``measure.py``).
A tool's BN count only counts where its output runs and is equivalent; a model whose
original does not run in onnxruntime is listed but left out of the totals. Prints a Markdown
table and writes it to ``benchmarks/results/fold_coverage.md``.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

logger = logging.getLogger("fold_coverage")

HERE = Path(__file__).resolve().parent
EXPORTERS = ("dynamo", "legacy")
TOOLS = ("bnfold", "onnxscript", "ort-basic", "onnxoptimizer", "onnxsim", "onnxslim")
REWRITE = "bnfold --rewrite-standalone"


@dataclass
class Row:
    """One exported model: BN before, and per tool the BN left (or why there is no count)."""

    model: str
    exporter: str
    before: int = 0
    left: dict[str, int] = field(default_factory=dict)
    problem: dict[str, str] = field(default_factory=dict)
    skipped: str | None = None  # the original itself cannot be run / exported

    def folded(self, tool: str) -> int:
        """BN removed by ``tool``; 0 when its output failed or changed the results."""
        if tool in self.problem or tool not in self.left:
            return 0
        return self.before - self.left[tool]


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    sys.path.insert(0, str(HERE))
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    from bnfold.testing.zoo import ZOO

    models = args.models.split(",") if args.models else list(ZOO)
    tools = args.tools.split(",") if args.tools else list(TOOLS)
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(args.workdir) if args.workdir else Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        rows = run(models, args.exporters.split(","), tools, workdir)
    table = markdown(rows, [*tools, REWRITE])
    print(table)
    out = HERE / "results" / "fold_coverage.md"
    out.parent.mkdir(exist_ok=True)
    out.write_text(table + "\n")
    return 0


def run(models: list[str], exporters: list[str], tools: list[str], workdir: Path) -> list[Row]:
    """Export, clean with every tool, count and compare; one Row per model × exporter."""
    import measure
    from isolation import ToolWorkers

    rows: list[Row] = []
    with ToolWorkers(timeout_s=300) as workers:
        for model in models:
            for exporter in exporters:
                row = Row(model, exporter)
                rows.append(row)
                src = _export(model, exporter, workdir)
                if isinstance(src, str):
                    row.skipped = src
                    continue
                row.before = measure.op_counts(str(src))["BatchNormalization"]
                try:
                    reference = measure.reference_outputs(str(src))
                except Exception as err:
                    row.skipped = f"original does not run in onnxruntime ({type(err).__name__})"
                    continue
                for tool in [*tools, REWRITE]:
                    dst = workdir / f"{src.stem}.{tool.replace(' ', '_')}.onnx"
                    status = _run_tool(workers, tool, src, dst)
                    if status != "ok":
                        row.problem[tool] = status
                        continue
                    row.left[tool] = measure.op_counts(str(dst))["BatchNormalization"]
                    check = measure.max_error(str(dst), reference)
                    if not check.equivalent:
                        row.problem[tool] = f"not equivalent ({check.cell()})"
                logger.warning("%s/%s done", model, exporter)
    return rows


def _run_tool(workers: object, tool: str, src: Path, dst: Path) -> str:
    if tool != REWRITE:
        return workers.run(tool, str(src), str(dst))["status"]  # type: ignore[attr-defined]
    try:
        from bnfold.onnx.api import fold_onnx

        fold_onnx(src, rewrite_standalone=True).save(dst)
    except Exception as err:  # a crash is a result here, as for the other tools
        return f"error: {type(err).__name__}: {err}"
    return "ok"


def _export(model: str, exporter: str, workdir: Path) -> Path | str:
    from bnfold.testing.zoo import ZOO, export_onnx

    path = workdir / f"{model}.{exporter}.onnx"
    if path.exists():
        return path
    try:
        net, inputs = ZOO[model]()
        return export_onnx(net, inputs, path, exporter)  # type: ignore[arg-type]
    except Exception as err:
        return f"export failed: {type(err).__name__}"


def markdown(rows: list[Row], tools: list[str]) -> str:
    """Per-model BN left for each tool, then the total fold percentage per tool."""
    counted = [r for r in rows if r.skipped is None]
    total = sum(r.before for r in counted)
    lines = [
        "| model | exporter | BN | " + " | ".join(tools) + " |",
        "|---|---|---:|" + "---:|" * len(tools),
    ]
    for r in rows:
        if r.skipped is not None:
            blanks = " |" * (len(tools) - 1)
            lines.append(f"| {r.model} | {r.exporter} | – | {r.skipped} |{blanks}")
            continue
        cells = []
        for tool in tools:
            if tool in r.problem:
                cells.append(f"✗ {r.problem[tool][:40]}")
            else:
                cells.append(f"{r.left.get(tool, '?')} left")
        lines.append(f"| {r.model} | {r.exporter} | {r.before} | " + " | ".join(cells) + " |")
    folded = [sum(r.folded(t) for r in counted) for t in tools]
    pct = [f"**{100 * f / total:.1f}%** ({f}/{total})" if total else "–" for f in folded]
    lines.append("| **total folded** | | " + f"{total} | " + " | ".join(pct) + " |")
    lines.append("")
    lines.append(
        "BN counted as folded only where the tool's output runs and matches the original "
        "(ORT_DISABLE_ALL, max |Δ| ≤ 1e-4·max(1, max|ref|), 2 random input sets); "
        f"`{REWRITE}` also rewrites BN that fold nowhere into Mul/Add (off by default: "
        "slower in onnxruntime, see standalone_bn.py)."
    )
    return "\n".join(lines)


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", help="comma-separated zoo names (default: all)")
    parser.add_argument("--exporters", default=",".join(EXPORTERS))
    parser.add_argument("--tools", help=f"comma-separated (default: {','.join(TOOLS)})")
    parser.add_argument("--workdir", help="folder for exports and outputs (kept, reused)")
    return parser.parse_args(argv)


if __name__ == "__main__":
    raise SystemExit(main())
