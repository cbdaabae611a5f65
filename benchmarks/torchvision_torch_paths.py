"""The PyTorch front ends on torchvision classifiers (models the team did not pick from timm).

Per model (random BN statistics, 1×3×224×224): executed BN ops folded by the module path
(``bnfold.fold(module)`` with and without example inputs) and BN calls folded in the
``torch.export`` program (as exported and after ``run_decompositions()``), each with the
max error relative to max|output| and whether bnfold's own verification passed.

    nice .venv/bin/python benchmarks/torchvision_torch_paths.py [--models a,b]

Writes ``results/torchvision_torch_paths.md``. Not in CI (minutes, needs torchvision).
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
MODELS = (
    "resnet18,mobilenet_v3_small,efficientnet_b0,regnet_y_400mf,shufflenet_v2_x0_5,"
    "googlenet,mnasnet0_5,inception_v3,densenet121"
)


def row(name: str) -> str:
    import torch
    import torchvision
    from torch_fold_bench import count_bn_ops

    import bnfold
    from bnfold.export.program import BN_OPS
    from bnfold.testing.zoo import randomize_bn

    model = randomize_bn(torchvision.models.get_model(name, weights=None).eval())
    x = (torch.randn(1, 3, 224, 224),)
    with torch.no_grad():
        ref = _first(model(*x))
    scale = float(ref.abs().max())

    def rel(module: Any) -> str:
        with torch.no_grad():
            return f"{float((_first(module(*x)) - ref).abs().max()) / scale:.1e}"

    executed = count_bn_ops(model, x)
    cells = []
    for inputs in (x, None):
        result = bnfold.fold(model, example_inputs=inputs)
        folded = executed - count_bn_ops(result.model, x)
        check = _check(result.verification)
        cells.append(f"{folded}/{executed} ({rel(result.model)}){check}")
    for decompose in (False, True):
        ep = torch.export.export(model, x)
        ep = ep.run_decompositions() if decompose else ep
        calls = sum(1 for n in ep.graph_module.graph.nodes if n.target in BN_OPS)
        result = bnfold.fold(ep)
        counts = result.report.counts()["batchnorm"]
        check = _check(result.verification)
        cells.append(f"{counts['folded']}/{calls} ({rel(result.program.module())}){check}")
    return f"| {name} | " + " | ".join(cells) + " |"


def _check(verification: Any) -> str:
    return "" if verification is None else (" ✓" if verification else " ✗")


def _first(out: Any) -> Any:
    return out if not isinstance(out, (tuple, list)) else out[0]


def main() -> None:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=MODELS)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "torchvision_torch_paths.md")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(2)
    sys.path.insert(0, str(HERE))
    rows = []
    for name in args.models.split(","):
        rows.append(row(name))
        print(rows[-1], flush=True)
    text = "\n".join(
        [
            "# PyTorch front ends on torchvision classifiers",
            "",
            "`python benchmarks/torchvision_torch_paths.py` (torch 2.13 CPU, random BN "
            "statistics, 1×3×224×224). Cells: BN folded / BN executed (module) or BN calls "
            "(program), (max |folded − original| / max|original|), ✓ bnfold's own "
            "verification passed.",
            "",
            "| model | module + inputs | module, no inputs | program | program, decomposed |",
            "|---|---|---|---|---|",
            *rows,
            "",
        ]
    )
    args.out.write_text(text)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
