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
from bnfold.equivalence import shape_search
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
        feeder = _Feeder(specs, shapes or {}, bounds)
        first = _FirstRun(pair.ref, feeder, sets[0], used_seeds[0])
        found = shape_search.search(
            specs,
            feeder.fixed(sets[0]),
            first.try_shapes,
            hints=shape_search.metadata_hints(
                pair.ref_src.graph_proto(),
                shape_search.free_dims(specs, feeder.fixed(sets[0])),
            ),
        )
        runs: dict[str, list[cmp.Metrics]] = {o.name: [] for o in pair.ref.outputs}
        floors = dict.fromkeys(runs, cmp.Floor())
        described: dict[str, str] = {}
        first_shapes: dict[str, tuple[int, ...]] = {}
        defaulted: dict[str, int] = {}
        for seed, partial in zip(used_seeds, sets, strict=True):
            rng = np.random.default_rng(seed)
            resolved, defaulted = inp.resolve_shapes(specs, feeder.fixed(partial), found.sizes)
            described = described or _describe_inputs(specs, resolved, partial, found)
            first_shapes = first_shapes or dict(resolved)
            feeds = feeder.feeds(partial, resolved, rng)
            ref_out = first.reuse(feeds) or _run(pair.ref, feeds, defaulted)
            cand_out = _run(pair.cand, feeds, defaulted)
            for name in _mismatched_probes(pair, ref_out, cand_out):
                del runs[name], floors[name]
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
                if o.name in runs
            ],
            defaulted_dims=defaulted,
            warnings=warnings,
            shape_search=found.to_dict() if found.searched else None,
            input_shapes=first_shapes,
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
    warnings: list[str] = dataclasses.field(default_factory=list)


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
    labels = probe_labels(pairs)
    real = [[o for o in runner.outputs if o.name not in labels] for runner in (ref, cand)]
    check_same_signature(real[0], real[1], "output")
    _drop_unmatched_probes(ref, cand, labels, warnings)
    return _Pair(ref_src, ref, cand, cand_src.label, labels, large, warnings)


def _drop_unmatched_probes(
    ref: ModelRunner, cand: ModelRunner, labels: Mapping[str, str], warnings: list[str]
) -> None:
    """Probes are never a failure: one whose declared dtype or rank differs is dropped.

    An untyped probe (no value_info for the probed value) reads as rank 0 in onnxruntime;
    it is kept and checked on the arrays of the first run instead.
    """
    specs = {o.name: o for o in cand.outputs}
    for r in [o for o in ref.outputs if o.name in labels]:
        c = specs.get(r.name)
        if c is None:
            why = "missing in the candidate"
        elif r.dtype != c.dtype:
            why = f"{r.dtype} in the reference, {c.dtype} in the candidate"
        else:
            continue
        _remove_probe(ref, cand, r.name)
        warnings.append(f"probe {labels[r.name]!r} not compared ({why})")


def _mismatched_probes(
    pair: _Pair, ref_out: Mapping[str, np.ndarray], cand_out: Mapping[str, np.ndarray]
) -> list[str]:
    """Probes whose arrays differ in dtype or shape: removed from both runners, with a note."""
    dropped = []
    for name, label in pair.labels.items():
        if name not in ref_out or name not in cand_out:
            continue
        r, c = ref_out[name], cand_out[name]
        if r.dtype == c.dtype and r.shape == c.shape:
            continue
        _remove_probe(pair.ref, pair.cand, name)
        pair.warnings.append(
            f"probe {label!r} not compared (shape {_shape(r)} {r.dtype} in the reference, "
            f"{_shape(c)} {c.dtype} in the candidate)"
        )
        dropped.append(name)
    return dropped


def _remove_probe(ref: ModelRunner, cand: ModelRunner, name: str) -> None:
    for runner in (ref, cand):
        runner.outputs = [o for o in runner.outputs if o.name != name]


def _shape(arr: np.ndarray) -> str:
    return "x".join(map(str, arr.shape)) or "scalar"


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
    found: shape_search.ShapeSearch,
) -> dict[str, str]:
    out = {}
    for s in specs:
        shape = "x".join(map(str, resolved[s.name])) or "scalar"
        origin = "given" if s.name in given else found.note(s.name) or "synthesised"
        out[s.name] = f"{s.dtype} {shape} ({origin})"
    return out


class _Feeder:
    """Input sets: the user's arrays, completed by synthesised ones at resolved shapes."""

    def __init__(
        self,
        specs: Sequence[TensorSpec],
        shapes: Mapping[str, Sequence[int]],
        bounds: Mapping[str, int],
    ) -> None:
        self.specs = specs
        self.shapes = {k: tuple(v) for k, v in shapes.items()}
        self.bounds = bounds

    def fixed(self, partial: Mapping[str, np.ndarray]) -> dict[str, tuple[int, ...]]:
        """Shapes decided by the user: given arrays, then explicit shapes."""
        return {**{k: tuple(v.shape) for k, v in partial.items()}, **self.shapes}

    def feeds(
        self,
        partial: Mapping[str, np.ndarray],
        resolved: Mapping[str, tuple[int, ...]],
        rng: np.random.Generator,
    ) -> dict[str, np.ndarray]:
        missing = [s for s in self.specs if s.name not in partial]
        feeds = {**inp.synthesize(missing, resolved, rng, self.bounds), **partial}
        return {s.name: feeds[s.name] for s in self.specs}


class _FirstRun:
    """The reference run that probes input shapes, kept for the first input set's reuse."""

    def __init__(
        self, ref: ModelRunner, feeder: _Feeder, partial: Mapping[str, np.ndarray], seed: int
    ) -> None:
        self.ref, self.feeder, self.partial, self.seed = ref, feeder, partial, seed
        self.last: tuple[dict[str, np.ndarray], dict[str, np.ndarray]] | None = None

    def try_shapes(self, resolved: Mapping[str, tuple[int, ...]]) -> None:
        """Run the reference at these shapes; VerificationError when it fails."""
        feeds = self.feeder.feeds(self.partial, resolved, np.random.default_rng(self.seed))
        self.last = (feeds, self.ref.run(feeds))

    def reuse(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray] | None:
        """The reference outputs for ``feeds`` if the probing run used exactly these."""
        if self.last is None:
            return None
        probed, outputs = self.last
        self.last = None  # one reuse only
        same = probed.keys() == feeds.keys() and all(
            probed[k].shape == v.shape and np.array_equal(probed[k], v) for k, v in feeds.items()
        )
        return outputs if same else None
