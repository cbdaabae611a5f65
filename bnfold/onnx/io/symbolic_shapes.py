"""A second opinion on shapes when onnx's inference leaves ranks unknown.

Legacy exports at opset 11/13 flatten with ``Reshape(x, Concat(Slice(Shape(x)), [-1]))``;
onnx's shape inference does not propagate that chain, so every later Reshape, Transpose
and MatMul has no rank and layout folds cannot prove their channel axis. onnxruntime's
symbolic shape inference (``onnxruntime.tools.symbolic_shape_infer``, needs sympy) does;
it is asked only when a BatchNormalization remains and such ranks are missing, on the
weight-free lite copy.
"""

from __future__ import annotations

import contextlib
import io
import logging

import onnx

logger = logging.getLogger(__name__)

RANK_USERS = frozenset({"Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze", "MatMul"})


def ranks_missing(graph: onnx.GraphProto, inferred: list[onnx.ValueInfoProto]) -> bool:
    """A BN exists and some layout op or MatMul output has no shape after inference."""
    if not any(n.op_type == "BatchNormalization" for n in graph.node):
        return False
    shaped = {
        v.name for v in (*inferred, *graph.value_info) if v.type.tensor_type.HasField("shape")
    }
    shaped.update(o.name for o in graph.output if o.type.tensor_type.HasField("shape"))
    return any(
        n.op_type in RANK_USERS and n.output and n.output[0] not in shaped for n in graph.node
    )


def symbolic_value_info(lite: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """Shapes from onnxruntime's symbolic inference, or [] when it is unavailable or fails."""
    try:
        from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference
    except Exception as err:  # sympy missing, or an onnxruntime without the tool
        logger.debug("symbolic shape inference unavailable: %s", err)
        return []
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            inferred = SymbolicShapeInference.infer_shapes(lite, auto_merge=True)
    except Exception as err:  # best effort: folds that need ranks skip with a reason
        logger.debug("symbolic shape inference failed: %s", err)
        return []
    return list(inferred.graph.value_info) if inferred is not None else []
