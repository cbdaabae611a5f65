"""``verify(reference, candidate)``: run both models in onnxruntime and judge equivalence."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from bnfold.equivalence import compare as cmp
from bnfold.equivalence import inputs as inp
from bnfold.equivalence.jitter import open_jittered
from bnfold.equivalence.probes import Probe, common_probes, probe_labels, with_probes
from bnfold.equivalence.result import OutputComparison, VerifyResult
from bnfold.equivalence.session import ModelRunner
from bnfold.equivalence.signature import TensorSpec, check_same_signature, merge_input_specs
from bnfold.equivalence.source import (
    IN_MEMORY_LIMIT,
    ModelLike,
    ModelSource,
    open_model,
    open_proto,
)
from bnfold.errors import InputError, ModelLoadError, VerificationError

logger = logging.getLogger(__name__)

InputSets = Any  # path to .npz | Mapping[str, array] | Sequence of those
ToleranceSpec = tuple[float | None, float | None] | Mapping[str, float]


def verify(
    reference: ModelLike,
    candidate: ModelLike,
    *,
    inputs: InputSets | None = None,
    shapes: Mapping[str, Sequence[int]] | None = None,
    seeds: int | Sequence[int] = 3,
    rtol: float | None = None,
    atol: float | None = None,
    output_tolerances: Mapping[str, ToleranceSpec] | None = None,
    provider: str = "cpu",
    floor_factor: float | None = None,
    perturbations: int | None = None,
    probes: bool = True,
) -> VerifyResult:
    """Compare two ONNX models output by output on the same inputs.

    Args:
        reference, candidate: path (external data is fine), bytes, ``onnx.ModelProto``
            or ``onnx_ir.Model``. Models over 2 GB must be passed by path.
        inputs: real data: an ``.npz`` path, a dict of arrays, or a list of those (one
            input set each); inputs they omit are synthesised.
        shapes: concrete shapes for inputs with symbolic dims, e.g. ``{"x": (1, 3, 64, 64)}``.
        seeds: number of synthesised input sets (seeds 0…N−1) or explicit seeds; ignored
            for the data of given ``inputs`` (one run per given set).
        rtol, atol: fixed tolerance ``atol + rtol·max|ref|`` for every float output
            (None: per-dtype defaults, see docs/verify.md).
        output_tolerances: per output name, ``(rtol, atol)`` or ``{"rtol": …, "atol": …}``.
        provider: ``"cpu"`` or ``"cuda"`` (never falls back silently).
        floor_factor: how many times the reference's noise floor an error may reach.
        perturbations: perturbed reference runs per input set (None: 2, or 4 for outputs
            with under 64 elements); 0 disables the noise floor.
        probes: also compare the input of a Sigmoid/Softmax/Relu/ArgMax/… that ends an
            output in both models (saturation hides bugs); see bnfold.equivalence.probes.
    """
    seed_list = _seed_list(seeds)
    factor = cmp.DEFAULT_FLOOR_FACTOR if floor_factor is None else float(floor_factor)
    if not factor >= 0 or (perturbations is not None and perturbations < 0):
        raise InputError("floor_factor and perturbations must be non-negative")
    with contextlib.ExitStack() as stack:
        warnings: list[str] = []
        pair = _open_pair(stack, reference, candidate, provider, probes, warnings)
        specs = merge_input_specs(pair.ref.inputs, pair.cand.inputs)
        given = _given_sets(inputs, specs)
        tolerances = _tolerances(pair.ref.outputs, rtol, atol, output_tolerances)
        noisy = None
        if not pair.large:
            noisy = _floor_runner(stack, pair.ref_src, provider, perturbations, warnings)
        if noisy is None and not any(s.is_float for s in specs) and perturbations != 0:
            warnings.append("no noise floor (no float inputs, no weight jitter): tolerances only")
        sets = given or [{} for _ in seed_list]
        used_seeds = list(range(len(sets))) if given else seed_list
        bounds = inp.index_bounds(pair.ref_src.graph_proto(), [s.name for s in specs])
        runs: dict[str, list[cmp.Metrics]] = {o.name: [] for o in pair.ref.outputs}
        floors = dict.fromkeys(runs, cmp.Floor())
        described: dict[str, str] = {}
        defaulted: dict[str, int] = {}
        for seed, partial in zip(used_seeds, sets, strict=True):
            rng = np.random.default_rng(seed)
            fixed = {k: tuple(v.shape) for k, v in partial.items()}
            fixed.update({k: tuple(v) for k, v in (shapes or {}).items()})
            resolved, defaulted = inp.resolve_shapes(specs, fixed)
            described = described or _describe_inputs(specs, resolved, partial)
            missing = [s for s in specs if s.name not in partial]
            feeds = {**inp.synthesize(missing, resolved, rng, bounds), **partial}
            feeds = {s.name: feeds[s.name] for s in specs}
            ref_out = _run(pair.ref, feeds, defaulted)
            cand_out = _run(pair.cand, feeds, defaulted)
            for name, metrics in runs.items():
                metrics.append(cmp.measure(ref_out[name], cand_out[name], tolerances[name], seed))
            for moved in _perturbed_outputs(noisy, pair.ref, feeds, ref_out, perturbations, rng):
                for name, floor in floors.items():
                    floors[name] = floor.merge(cmp.floor_contribution(ref_out[name], moved[name]))
        for name, metrics in runs.items():
            cmp.judge(metrics, floors[name], factor)
        result = VerifyResult(
            reference=pair.ref_src.label,
            candidate=pair.cand_label,
            provider=provider,
            seeds=used_seeds,
            floor_factor=factor,
            inputs=described,
            outputs=[
                OutputComparison(
                    o.name,
                    str(o.dtype),
                    tolerances[o.name].rtol,
                    tolerances[o.name].atol,
                    runs[o.name],
                    label=pair.labels.get(o.name, o.name),
                    probe=o.name in pair.labels,
                )
                for o in pair.ref.outputs
            ],
            defaulted_dims=defaulted,
            warnings=warnings,
        )
    logger.info("%s", result.summary())
    return result


@dataclasses.dataclass
class _Pair:
    """Both models loaded (probes added) and their signatures checked."""

    ref_src: ModelSource
    ref: ModelRunner
    cand: ModelRunner
    cand_label: str
    labels: Mapping[str, str]  # probe output name -> "<output> before <Op>"
    large: bool = False  # too big for whole-model copies: no probes, no weight jitter


def _open_pair(
    stack: contextlib.ExitStack,
    reference: ModelLike,
    candidate: ModelLike,
    provider: str,
    probes: bool,
    warnings: list[str],
) -> _Pair:
    ref_src = stack.enter_context(open_model(reference, "reference"))
    cand_src = stack.enter_context(open_model(candidate, "candidate"))
    large = max(ref_src.approx_bytes(), cand_src.approx_bytes()) > IN_MEMORY_LIMIT
    if large:
        warnings.append(
            "model over 1 GiB: output probes and weight jitter skipped (they need whole-model "
            "copies); noise floor from input perturbation only"
        )
        probes = False
    pairs = common_probes(ref_src.graph_proto(), cand_src.graph_proto()) if probes else []
    if pairs:
        ref_src = stack.enter_context(_probed(ref_src, [p for p, _ in pairs]))
        cand_src = stack.enter_context(_probed(cand_src, [c for _, c in pairs]))
    ref = ModelRunner(ref_src, provider)
    cand = ModelRunner(cand_src, provider)
    check_same_signature(ref.inputs, cand.inputs, "input")
    check_same_signature(ref.outputs, cand.outputs, "output")
    return _Pair(ref_src, ref, cand, cand_src.label, probe_labels(pairs), large)


@contextlib.contextmanager
def _probed(source: ModelSource, probes: list[Probe]) -> Iterator[ModelSource]:
    with open_proto(with_probes(source.full_proto(), probes), source.label) as probed:
        yield probed


def _floor_runner(
    stack: contextlib.ExitStack,
    ref_src: ModelSource,
    provider: str,
    perturbations: int | None,
    warnings: list[str],
) -> ModelRunner | None:
    """The reference with jittered weights, or None (floor from input perturbation only)."""
    if perturbations == 0:
        return None
    rng = np.random.default_rng(0x6B6E)
    try:
        jittered = stack.enter_context(open_jittered(ref_src, rng, cmp.WEIGHT_ULPS))
        return ModelRunner(jittered, provider)
    except (ModelLoadError, OSError, ValueError, MemoryError) as err:
        warnings.append(f"weight jitter unavailable ({err}); floor from input perturbation only")
        return None


def _perturbed_outputs(
    noisy: ModelRunner | None,
    ref: ModelRunner,
    feeds: Mapping[str, np.ndarray],
    ref_out: Mapping[str, np.ndarray],
    perturbations: int | None,
    rng: np.random.Generator,
) -> list[dict[str, np.ndarray]]:
    """Reference outputs under ulp-level perturbation of inputs (and weights, via ``noisy``)."""
    count = perturbations
    if count is None:
        smallest = min((v.size for v in ref_out.values()), default=0)
        small = smallest < cmp.SMALL_OUTPUT
        count = cmp.SMALL_OUTPUT_PERTURBATIONS if small else cmp.DEFAULT_PERTURBATIONS
    outs = []
    for _ in range(count):
        moved = inp.perturb(feeds, rng, cmp.INPUT_ULPS)
        if moved is None and noisy is None:
            break  # nothing to perturb
        outs.append((noisy or ref).run(feeds if moved is None else moved))
        if moved is None:
            break  # the jittered model on the same inputs gives the same answer every time
    return outs


def _run(
    runner: ModelRunner, feeds: Mapping[str, np.ndarray], defaulted: Mapping[str, int]
) -> dict[str, np.ndarray]:
    try:
        return runner.run(feeds)
    except VerificationError as err:
        if defaulted:
            dims = ", ".join(f"{k}={v}" for k, v in defaulted.items())
            raise VerificationError(
                f"{err} (symbolic dims were set by default: {dims}; give shapes explicitly)"
            ) from err
        raise


def _seed_list(seeds: int | Sequence[int]) -> list[int]:
    if isinstance(seeds, (int, np.integer)):
        if seeds < 1:
            raise InputError(f"seeds must be at least 1, got {seeds}")
        return list(range(int(seeds)))
    out = [int(s) for s in seeds]
    if not out:
        raise InputError("seeds must not be empty")
    return out


def _given_sets(
    inputs: InputSets | None, specs: Sequence[TensorSpec]
) -> list[dict[str, np.ndarray]]:
    if inputs is None:
        return []
    items = [inputs] if isinstance(inputs, (str, os.PathLike, Mapping)) else list(inputs)
    sets = []
    for item in items:
        data = inp.load_npz(item) if isinstance(item, (str, os.PathLike)) else item
        if not isinstance(data, Mapping):
            raise InputError("inputs must be an .npz path, a dict of arrays, or a list of those")
        sets.append(inp.coerce_feeds(specs, data))
    if not sets:
        raise InputError("inputs is empty")
    return sets


def _tolerances(
    outputs: Sequence[TensorSpec],
    rtol: float | None,
    atol: float | None,
    per_output: Mapping[str, ToleranceSpec] | None,
) -> dict[str, cmp.Tolerance]:
    names = {o.name for o in outputs}
    unknown = sorted(set(per_output or {}) - names)
    if unknown:
        raise InputError(f"tolerance for unknown output(s) {unknown}; outputs are {sorted(names)}")
    result = {}
    for o in outputs:
        base = cmp.default_tolerance(o.dtype)
        r = base.rtol if rtol is None else rtol
        a = base.atol if atol is None else atol
        spec = (per_output or {}).get(o.name)
        if isinstance(spec, Mapping):
            r, a = spec.get("rtol", r), spec.get("atol", a)
        elif spec is not None:
            r = r if spec[0] is None else spec[0]
            a = a if spec[1] is None else spec[1]
        if not (r >= 0 and a >= 0):
            raise InputError(f"tolerances must be non-negative (output {o.name!r})")
        result[o.name] = cmp.Tolerance(float(r), float(a))
    return result


def _describe_inputs(
    specs: Sequence[TensorSpec],
    resolved: Mapping[str, tuple[int, ...]],
    given: Mapping[str, np.ndarray],
) -> dict[str, str]:
    out = {}
    for s in specs:
        shape = "x".join(map(str, resolved[s.name])) or "scalar"
        origin = "given" if s.name in given else "synthesised"
        out[s.name] = f"{s.dtype} {shape} ({origin})"
    return out
