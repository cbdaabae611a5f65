"""Verification of a requantizing fold (``--requantize``): the fold exact, the drift bounded.

Dropping the inner ``Q → DQ`` pair of ``layer → Q → DQ → BN → Q → DQ`` removes one rounding
step, so the folded model cannot match the quantized original exactly. Two checks instead:

1. **The fold itself** — the candidate against the original with the same inner pairs
   bypassed (BN kept), under the usual rule. A wrong scale or bias fails here.
2. **The drift** — the candidate against the quantized original, in steps of each output's
   quantization scale, allowed ``max(QUANTIZED_STEPS, NOISE_FACTOR · noise)`` steps.
   ``noise`` is the model's own quantization noise: how far the original moves when the
   scales of those inner pairs move by ``±SCALE_JITTER`` (a recalibration moves them more).
   A deep network with many such pairs (MobileNetV2: 52) moves by tens of steps under a
   0.1 % scale change, so a fixed 3-step bound would refuse every correct fold there.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from bnfold.equivalence.api import verify
from bnfold.equivalence.quantized_outputs import QUANTIZED_STEPS, output_scales
from bnfold.equivalence.result import VerifyResult

SCALE_JITTER = 1e-3
NOISE_FACTOR = 2.0

Pairs = Sequence[tuple[str, str]]  # (DequantizeLinear output, QuantizeLinear input)


@dataclasses.dataclass
class Drift:
    """Per output: the candidate's drift and the original's own noise, in output steps."""

    steps: dict[str, float]
    noise: dict[str, float]
    allowed: dict[str, float]


def bypassed(model: onnx.ModelProto, pairs: Pairs) -> onnx.ModelProto:
    """A copy where each dropped pair's DequantizeLinear output reads its Q's input instead."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    rewire = dict(pairs)
    for node in out.graph.node:
        for i, name in enumerate(node.input):
            if name in rewire:
                node.input[i] = rewire[name]
    return out


def jittered(model: onnx.ModelProto, pairs: Pairs, factor: float) -> onnx.ModelProto:
    """A copy whose dropped pairs quantize with their scale times ``factor``."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    producers = {o: n for n in graph.node for o in n.output}
    inits = {t.name: t for t in graph.initializer}
    for dq_output, _source in pairs:
        dq = producers.get(dq_output)
        q = producers.get(dq.input[0]) if dq is not None else None
        if dq is None or q is None or q.input[1] not in inits:
            continue
        scale = numpy_helper.to_array(inits[q.input[1]])
        name = f"{q.input[1]}_bnfold_jitter"
        if name not in inits:
            moved = (scale.astype(np.float64) * factor).astype(scale.dtype)
            inits[name] = numpy_helper.from_array(moved, name)
            graph.initializer.append(inits[name])
        q.input[1] = dq.input[1] = name
    return out


def verify_requantized(
    original: str | os.PathLike[str],
    candidate: Any,
    pairs: Pairs,
    **options: Any,
) -> VerifyResult:
    """Both checks (module doc); the result of the one that decides, with the figures added."""
    model = onnx.load(os.fspath(original))
    exact = verify(bypassed(model, pairs), candidate, probes=False, **options)
    exact.reference = f"{os.fspath(original)} with {len(pairs)} inner Q/DQ pair(s) bypassed"
    if not exact:
        exact.warnings.append(
            "the fold itself is wrong: the model differs from the original with the same "
            "quantization pairs bypassed"
        )
        return exact
    scales = output_scales(model)
    noise = own_noise(model, pairs, scales, **options)
    allowed = {n: max(float(QUANTIZED_STEPS), NOISE_FACTOR * noise.get(n, 0.0)) for n in scales}
    tolerances = {n: {"atol": allowed[n] * scales[n], "rtol": 0.0} for n in scales}
    result = verify(
        original,
        candidate,
        probes=False,
        output_tolerances=tolerances,
        perturbations=0,
        **options,
    )
    for o in result.outputs:
        if o.name in scales:
            result.warnings.append(
                f"{o.label}: drift {o.max_abs / scales[o.name]:.1f} output steps from the "
                f"quantized original (one rounding step fewer); its own quantization noise "
                f"(inner scales ±{SCALE_JITTER:.1%}) {noise.get(o.name, 0.0):.1f} steps; "
                f"allowed {allowed[o.name]:.1f}"
            )
    result.warnings.append(f"the fold itself: {exact.summary()} ({exact.reference})")
    return result


def own_noise(
    model: onnx.ModelProto, pairs: Pairs, scales: Mapping[str, float], **options: Any
) -> dict[str, float]:
    """Per output: the original's largest move, in steps, under ±SCALE_JITTER inner scales."""
    noise = dict.fromkeys(scales, 0.0)
    if not scales:
        return noise
    loose = {n: {"atol": float("inf"), "rtol": 0.0} for n in scales}
    for factor in (1 + SCALE_JITTER, 1 - SCALE_JITTER):
        moved = verify(
            model,
            jittered(model, pairs, factor),
            probes=False,
            perturbations=0,
            output_tolerances=loose,
            **options,
        )
        for o in moved.outputs:
            if o.name in scales and np.isfinite(o.max_abs):
                noise[o.name] = max(noise[o.name], o.max_abs / scales[o.name])
    return noise
