"""Open a reference and a candidate for comparison: sessions, probes, the jittered reference.

Probes are never a failure: one whose dtype differs (declared, or in the arrays of a run)
is dropped from both sessions with a warning.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator, Mapping

import numpy as np

from bnfold.equivalence import compare as cmp
from bnfold.equivalence.jitter import open_jittered
from bnfold.equivalence.probes import Probe, common_probes, probe_labels, with_probes
from bnfold.equivalence.session import ModelRunner
from bnfold.equivalence.signature import check_same_signature
from bnfold.equivalence.source import (
    IN_MEMORY_LIMIT,
    ModelLike,
    ModelSource,
    open_model,
    open_proto,
)
from bnfold.errors import ModelLoadError


@dataclasses.dataclass
class OpenPair:
    """Both models loaded (probes added), their signatures checked, ready to run."""

    ref_src: ModelSource
    ref: ModelRunner
    cand: ModelRunner
    cand_label: str
    labels: Mapping[str, str]  # probe output name -> "<output> before <Op>"
    noisy: ModelRunner | None = None  # the reference with jittered weights (noise floor)
    large: bool = False  # too big for whole-model copies: no probes, no weight jitter
    warnings: list[str] = dataclasses.field(default_factory=list)


def open_pair(
    stack: contextlib.ExitStack,
    reference: ModelLike,
    candidate: ModelLike,
    *,
    provider: str,
    probes: bool,
    perturbations: int | None,
) -> OpenPair:
    """Open both models in onnxruntime (ORT_DISABLE_ALL); ``stack`` owns what is opened."""
    warnings: list[str] = []
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
    noisy = None
    if not large:
        noisy = _floor_runner(stack, ref_src, provider, perturbations, warnings)
    return OpenPair(ref_src, ref, cand, cand_src.label, labels, noisy, large, warnings)


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


def mismatched_probes(
    pair: OpenPair, ref_out: Mapping[str, np.ndarray], cand_out: Mapping[str, np.ndarray]
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
