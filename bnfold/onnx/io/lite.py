"""Checking and shape-inferring a model without copying its weights.

The ONNX checker and shape inference serialise the whole model; on a 100 MB model that
costs more than loading it. We hand them a *lite* copy instead: same graph, but large
initializers become typed graph inputs (same name, dtype and shape).
"""

from __future__ import annotations

import logging

import onnx

from bnfold.onnx.io import symbolic_shapes

logger = logging.getLogger(__name__)

SMALL_TENSOR_BYTES = 4096  # shape tensors, axes, scalars stay (data propagation needs them)


def lite_copy(proto: onnx.ModelProto) -> onnx.ModelProto:
    """A structural copy of ``proto`` whose large main-graph initializers are graph inputs."""
    lite = onnx.ModelProto(
        ir_version=proto.ir_version,
        producer_name=proto.producer_name,
        producer_version=proto.producer_version,
        domain=proto.domain,
        model_version=proto.model_version,
        doc_string=proto.doc_string,
    )
    lite.opset_import.extend(proto.opset_import)
    lite.metadata_props.extend(proto.metadata_props)
    lite.functions.extend(proto.functions)
    src, dst = proto.graph, lite.graph
    dst.name, dst.doc_string = src.name, src.doc_string
    dst.node.extend(src.node)
    dst.output.extend(src.output)
    dst.value_info.extend(src.value_info)
    dst.sparse_initializer.extend(src.sparse_initializer)
    dst.input.extend(src.input)
    input_names = {i.name for i in src.input}
    for tensor in src.initializer:
        if _is_small(tensor):
            dst.initializer.append(tensor)
        elif tensor.name not in input_names:
            dst.input.append(
                onnx.helper.make_tensor_value_info(tensor.name, tensor.data_type, list(tensor.dims))
            )
    return lite


def _is_small(tensor: onnx.TensorProto) -> bool:
    if tensor.data_location == onnx.TensorProto.EXTERNAL:
        return False
    count = 1
    for dim in tensor.dims:
        count *= dim
    return is_small_shape(count) and tensor.ByteSize() <= SMALL_TENSOR_BYTES


def is_small_shape(count: int) -> bool:
    """True when a tensor of ``count`` elements may stay an initializer in the lite copy."""
    return count * 8 <= SMALL_TENSOR_BYTES


def check_and_infer(proto: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """Check ``proto`` structurally and infer its shapes, on one lite copy; ``proto`` is unchanged.

    Raises onnx's ValidationError when the checker fails. Returns the inferred
    ``value_info`` of main-graph values not already typed (empty when inference fails:
    it is best-effort).
    """
    lite = lite_copy(proto)
    onnx.checker.check_model(lite, full_check=False)
    known = {v.name for v in proto.graph.value_info}
    known.update(i.name for i in proto.graph.input)
    known.update(o.name for o in proto.graph.output)
    if all(name in known for node in proto.graph.node for name in node.output if name):
        return []  # every value already typed (dynamo exports): nothing inference could add
    try:
        inferred = onnx.shape_inference.infer_shapes(
            lite, check_type=False, strict_mode=False, data_prop=True
        )
    except Exception as err:  # inference is best-effort
        logger.debug("shape inference failed: %s", err)
        return []
    found = list(inferred.graph.value_info)
    if symbolic_shapes.ranks_missing(proto.graph, found):
        better = {
            v.name: v
            for v in symbolic_shapes.symbolic_value_info(lite)
            if v.type.tensor_type.HasField("shape")
        }
        shaped = {v.name for v in found if v.type.tensor_type.HasField("shape")}
        found = [v if v.name in shaped else better.get(v.name, v) for v in found]
        names = {v.name for v in found}
        found += [v for name, v in better.items() if name not in names]
    return [v for v in found if v.name not in known]
