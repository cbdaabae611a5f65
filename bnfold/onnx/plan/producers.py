"""Planning a per-channel affine map into whatever produces a value, through layout and Concat.

``plan_output_affine(ctx, value, axis, s, t)`` answers: can the graph be changed so that
``value`` itself carries ``s·value + t`` (per channel along ``axis``)? It walks back through
layout ops (mapping the channel axis, see ``layout.py``) and channel Concats (splitting s and
t per input) to linear layers, checks everything first and returns a ``Plan`` whose
``apply()`` mutates the graph, or the reason it cannot.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Collection
from typing import Any

import numpy as np
import onnx_ir as ir

from bnfold import foldmath, patterns
from bnfold.onnx.constants import constant_array, is_onnx_op, is_quantize_op
from bnfold.onnx.context import FoldContext, display_name
from bnfold.onnx.plan import layout
from bnfold.onnx.plan.layers import PRODUCER_OPS, plan_layer_output
from bnfold.onnx.plan.plan import Plan, combined
from bnfold.onnx.plan.weights import matmul_bias_add
from bnfold.onnx.uses import content_uses, is_exclusive, replace_output

MAX_DEPTH = 12


def exclusive_reason(value: ir.Value) -> str | None:
    """None when ``value`` has exactly one consumer and is not a graph output."""
    if value.is_graph_output():
        return f"'{value.name}' is also a graph output"
    uses = content_uses(value)
    if len(uses) != 1:
        return f"'{value.name}' has {len(uses)} consumers ({op_counts(uses)})"
    return None


def op_counts(uses: Collection[Any]) -> str:
    """``"Concat ×3, Relu"``: the op types of the consumers, with counts."""
    counts = Counter(u.node.op_type for u in uses)
    return ", ".join(op if n == 1 else f"{op} ×{n}" for op, n in sorted(counts.items()))


def plan_output_affine(
    ctx: FoldContext,
    value: ir.Value,
    axis: int,
    scale: np.ndarray,
    shift: np.ndarray,
    depth: int = 0,
) -> Plan | str:
    """Plan making ``value`` carry ``s·value + t`` along ``axis`` by changing its producers."""
    if depth > MAX_DEPTH:
        return "too many layout/Concat ops between the layer and the BN"
    producer = value.producer()
    if producer is None:
        kind = "an initializer" if value.is_initializer() else "a graph input"
        return f"'{value.name}' is {kind}; there is no layer to fold into"
    if is_quantize_op(producer):
        if ctx.options.requantize and is_onnx_op(producer, "DequantizeLinear"):
            return _through_requantize(ctx, value, producer, axis, scale, shift, depth)
        name = f"{producer.op_type} '{display_name(producer)}'"
        return (
            f"quantized between the layer and the BN ({name}); fold before quantizing, "
            "or use --requantize"
        )
    pair = None
    if not is_onnx_op(producer, (*PRODUCER_OPS, "Concat")) and not layout.is_layout_op(producer):
        pair = matmul_bias_add(ctx, value)
        if pair is None and not is_onnx_op(producer, "Add"):
            return f"{producer.op_type} '{display_name(producer)}' is not a linear layer"
    reason = exclusive_reason(value)
    if reason is not None:
        return f"{producer.op_type} '{display_name(producer)}' output {reason}"
    if pair is None and is_onnx_op(producer, "Add"):
        return _through_add(ctx, producer, axis, scale, shift, depth)
    if layout.is_layout_op(producer):
        return _through_layout(ctx, producer, axis, scale, shift, depth)
    if is_onnx_op(producer, "Concat"):
        return _through_concat(ctx, producer, axis, scale, shift, depth)
    layer, bias_add = pair if pair is not None else (producer, None)
    if bias_add is not None:
        reason = exclusive_reason(layer.outputs[0])
        if reason is not None:
            return f"MatMul '{display_name(layer)}' output {reason}"
    plan = plan_layer_output(ctx, layer, scale, shift, axis, bias_add)
    if isinstance(plan, str):
        return plan
    return Plan(_rewired(value, plan), plan.into, plan.path)


def _rewired(value: ir.Value, plan: Plan) -> Callable[[], None]:
    """Apply ``plan`` and route ``value``'s single consumer to the value that now carries it."""

    def apply() -> None:
        user, index = content_uses(value)[0]
        new = plan.apply()
        if new is not None and new is not value:
            user.replace_input_with(index, new)

    return apply


def _through_layout(
    ctx: FoldContext,
    node: ir.Node,
    axis: int,
    scale: np.ndarray,
    shift: np.ndarray,
    depth: int,
) -> Plan | str:
    source = node.inputs[0]
    if source is None:
        return f"{node.op_type} '{display_name(node)}' has no data input"
    mappings = layout.map_backward(node, axis, scale.shape[0])
    if isinstance(mappings, str):
        return mappings
    reasons: list[str] = []
    for new_axis, idx in mappings:
        plan = plan_output_affine(ctx, source, new_axis, scale[idx], shift[idx], depth + 1)
        if isinstance(plan, Plan):
            plan.path.append(node.op_type)
            return plan
        reasons.append(plan)
    return f"through {node.op_type} '{display_name(node)}': {reasons[0]}"


def concat_axis(node: ir.Node) -> int | None:
    """The Concat's non-negative axis, when its rank is known."""
    attr = node.attributes.get("axis")
    if attr is None:
        return None
    axis = attr.as_int()
    dims = layout.static_dims(node.outputs[0])
    if axis < 0:
        if dims is None:
            return None
        axis += len(dims)
    return axis


def _through_concat(
    ctx: FoldContext,
    node: ir.Node,
    axis: int,
    scale: np.ndarray,
    shift: np.ndarray,
    depth: int,
) -> Plan | str:
    name = f"Concat '{display_name(node)}'"
    if concat_axis(node) != axis:
        return f"{name} joins axis {concat_axis(node)}, not the channel axis {axis}"
    sizes: list[int] = []
    for i, inp in enumerate(node.inputs):
        dims = layout.static_dims(inp)
        if inp is None or dims is None or axis >= len(dims) or dims[axis] is None:
            return f"{name} input {i} has an unknown channel count"
        sizes.append(int(dims[axis]))  # type: ignore[arg-type]
    parts = patterns.split_concat(scale, shift, sizes)
    if isinstance(parts, str):
        return f"{name}: {parts}"
    plans: list[Plan] = []
    for i, (inp, (s_i, t_i)) in enumerate(zip(node.inputs, parts, strict=True)):
        assert inp is not None
        plan = plan_output_affine(ctx, inp, axis, s_i, t_i, depth + 1)
        if isinstance(plan, str):
            return f"{name} input {i}: {plan}"
        plans.append(plan)
    return combined(plans, "Concat")


def drop_batchnorm(ctx: FoldContext, node: ir.Node, plan: Plan, pattern: str) -> None:
    """Apply ``plan`` and remove the BN, routing its output to its input; record the fold."""
    plan.apply()
    x = node.inputs[0]
    assert x is not None and node.graph is not None
    replace_output(node.outputs[0], x)
    node.graph.remove(node, safe=True)
    ctx.done(node, "folded", into=", ".join(plan.into), pattern=pattern)


def _through_add(
    ctx: FoldContext,
    node: ir.Node,
    axis: int,
    scale: np.ndarray,
    shift: np.ndarray,
    depth: int,
) -> Plan | str:
    """s·(a + b) + t = (s·a + t) + s·b: scale every term, the first one also takes t."""
    name = f"Add '{display_name(node)}'"
    out = node.outputs[0]
    plans: list[Plan] = []
    if len(node.inputs) != 2:
        return f"{name} is malformed"
    for i, (term, (_, term_shift)) in enumerate(
        zip(node.inputs, patterns.split_sum(scale, shift, 2), strict=True)
    ):
        if term is None:
            return f"{name} is malformed"
        const = constant_array(term, allow_graph_inputs=ctx.options.allow_graph_input_params)
        if const is not None:
            plan = _scale_constant_term(ctx, node, i, const, axis, scale, term_shift)
        elif out.shape is None or term.shape != out.shape:
            plan = f"'{term.name}' is broadcast (or its shape is unknown)"
        else:
            plan = plan_output_affine(ctx, term, axis, scale, term_shift, depth + 1)
        if isinstance(plan, str):
            why = f"term {i}: {plan}"
            return f"{name} is not a linear layer and its terms cannot absorb the BN: {why}"
        plans.append(plan)

    return combined(plans, "Add")


def _scale_constant_term(
    ctx: FoldContext,
    node: ir.Node,
    index: int,
    const: np.ndarray,
    axis: int,
    scale: np.ndarray,
    shift: np.ndarray,
) -> Plan | str:
    dims = layout.static_dims(node.outputs[0])
    if dims is None or const.ndim > len(dims):
        return "a constant term of unknown rank"
    if not (np.issubdtype(const.dtype, np.floating) or const.dtype.name == "bfloat16"):
        return f"constant term of dtype {const.dtype}"
    s_b = foldmath.broadcast_along(scale, len(dims), axis)
    t_b = foldmath.broadcast_along(shift, len(dims), axis)
    folded = const.astype(np.float64) * s_b + t_b
    new, reason = foldmath.cast_back(folded, const.dtype)
    if new is None:
        return f"constant term: {reason}"
    value = node.inputs[index]
    dtype = value.const_value.dtype if value is not None and value.const_value else None

    def apply() -> None:
        new_val = ctx.new_constant(node, new, f"{display_name(node)}.term_bnfold", dtype)
        node.replace_input_with(index, new_val)

    return Plan(apply, [], ["Add"])


def _through_requantize(
    ctx: FoldContext,
    value: ir.Value,
    dq: ir.Node,
    axis: int,
    scale: np.ndarray,
    shift: np.ndarray,
    depth: int,
) -> Plan | str:
    """``layer → Q → DQ → BN``: fold into the layer and drop the inner Q/DQ pair (not exact).

    The BN then reads the layer directly; the pair after the BN keeps the quantization.
    """
    name = f"DequantizeLinear '{display_name(dq)}'"
    reason = exclusive_reason(value)
    if reason is not None:
        return f"{name} output {reason}"
    quantized = dq.inputs[0]
    q = quantized.producer() if quantized is not None else None
    if q is None or not is_onnx_op(q, "QuantizeLinear") or not is_exclusive(quantized):
        return f"{name} does not dequantize a QuantizeLinear used only by it"
    source = q.inputs[0]
    assert source is not None
    plan = plan_output_affine(ctx, source, axis, scale, shift, depth + 1)
    if isinstance(plan, str):
        return f"through {name}: {plan}"

    def apply() -> None:
        before = str(source.name)  # the layer's output as the original names it
        plan.apply()
        carrying = q.inputs[0]  # the layer's output, now carrying the map
        assert carrying is not None
        user, index = content_uses(value)[0]
        user.replace_input_with(index, carrying)  # the inner Q/DQ pair is left unused
        ctx.report.dropped_roundings.append((str(value.name), before))

    return Plan(apply, plan.into, [*plan.path, "QuantizeLinear", "DequantizeLinear"])
