"""``verify(reference, candidate)``: run both models in onnxruntime and judge equivalence.

Two phases, kept apart: :func:`bnfold.equivalence.run.run_pair` runs the models and
collects outputs; :class:`bnfold.equivalence.judge.Judge` turns them into a result.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

from bnfold.equivalence.feeder import InputSets
from bnfold.equivalence.judge import Judge, ToleranceSpec
from bnfold.equivalence.result import VerifyResult
from bnfold.equivalence.run import run_pair
from bnfold.equivalence.source import ModelLike
from bnfold.errors import InputError

logger = logging.getLogger(__name__)

__all__ = ["InputSets", "ToleranceSpec", "verify"]


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
    measure_floor: bool = False,
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
        measure_floor: measure the noise floor even when every output is within its
            fixed tolerance. By default it is measured only when some output is not
            (a floor only loosens the rule, so it cannot change such a verdict); the
            result then shows no floor (``None``, ``noise_floor == "not needed"``).
    """
    if (floor_factor is not None and not floor_factor >= 0) or (
        perturbations is not None and perturbations < 0
    ):
        raise InputError("floor_factor and perturbations must be non-negative")
    judge = Judge(
        rtol=rtol, atol=atol, output_tolerances=output_tolerances, floor_factor=floor_factor
    )
    run = run_pair(
        reference,
        candidate,
        inputs=inputs,
        shapes=shapes,
        seeds=seeds,
        provider=provider,
        perturbations=perturbations,
        probes=probes,
        measure_floor=measure_floor,
        sink=judge,  # each input set is judged as it comes: its arrays are not kept
    )
    result = judge.result(run)
    logger.info("%s", result.summary())
    return result
