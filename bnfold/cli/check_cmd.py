"""``bnfold check MODEL…``: exit 1 when a model still has foldable BN or removable Dropout."""

from __future__ import annotations

from pathlib import Path

import click

from bnfold.cli.ci_output import ci_options
from bnfold.cli.common import fail, guarded, print_json

EPILOG = """\b
Use as a CI gate or pre-commit hook (see .pre-commit-hooks.yaml):
  bnfold check models/*.onnx
  bnfold check models/ --junit-xml bnfold-check.xml
Prints one line per model, e.g.
  resnet.onnx: 94 foldable: 91 Conv→BN, 3 ConvTranspose→BN; 0 Dropout
Exit codes: 0 every model is clean; 1 something can still be folded or removed;
2 bad input (a model that cannot be read).
"""


@click.command(epilog=EPILOG)
@click.argument("models", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print results as JSON on stdout.")
@click.option("-v", "--verbose", is_flag=True, help="List every foldable node.")
@click.option("--assume-eval", is_flag=True, help="Count training-mode BN/Dropout as foldable too.")
@click.option("--trust-pickle", is_flag=True, help=".pt2 archives: load one that needs unpickling.")
@ci_options
@guarded
def check(
    models: tuple[Path, ...],
    as_json: bool,
    verbose: bool,
    assume_eval: bool,
    trust_pickle: bool,
    keep: tuple[str, ...],
    keep_dropout: bool,
    fmt: str | None,
    junit_xml: Path | None,
) -> None:
    """Fail when MODELS still contain a BatchNorm bnfold could fold or a removable Dropout.

    Nothing is written; the models are only analysed. Kept nodes (--keep, --keep-dropout)
    are not foldable.
    """
    from bnfold.batch import expand_models_labelled
    from bnfold.check import check_models
    from bnfold.ci.cases import check_cases, reason_of, tally
    from bnfold.cli.ci_output import emit_ci, resolve_format

    labels = expand_models_labelled(models)
    results = check_models(
        list(labels),
        assume_eval=assume_eval,
        keep=keep,
        keep_dropout=keep_dropout,
        **({"trust_pickle": True} if trust_pickle else {}),
    )
    if len(results) == 1 and results[0].error is not None and not (fmt or junit_xml):
        fail(results[0].error, 2)  # one model: the usual one-line error
    by_model = {str(p): label for p, label in labels.items()}
    cases = check_cases(results, by_model)
    counts = tally(cases, "clean", "foldable")
    if as_json:
        print_json({"clean": all(results), "models": [r.to_dict() for r in results]})
    else:
        for r in results:
            label = by_model.get(r.model, r.model)
            if r.error is not None:
                click.echo(f"{label}: {reason_of(r.model, r.error)}", err=True)
            elif verbose:
                click.echo(r.describe())
            else:
                click.echo(r.headline(label))
        if len(results) > 1:
            click.echo(counts)
    emit_ci(
        cases,
        fmt=resolve_format(fmt),
        junit_path=junit_xml,
        suite="bnfold check",
        tally=counts,
        annotations_to_stderr=as_json,
    )
    if any(r.error is not None for r in results):
        raise SystemExit(2)
    raise SystemExit(0 if all(results) else 1)
