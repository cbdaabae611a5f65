"""``bnfold check MODEL…``: exit 1 when a model still has foldable BN or removable Dropout."""

from __future__ import annotations

from pathlib import Path

import click

from bnfold.cli.common import guarded, print_json

EPILOG = """\b
Use as a CI gate or pre-commit hook (see .pre-commit-hooks.yaml):
  bnfold check models/*.onnx
Exit codes: 0 every model is clean; 1 something can still be folded or removed
(listed); 2 bad input.
"""


@click.command(epilog=EPILOG)
@click.argument("models", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print results as JSON on stdout.")
@click.option("--assume-eval", is_flag=True, help="Count training-mode BN/Dropout as foldable too.")
@guarded
def check(models: tuple[Path, ...], as_json: bool, assume_eval: bool) -> None:
    """Fail when MODELS still contain a BatchNorm bnfold could fold or a removable Dropout.

    Nothing is written; the models are only analysed.
    """
    from bnfold.batch import expand_models
    from bnfold.check import check_model

    results = [check_model(p, assume_eval=assume_eval) for p in expand_models(models)]
    if as_json:
        print_json({"clean": all(results), "models": [r.to_dict() for r in results]})
    else:
        for r in results:
            click.echo(r.describe())
    raise SystemExit(0 if all(results) else 1)
