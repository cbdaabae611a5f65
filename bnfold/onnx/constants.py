"""Reading constant tensors out of an onnx-ir graph (initializers and Constant nodes)."""

from __future__ import annotations

import logging

import numpy as np
import onnx_ir as ir

logger = logging.getLogger(__name__)

_CONSTANT_ATTRS = ("value", "value_float", "value_floats", "value_int", "value_ints")
_QUANTIZE_DOMAINS = ("", "ai.onnx", "com.microsoft")
QUANTIZE_OPS = frozenset({"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"})
FINITE_MARK = "bnfold.finite"  # tensor meta: scanned, no NaN/Inf


def is_onnx_op(node: ir.Node, op_type: str | tuple[str, ...]) -> bool:
    """True when ``node`` is the default-domain operator ``op_type`` (or one of several)."""
    types = (op_type,) if isinstance(op_type, str) else op_type
    return node.op_type in types and node.domain in ("", "ai.onnx")


def is_quantize_op(node: ir.Node) -> bool:
    """QuantizeLinear / DequantizeLinear / DynamicQuantizeLinear, standard or com.microsoft."""
    return node.op_type in QUANTIZE_OPS and node.domain in _QUANTIZE_DOMAINS


def is_quantized_dtype(dtype: ir.DataType | None) -> bool:
    """Storage types of quantized tensors: integers and floats of 8 bits or fewer.

    int8/uint8/int4/uint4/int2/uint2 and float8/float6/float4; not bool (masks).
    """
    if dtype is None or dtype in (ir.DataType.UNDEFINED, ir.DataType.STRING, ir.DataType.BOOL):
        return False
    try:
        return (dtype.is_integer() or dtype.is_floating_point()) and dtype.bitwidth <= 8
    except (TypeError, ValueError):
        return False


def constant_array(
    value: ir.Value | None, *, allow_graph_inputs: bool = False
) -> np.ndarray | None:
    """The value's numpy array when it is a compile-time constant, else None.

    Initializers that are also graph inputs can be overridden at run time, so they
    count as constants only with ``allow_graph_inputs``.
    """
    if value is None or not is_constant(value, allow_graph_inputs=allow_graph_inputs):
        return None
    if value.const_value is not None:
        return _as_numpy(value.const_value)
    producer = value.producer()
    assert producer is not None  # is_constant: a Constant node
    return _constant_node_array(producer)


def mark_finite(value: ir.Value | None) -> None:
    """Record that ``value``'s own tensor holds no NaN/Inf (scanned at load time).

    The mark lives on the tensor object, which folds never write into (they make new
    tensors), so it cannot go stale; a value given a new tensor loses it.
    """
    if value is not None and value.const_value is not None:
        value.const_value.meta[FINITE_MARK] = True


def known_finite(value: ir.Value | None) -> bool:
    """True when ``value``'s tensor was already scanned and holds no NaN/Inf."""
    tensor = value.const_value if value is not None else None
    return tensor is not None and bool(tensor.meta.get(FINITE_MARK))


def is_constant(value: ir.Value | None, *, allow_graph_inputs: bool = False) -> bool:
    """Whether :func:`constant_array` has a candidate, without reading any data."""
    if value is None or (value.is_graph_input() and not allow_graph_inputs):
        return False
    if value.const_value is not None:
        return True
    producer = value.producer()
    return producer is not None and is_onnx_op(producer, "Constant")


def why_not_constant(value: ir.Value | None, what: str, *, allow_graph_inputs: bool = False) -> str:
    """A human reason explaining why ``value`` is not usable as a constant."""
    if value is None:
        return f"{what} is missing"
    if value.is_graph_input() and (value.const_value is None or not allow_graph_inputs):
        if value.const_value is not None:
            return (
                f"{what} '{value.name}' is a graph input with a default (overridable at run "
                "time; pass allow_graph_input_params=True / --fold-overridable to fold anyway)"
            )
        return f"{what} '{value.name}' is a graph input"
    producer = value.producer()
    if producer is not None and producer.op_type == "DequantizeLinear" and is_quantize_op(producer):
        return f"{what} '{value.name}' is quantized (DequantizeLinear); fold before quantizing"
    if producer is not None:
        return f"{what} '{value.name}' is computed at run time (by {producer.op_type})"
    return f"{what} '{value.name}' is not a constant"


def _as_numpy(tensor: ir.TensorProtocol) -> np.ndarray | None:
    try:
        return tensor.numpy()
    except Exception as err:  # external data missing, unsupported dtype, …
        logger.debug("could not read tensor %s: %s", tensor.name, err)
        return None


def _constant_node_array(node: ir.Node) -> np.ndarray | None:
    for key in _CONSTANT_ATTRS:
        attr = node.attributes.get(key)
        if attr is None:
            continue
        if key == "value":
            tensor = attr.value  # as_tensor() checks a runtime Protocol: slow on hot paths
            return _as_numpy(tensor) if attr.type == ir.AttributeType.TENSOR else None
        if key == "value_float":
            return np.array(attr.as_float(), dtype=np.float32)
        if key == "value_floats":
            return np.array(list(attr.as_floats()), dtype=np.float32)
        if key == "value_int":
            return np.array(attr.as_int(), dtype=np.int64)
        return np.array(list(attr.as_ints()), dtype=np.int64)
    return None


def dequantizer(value: ir.Value | None) -> ir.Node | None:
    """The standard DequantizeLinear producing ``value``, if any."""
    producer = value.producer() if value is not None else None
    if producer is not None and is_onnx_op(producer, "DequantizeLinear"):
        return producer
    return None


def dequantized(value: ir.Value | None) -> np.ndarray | None:
    """``(q − zp)·scale`` in float64 for a DequantizeLinear of constants, else None."""
    dq = dequantizer(value)
    if dq is None:
        return None
    read = read_dequantize(dq)
    if isinstance(read, str):
        return None
    q, scale, zp, axis = read
    if axis is None:
        return (q.astype(np.float64) - zp.astype(np.float64)) * scale.astype(np.float64)
    shape = [1] * q.ndim
    shape[axis] = -1
    diff = q.astype(np.float64) - zp.astype(np.float64).reshape(shape)
    return diff * scale.astype(np.float64).reshape(shape)


def read_dequantize(dq: ir.Node) -> tuple[np.ndarray, np.ndarray, np.ndarray, int | None] | str:
    """(q, scale, zero point, axis or None) of a DequantizeLinear of constants, or why not."""
    if len(dq.inputs) < 2:
        return "DequantizeLinear is missing inputs"
    q = constant_array(dq.inputs[0])
    scale = constant_array(dq.inputs[1])
    if q is None or scale is None:
        return f"DequantizeLinear '{dq.name or dq.op_type}' reads a value computed at run time"
    zp_value = dq.inputs[2] if len(dq.inputs) > 2 else None
    zp = constant_array(zp_value) if zp_value is not None else np.zeros(scale.shape, q.dtype)
    if zp is None:
        return f"DequantizeLinear '{dq.name or dq.op_type}' has a computed zero point"
    if "block_size" in dq.attributes and dq.attributes.get_int("block_size", 0):
        return f"DequantizeLinear '{dq.name or dq.op_type}' is blocked (block_size)"
    if scale.size == 1:
        return q, scale.reshape(()), zp.reshape(()), None
    axis = dq.attributes.get_int("axis", 1)
    axis = axis % q.ndim if q.ndim else 0
    if scale.ndim != 1 or q.ndim == 0 or q.shape[axis] != scale.shape[0]:
        return f"DequantizeLinear '{dq.name or dq.op_type}' has scale shape {tuple(scale.shape)}"
    return q, scale, zp.reshape(scale.shape), axis
