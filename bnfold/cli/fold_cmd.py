"""``bnfold [fold] MODEL… [-o OUT]``: fold, verify, write (many models in parallel)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from bnfold.cli.ci_output import ci_options
from bnfold.cli.common import fail, guarded, print_json

EPILOG = """\b
Examples:
  bnfold model.onnx                  writes model.folded.onnx after verifying it
  bnfold model.onnx -o small.onnx --json
  bnfold model.onnx --bench          also measure the latency gain
  bnfold zoo/ -j 4 -o folded/        every *.onnx in zoo/, 4 worker processes
  bnfold rec.onnx --shape x:1x3x48x320      verify at a size the model accepts
  bnfold rec.onnx --inputs batch.npz        verify on real data (arrays keyed by input name)
  bnfold net.onnx --keep-dropout --keep 'head.*'   keep every Dropout and the head's BN
  bnfold zoo/ -o folded/ --junit-xml bnfold.xml    a JUnit report for CI
  bnfold model.pt2                   a torch.export archive: writes model.folded.pt2

\b
Exit codes: 0 folded (and verified); 1 the folded model is not equivalent (nothing is
written unless --force); 2 bad input or usage (one-line message).
"""


@click.command(epilog=EPILOG)
@click.argument("models", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path),
    help="Output file (one model) or folder (several). Default: <stem>.folded.onnx beside "
    "each input.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON on stdout.")
@click.option("--no-verify", is_flag=True, help="Skip the onnxruntime equivalence check.")
@click.option("--force", is_flag=True, help="Write the output even if verification fails.")
@click.option(
    "--bench",
    "do_bench",
    is_flag=True,
    help="After folding, measure the latency gain (onnxruntime; torch eager for .pt2).",
)
@click.option(
    "--assume-eval",
    is_flag=True,
    help="Treat training-mode BatchNorm/Dropout as inference (results then follow running "
    "statistics).",
)
@click.option(
    "--rewrite-standalone",
    is_flag=True,
    help="Rewrite BatchNorm that can fold nowhere into Mul/Add (exact; usually slower in "
    "onnxruntime, so off by default).",
)
@click.option(
    "--requantize",
    is_flag=True,
    help="Quantized (QDQ) models: also fold BN between quantization pairs (layer → Q → DQ → "
    "BN → Q → DQ), dropping the inner pair. One rounding step fewer, so never exact: the fold "
    "is verified against the original with those pairs bypassed, and the drift from the "
    "quantized original must stay within max(3, 2 × the model's own quantization noise) "
    "output steps.",
)
@click.option(
    "--quantize-bias",
    is_flag=True,
    help="Quantized models: re-quantize folded biases to int32 at input scale × weight scale "
    "(not bit-exact; default keeps them float, which is exact).",
)
@click.option(
    "--fold-overridable",
    is_flag=True,
    help="Also fold parameters that are graph inputs with defaults (overridable at run time).",
)
@click.option("--in-place", is_flag=True, help="Overwrite the input model (atomically).")
@click.option(
    "--trust-pickle",
    is_flag=True,
    help=".pt2 archives: load one whose weights, constants or sample inputs need unpickling "
    "(refused by default: unpickling can run code).",
)
@click.option("--seeds", default=3, show_default=True, help="Random input sets for verification.")
@click.option(
    "--measure-floor",
    is_flag=True,
    help="Measure the original's noise floor even when every output is within its fixed "
    "tolerance (by default it is measured only when a verdict depends on it).",
)
@click.option(
    "--shape",
    "shapes",
    multiple=True,
    metavar="NAME:DIMS",
    help="Input shape for verification (and --bench), e.g. x:1x3x48x320; repeatable. "
    "Default: batch 1, image dims 224, others 64; when the original model does not run at "
    "those, sizes it accepts are searched. For a .pt2 program: the size of that user input "
    "instead of the recorded example inputs.",
)
@click.option(
    "--inputs",
    "inputs",
    multiple=True,
    type=click.Path(dir_okay=False, exists=True),
    help="Real input data for verification: an .npz keyed by input name (repeat for several "
    "sets). Inputs it lacks are synthesised.",
)
@click.option(
    "--provider",
    type=click.Choice(["cpu", "cuda"]),
    default="cpu",
    show_default=True,
    help="onnxruntime execution provider for verification and --bench.",
)
@click.option(
    "-j",
    "--jobs",
    type=click.IntRange(min=1),
    default=None,
    help="Worker processes when folding several models (default: CPU count).",
)
@ci_options
@guarded
def fold(
    models: tuple[Path, ...],
    output: Path | None,
    as_json: bool,
    no_verify: bool,
    force: bool,
    do_bench: bool,
    assume_eval: bool,
    rewrite_standalone: bool,
    requantize: bool,
    quantize_bias: bool,
    fold_overridable: bool,
    in_place: bool,
    trust_pickle: bool,
    seeds: int,
    measure_floor: bool,
    shapes: tuple[str, ...],
    inputs: tuple[str, ...],
    provider: str,
    jobs: int | None,
    keep: tuple[str, ...],
    keep_dropout: bool,
    fmt: str | None,
    junit_xml: Path | None,
) -> None:
    """Fold BatchNorm into neighbouring layers and strip Dropout in ONNX MODELS.

    MODELS are .onnx files or folders of them, or torch.export .pt2 archives (verified in
    torch on their example inputs). Each result is verified in onnxruntime
    (graph optimisations disabled on both sides, several random input sets) before it
    is written; the input is never modified unless --in-place.
    """
    from bnfold.batch import expand_models_labelled, fold_many
    from bnfold.ci.cases import fold_cases, tally
    from bnfold.cli.ci_output import emit_ci, resolve_format
    from bnfold.cli.common import parse_shape
    from bnfold.cli.render import batch_progress, render_summary, stage_progress
    from bnfold.workflow import FoldFileOptions, fold_file

    labels = expand_models_labelled(models)
    paths = list(labels)
    if in_place and output is not None:
        fail("--in-place and --output cannot be used together", 2)
    options = FoldFileOptions(
        verify=not no_verify,
        force=force,
        bench=do_bench,
        in_place=in_place,
        assume_eval=assume_eval,
        rewrite_standalone=rewrite_standalone,
        allow_graph_input_params=fold_overridable,
        requantize=requantize,
        quantize_bias=quantize_bias,
        seeds=seeds,
        measure_floor=measure_floor,
        provider=provider,
        shapes=dict(parse_shape(s) for s in shapes),
        inputs=list(inputs),
        keep=keep,
        keep_dropout=keep_dropout,
        trust_pickle=trust_pickle,
    )
    if (shapes or inputs) and no_verify and not do_bench:
        fail("--shape and --inputs choose verification inputs; they do nothing with --no-verify", 2)
    fmt = resolve_format(fmt)
    if len(paths) == 1 and not (output is not None and output.is_dir()):
        options.output = output
        with stage_progress(paths[0], enabled=not as_json) as on_stage:
            outcome = fold_file(paths[0], options, on_stage)
        cases = fold_cases([outcome], {str(p): label for p, label in labels.items()})
        emit_ci(
            cases,
            fmt=fmt,
            junit_path=junit_xml,
            suite="bnfold fold",
            tally=tally(cases, "folded", "not equivalent"),
            annotations_to_stderr=as_json,
        )
        _emit_single(outcome, as_json)
        raise SystemExit(outcome.exit_code)
    with batch_progress(len(paths), enabled=not as_json) as (advance, on_stage):
        outcomes = fold_many(
            paths, options, output_dir=output, jobs=jobs, progress=advance, stages=on_stage
        )
    cases = fold_cases(outcomes, {str(p): label for p, label in labels.items()})
    counts = tally(cases, "folded", "not equivalent")
    if as_json:
        print_json({"models": [o.to_dict() for o in outcomes]})
    else:
        render_summary(cases, counts)
    emit_ci(
        cases,
        fmt=fmt,
        junit_path=junit_xml,
        suite="bnfold fold",
        tally=counts,
        annotations_to_stderr=as_json,
    )
    raise SystemExit(max((o.exit_code for o in outcomes), default=0))


def _emit_single(outcome: Any, as_json: bool) -> None:
    from bnfold.cli.render import render_outcome

    if as_json:
        print_json(outcome.to_dict())
        return
    if outcome.error is not None and outcome.report is None:
        fail(outcome.error, outcome.exit_code)
    render_outcome(outcome)
    if outcome.error is not None:
        click.echo(f"bnfold: error: {outcome.error}", err=True)
