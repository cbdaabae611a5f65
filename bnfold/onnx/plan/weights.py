"""What every layer adapter needs: reading constant weights, casting folded ones back,
setting new weights, and the one bias-Add matcher and inserter."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx_ir as ir

from bnfold import foldmath
from bnfold.onnx.constants import constant_array, is_onnx_op, known_finite, why_not_constant
from bnfold.onnx.context import FoldContext, display_name
from bnfold.onnx.uses import content_uses


def layer_constant(
    ctx: FoldContext, layer: ir.Node, index: int, what: str, *, scan: bool = True
) -> np.ndarray | str:
    """Input ``index`` of ``layer`` as a finite float array, or why it cannot be folded.

    ``scan=False`` skips the NaN/Inf scan, for callers whose math refuses non-finite
    results anyway (the array may then hold NaN/Inf).
    """
    value = layer.inputs[index] if index < len(layer.inputs) else None
    allow = ctx.options.allow_graph_input_params
    arr = constant_array(value, allow_graph_inputs=allow)
    if arr is None:
        return why_not_constant(value, f"{layer.op_type} {what}", allow_graph_inputs=allow)
    if not is_float(arr):
        return f"{layer.op_type} {what} has non-float dtype {arr.dtype}"
    if scan and not known_finite(value) and not foldmath.all_finite(arr):
        return f"{layer.op_type} {what} contains NaN or Inf"
    return arr


def is_float(arr: np.ndarray) -> bool:
    """Float arrays, bfloat16 included."""
    return np.issubdtype(np.dtype(arr.dtype), np.floating) or arr.dtype.name == "bfloat16"


def conv_bias(ctx: FoldContext, layer: ir.Node, channels: int) -> np.ndarray | str | None:
    """A Conv/ConvTranspose bias as a length-``channels`` vector, None when absent, or why not.

    torch's dynamo exporter gives a bias-free Conv3d an all-zero bias of the wrong shape
    (the exported model does not run); such a bias is treated as no bias.
    """
    if len(layer.inputs) < 3 or layer.inputs[2] is None:
        return None
    got = layer_constant(ctx, layer, 2, "bias")
    if isinstance(got, str):
        return got
    b = got.reshape(-1)
    if b.shape[0] == channels:
        return b
    if not np.any(b):
        return None
    return f"{layer.op_type} bias has {b.shape[0]} entries, expected {channels}"


def cast_like(
    folded: np.ndarray, like: np.ndarray, what: str, axis: int | tuple[int, ...] | None = 0
) -> np.ndarray | str:
    """float64 results cast to ``like``'s dtype (range-checked), or the refusal reason.

    ``axis``: the output-channel axis of weights (see ``foldmath.cast_back``'s underflow
    rule); None for additive terms (biases, Gemm C), which are never judged for underflow.
    """
    judged = axis is not None and like.shape == folded.shape
    out, reason = foldmath.cast_back(
        folded, like.dtype, like if judged else None, 0 if axis is None else axis
    )
    if reason is not None:
        return f"{what}: {reason}"
    assert out is not None
    return out


def value_dtype(value: ir.Value | None) -> ir.DataType | None:
    """The ONNX dtype of a (constant) value."""
    if value is None:
        return None
    return value.const_value.dtype if value.const_value is not None else value.dtype


def input_dtype(node: ir.Node, index: int, default: ir.DataType | None) -> ir.DataType | None:
    """The dtype of ``node``'s input ``index``, or ``default`` when it is absent."""
    if index < len(node.inputs) and node.inputs[index] is not None:
        return value_dtype(node.inputs[index])
    return default


def set_inputs(
    ctx: FoldContext, node: ir.Node, arrays: dict[int, tuple[np.ndarray, ir.DataType | None]]
) -> Callable[[], None]:
    """A function giving ``node`` new constant inputs (new tensors, new unique names)."""

    def apply() -> None:
        base = display_name(node)
        if len(node.inputs) < max(arrays) + 1:
            node.resize_inputs(max(arrays) + 1)
        for index, (array, dtype) in arrays.items():
            what = {1: "weight", 2: "bias"}.get(index, str(index))
            const = ctx.new_constant(node, array, f"{base}.{what}_bnfold", dtype)
            node.replace_input_with(index, const)

    return apply


def bias_add_of(ctx: FoldContext, matmul: ir.Node) -> tuple[ir.Node, int, np.ndarray] | None:
    """(Add, constant index, constant) when the MatMul's only reader adds a float constant."""
    out = matmul.outputs[0]
    uses = content_uses(out)
    if out.is_graph_output() or len(uses) != 1:
        return None
    add, index = uses[0]
    found = _constant_term(ctx, add, index)
    return None if found is None else (add, *found)


def matmul_bias_add(ctx: FoldContext, value: ir.Value) -> tuple[ir.Node, ir.Node] | None:
    """(MatMul, Add) when ``value`` is ``Add(MatMul(A, B), c)`` with c a float constant.

    The MatMul's output may have other readers here; callers that rewrite it check that.
    """
    add = value.producer()
    if add is None:
        return None
    for i, x in enumerate(add.inputs):
        mm = x.producer() if x is not None else None
        if mm is not None and is_onnx_op(mm, "MatMul") and _constant_term(ctx, add, i):
            return mm, add
    return None


def _constant_term(ctx: FoldContext, add: ir.Node, var_index: int) -> tuple[int, np.ndarray] | None:
    """(index, array) of the float constant that a two-input Add adds to input ``var_index``."""
    if not is_onnx_op(add, "Add") or len(add.inputs) != 2:
        return None
    c_index = 1 - var_index
    c = constant_array(add.inputs[c_index], allow_graph_inputs=ctx.options.allow_graph_input_params)
    if c is None or not is_float(c):
        return None
    return c_index, c


def add_after(ctx: FoldContext, value: ir.Value, bias: ir.Value) -> ir.Value:
    """Insert ``value + bias`` and route every consumer of ``value`` (outputs too) to it."""
    producer = value.producer()
    assert producer is not None and producer.graph is not None
    users = list(value.uses())
    add = ir.Node("", "Add", inputs=[value, bias], name=ctx.unique_name(f"{producer.name}_bias"))
    out = add.outputs[0]
    out.name = ctx.unique_name(f"{value.name}_biased")
    out.type, out.shape = value.type, value.shape
    producer.graph.insert_after(producer, add)
    for user, index in users:
        user.replace_input_with(index, out)
    outputs = producer.graph.outputs
    for i, o in enumerate(outputs):
        if o is value:
            keep = value.name
            value.name = ctx.unique_name(f"{keep}_unbiased")
            out.name = keep
            outputs[i] = out
    return out


def padding_of(node: ir.Node) -> tuple[str, list[int]]:
    """A Conv's or pooling op's ``(auto_pad mode, explicit pads)``."""
    return node.attributes.get_string("auto_pad", "NOTSET"), list(
        node.attributes.get_ints("pads", [])
    )
