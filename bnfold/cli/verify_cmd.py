"""``bnfold verify REFERENCE CANDIDATE``: compare two ONNX models in onnxruntime.

Only click and the standard library are imported here; the library loads in the callback.
"""

from __future__ import annotations

import click

from bnfold.cli.common import guarded, parse_shape, print_json


@click.command("verify")
@click.argument("reference", type=click.Path(dir_okay=False))
@click.argument("candidate", type=click.Path(dir_okay=False))
@click.option(
    "--inputs",
    "inputs",
    multiple=True,
    type=click.Path(dir_okay=False),
    help="Real input data: an .npz keyed by input name (repeat for several input sets). "
    "Inputs it lacks are synthesised.",
)
@click.option(
    "--shape",
    "shapes",
    multiple=True,
    metavar="NAME:DIMS",
    help="Concrete shape for an input with symbolic dims, e.g. images:1x3x224x224 (repeatable). "
    "Default: batch 1, image dims 224, others 64.",
)
@click.option(
    "--seeds",
    type=click.IntRange(min=1),
    default=3,
    show_default=True,
    help="Number of synthesised input sets.",
)
@click.option(
    "--rtol",
    multiple=True,
    metavar="[OUTPUT=]VALUE",
    help="Fixed relative tolerance (× max|reference|), for all outputs or one: "
    "--rtol 1e-5 --rtol logits=1e-4. Default: 1e-6 float32, 1e-3 float16.",
)
@click.option(
    "--atol",
    multiple=True,
    metavar="[OUTPUT=]VALUE",
    help="Fixed absolute tolerance, for all outputs or one (same form as --rtol). Default: 0.",
)
@click.option(
    "--floor-factor",
    type=click.FloatRange(min=0),
    default=None,
    help="How many times the reference's own noise floor an error may reach. Default: 5.",
)
@click.option(
    "--measure-floor",
    is_flag=True,
    help="Measure the noise floor even when every output is within its fixed tolerance "
    "(by default it is measured only when some output is not: a floor only loosens the "
    "rule, so it cannot change such a verdict; the report then shows it as not needed).",
)
@click.option(
    "--provider",
    type=click.Choice(["cpu", "cuda"]),
    default="cpu",
    show_default=True,
    help="onnxruntime execution provider (cuda needs onnxruntime-gpu; never falls back).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON on stdout.")
@guarded
def verify(
    reference: str,
    candidate: str,
    inputs: tuple[str, ...],
    shapes: tuple[str, ...],
    seeds: int,
    rtol: tuple[str, ...],
    atol: tuple[str, ...],
    floor_factor: float | None,
    measure_floor: bool,
    provider: str,
    as_json: bool,
) -> None:
    """Run REFERENCE and CANDIDATE on the same inputs and judge each output.

    Both run with ORT_DISABLE_ALL. An output passes when its max abs error stays within
    max(atol + rtol·max|ref|, floor-factor × noise floor), the floor being how far the
    reference moves under ulp-level perturbation of its inputs and weights. The floor is
    measured only when some output exceeds its fixed tolerance (--measure-floor: always).

    Exit codes: 0 equivalent, 1 not equivalent, 2 bad input (unreadable model, mismatched
    input/output names or shapes, bad --inputs/--shape).
    """
    from bnfold.equivalence.api import verify as run_verify
    from bnfold.errors import NotEquivalentError

    global_rtol, output_rtol = _tolerances(rtol, "--rtol")
    global_atol, output_atol = _tolerances(atol, "--atol")
    per_output: dict[str, dict[str, float]] = {}
    for name, value in output_rtol.items():
        per_output.setdefault(name, {})["rtol"] = value
    for name, value in output_atol.items():
        per_output.setdefault(name, {})["atol"] = value
    result = run_verify(
        reference,
        candidate,
        inputs=list(inputs) or None,
        shapes=dict(parse_shape(s) for s in shapes) or None,
        seeds=seeds,
        rtol=global_rtol,
        atol=global_atol,
        output_tolerances=per_output or None,
        provider=provider,
        floor_factor=floor_factor,
        measure_floor=measure_floor,
    )
    if as_json:
        print_json(result.to_dict())
    else:
        click.echo(result.describe())
    if not result:
        raise NotEquivalentError(result.summary())


def _tolerances(specs: tuple[str, ...], option: str) -> tuple[float | None, dict[str, float]]:
    """Parse ``VALUE`` (all outputs) and ``OUTPUT=VALUE`` (one output) tolerances."""
    global_value: float | None = None
    per_output: dict[str, float] = {}
    for spec in specs:
        name, sep, text = spec.rpartition("=")
        try:
            value = float(text)
            if not value >= 0:
                raise ValueError
        except ValueError:
            raise click.BadParameter(
                f"{spec!r}: expected a non-negative number or OUTPUT=NUMBER", param_hint=option
            ) from None
        if sep:
            per_output[name] = value
        else:
            global_value = value
    return global_value, per_output
