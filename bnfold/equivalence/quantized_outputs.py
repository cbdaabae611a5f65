"""The quantization scale (one step) of each output that a per-tensor DequantizeLinear makes.

A requantizing fold (``--requantize``) drops one rounding step, so its outputs may move by
a few such steps; :mod:`bnfold.equivalence.requantized` judges them in these units, with at
least ``QUANTIZED_STEPS`` allowed.
"""

from __future__ import annotations

import os

import numpy as np
import onnx
from onnx import numpy_helper

QUANTIZED_STEPS = 3
_PASS_THROUGH = frozenset({"Identity", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose"})


def output_scales(model: str | os.PathLike[str] | onnx.ModelProto) -> dict[str, float]:
    """``{output: scale}`` for each output a per-tensor DequantizeLinear makes (through
    reshapes and transposes)."""
    proto = (
        model
        if isinstance(model, onnx.ModelProto)
        else onnx.load(os.fspath(model), load_external_data=False)
    )
    graph = proto.graph
    producers = {out: node for node in graph.node for out in node.output}
    constants = {t.name: t for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute:
            constants[node.output[0]] = node.attribute[0].t
    found: dict[str, float] = {}
    for output in graph.output:
        node = producers.get(output.name)
        while node is not None and node.op_type in _PASS_THROUGH:
            node = producers.get(node.input[0])
        if node is None or node.op_type != "DequantizeLinear" or len(node.input) < 2:
            continue
        tensor = constants.get(node.input[1])
        if tensor is None:
            continue
        scale = np.asarray(numpy_helper.to_array(tensor), dtype=np.float64)
        if scale.size == 1 and np.isfinite(scale).all():
            found[output.name] = float(scale.reshape(-1)[0])
    return found
