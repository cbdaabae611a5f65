"""Attach a candidate to an opened reference: session, shared probes, signature checks.

The candidate keeps the probes it shares with the reference (same output, same
squashing op); the reference's other probes are dropped from its runner. Probes are
never a failure: one whose dtype differs (declared, or in the arrays of a run) is
dropped from both sessions with a warning.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
from collections.abc import Mapping

import numpy as np

from bnfold.equivalence.probes import common_probes, probe_labels
from bnfold.equivalence.reference import OpenReference, probed_source
from bnfold.equivalence.session import ModelRunner
from bnfold.equivalence.signature import check_same_signature
from bnfold.equivalence.source import IN_MEMORY_LIMIT, ModelLike, ModelSource, open_model

LARGE_CANDIDATE_WARNING = "candidate over 1 GiB: output probes skipped"


@dataclasses.dataclass
class OpenPair:
    """Both models loaded (probes added), their signatures checked, ready to run."""

    reference: OpenReference
    cand: ModelRunner
    cand_label: str
    labels: Mapping[str, str]  # probe output name -> "<output> before <Op>"

    @property
    def ref_src(self) -> ModelSource:
        return self.reference.src

    @property
    def ref(self) -> ModelRunner:
        return self.reference.runner

    @property
    def pool(self) -> concurrent.futures.Executor:
        return self.reference.pool

    @property
    def warnings(self) -> list[str]:
        return self.reference.warnings


def open_pair(
    stack: contextlib.ExitStack, reference: OpenReference, candidate: ModelLike
) -> OpenPair:
    """Open the candidate in onnxruntime (ORT_DISABLE_ALL) beside ``reference``."""
    cand_src = stack.enter_context(open_model(candidate, "candidate"))
    pairs = []
    if reference.probes:
        if cand_src.approx_bytes() > IN_MEMORY_LIMIT:
            reference.warnings.append(LARGE_CANDIDATE_WARNING)
        else:
            pairs = common_probes(reference.src.graph_proto(), cand_src.graph_proto())
    labels = probe_labels(pairs)
    ref = reference.runner
    ref.outputs = [o for o in ref.outputs if o.name not in reference.probes or o.name in labels]
    probed = stack.enter_context(probed_source(cand_src, [c for _, c in pairs]))
    cand = ModelRunner(probed, reference.provider, reference.plan.intra_op)
    check_same_signature(ref.inputs, cand.inputs, "input")
    real = [[o for o in runner.outputs if o.name not in labels] for runner in (ref, cand)]
    check_same_signature(real[0], real[1], "output")
    _drop_unmatched_probes(ref, cand, labels, reference.warnings)
    return OpenPair(reference, cand, cand_src.label, labels)


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
