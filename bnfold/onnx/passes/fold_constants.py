"""FoldConstantsPass: evaluate small constant subexpressions exporters leave behind.

Examples: torch's dynamo exporter (``optimize=False``) writes a bias-free Conv's bias as
``Expand(CastLike(0, x), Shape(W))`` and a Linear's weight as ``Transpose(W)``. Nodes are
evaluated with the onnx package's reference evaluator, never hand-written kernels; Expand
(two per such bias) calls the reference's own kernel function directly, without the
evaluator's per-run bookkeeping.

Quantized models keep their quantization. Evaluating ``DequantizeLinear(int8 W, scale, zp)``
would replace every int8 weight by a float copy (a QDQ ResNet-18 grew from 12 to 47 MB) and
throw the calibrated scales away, so two rules hold:

- QuantizeLinear, DequantizeLinear and DynamicQuantizeLinear (default domain or
  ``com.microsoft``) are never evaluated.
- Nor is any node with a constant input of a quantized storage type (an integer or float of
  8 bits or fewer: int8, uint8, int4, float8…; not bool) holding more than
  ``QUANTIZED_MAX_ELEMENTS`` elements, unless every output keeps exactly that dtype.
  Pure data movement (Transpose, Reshape, Slice of int8 W) still folds; anything that widens
  or dequantizes it does not: ``Cast(W_int8 → float)``, ``Mul(Cast(W_int8), scale)`` (a
  hand-written dequantize; its Cast never becomes a constant), ``Cast(→ int32)`` then
  ``Sub(zero point)``. ``Shape``/``Size`` read only metadata and stay foldable. Small
  tensors (scalar or per-channel zero points, a handful of elements) are parameters, not
  weights: folding them loses no calibration and adds a few bytes.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx
import onnx_ir as ir
from onnx.reference import ReferenceEvaluator
from onnx.reference.ops import op_expand

from bnfold.onnx.constants import (
    constant_array,
    is_constant,
    is_onnx_op,
    is_quantize_op,
    is_quantized_dtype,
)
from bnfold.onnx.passes.base import BnfoldPass
from bnfold.onnx.uses import replace_output
from bnfold.onnx.walk import DEFAULT_OPSET

logger = logging.getLogger(__name__)

MAX_ELEMENTS = 16 * 1024 * 1024
QUANTIZED_MAX_ELEMENTS = 16  # a quantized-dtype constant larger than this is a weight
_METADATA_OPS = frozenset({"Shape", "Size"})
_NON_DETERMINISTIC = frozenset(
    {
        "RandomNormal",
        "RandomNormalLike",
        "RandomUniform",
        "RandomUniformLike",
        "Multinomial",
        "Bernoulli",
        "Dropout",
        "BatchNormalization",
        "Constant",
        "If",
        "Loop",
        "Scan",
        "SequenceConstruct",
        "SequenceEmpty",
        "Optional",
    }
)


class FoldConstantsPass(BnfoldPass):
    """Replace nodes whose inputs are all constant by their evaluated outputs."""

    def run(self, model: ir.Model) -> bool:
        modified = False
        for node in self.ctx.all_nodes():
            if node.graph is None or not self.foldable(node):
                continue
            arrays = self.evaluate(node)
            if arrays is None:
                continue
            self.rewrite(node, arrays)
            modified = True
        return modified

    def foldable(self, node: ir.Node) -> bool:
        if not node.outputs or not self.inputs_known(node):
            return False  # the common case, decided first: it runs on every node each round
        if is_quantize_op(node):
            return False  # never dequantize (or requantize) a quantized model's tensors
        if node.domain not in ("", "ai.onnx") or node.op_type in _NON_DETERMINISTIC:
            return False
        if any(out.is_graph_output() for out in node.outputs):
            return False
        return not any(attr.type in _GRAPH_ATTRS for attr in node.attributes.values())

    def inputs_known(self, node: ir.Node) -> bool:
        """``input_known`` for every input, the node's op type tested once."""
        default = node.domain in ("", "ai.onnx")
        if default and node.op_type in ("CastLike", "Shape"):
            return all(self.input_known(node, i) for i in range(len(node.inputs)))
        return all(value is None or is_constant(value) for value in node.inputs)

    def input_known(self, node: ir.Node, index: int) -> bool:
        value = node.inputs[index]
        if value is None:
            return True
        if is_onnx_op(node, "CastLike") and index == 1:
            return value.dtype is not None
        if is_onnx_op(node, "Shape"):
            return _static_shape(value) is not None or is_constant(value)
        return is_constant(value)

    def evaluate(self, node: ir.Node) -> list[np.ndarray] | None:
        """Run one node in the reference evaluator; None when it cannot be evaluated."""
        metadata = _metadata_only(node)
        if metadata is not None:
            return [metadata]
        feeds: dict[str, np.ndarray] = {}
        names: list[str] = []
        for i, value in enumerate(node.inputs):
            if value is None:
                names.append("")
                continue
            name = f"in{i}"
            names.append(name)
            arr = constant_array(value)
            if arr is None and is_onnx_op(node, "CastLike"):
                arr = np.zeros((), dtype=value.dtype.numpy())  # type: ignore[union-attr]
            if arr is None and is_onnx_op(node, "Shape"):
                arr = np.zeros(_static_shape(value), dtype=np.float32)  # type: ignore[arg-type]
            feeds[name] = arr  # type: ignore[assignment]
        if sum(a.size for a in feeds.values()) > MAX_ELEMENTS:
            return None
        kept = _quantized_input_dtype(node, feeds)
        if kept is not None and any(
            out.dtype is not None and out.dtype != kept for out in node.outputs
        ):
            return None  # would widen or dequantize a quantized weight
        try:
            kernel = _DIRECT_KERNELS.get(node.op_type)
            if kernel is not None and node.domain in ("", "ai.onnx") and all(names):
                outputs = [np.asarray(kernel(*(feeds[n] for n in names)))]
            else:
                evaluator = _evaluator(node, names, feeds, self.ctx.model.opset_imports)
                outputs = evaluator.run(None, feeds)
        except Exception as err:  # unsupported op or odd input: simply leave the node
            logger.debug("constant evaluation of %s failed: %s", node.op_type, err)
            return None
        limit = max(sum(a.size for a in feeds.values()), 1 << 16)
        if not all(isinstance(o, np.ndarray) and o.size <= limit for o in outputs):
            return None  # never inflate the model with expanded constants
        if kept is not None and any(ir.DataType.from_numpy(o.dtype) != kept for o in outputs):
            return None
        return list(outputs)

    def rewrite(self, node: ir.Node, arrays: list[np.ndarray]) -> None:
        for out, arr in zip(node.outputs, arrays, strict=False):
            if not out.uses():
                continue
            dtype = out.dtype
            if dtype is not None and np.dtype(dtype.numpy()) != arr.dtype:
                arr = arr.astype(dtype.numpy())
            # np.require keeps a 0-d result 0-d (np.ascontiguousarray would make it 1-d)
            const = self.ctx.new_constant(
                node, np.require(arr, requirements="C"), out.name or "const"
            )
            replace_output(out, const)
        assert node.graph is not None
        node.graph.remove(node, safe=True)


_GRAPH_ATTRS = (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS)
# Reference kernels called without an evaluator: (op, inputs all given) → outputs[0]. Only ops
# with no attributes, one output and a fixed input count (Expand: data, shape, since opset 8).
_DIRECT_KERNELS = {"Expand": op_expand.common_reference_implementation}
_EVALUATORS: dict[tuple[object, ...], ReferenceEvaluator] = {}
_MAX_CACHED = 512


def _evaluator(
    node: ir.Node, names: list[str], feeds: dict[str, np.ndarray], opsets: dict[str, int]
) -> ReferenceEvaluator:
    """A reference evaluator for ``node`` alone, shared by identical nodes.

    Exporters repeat the same small subexpression for every layer (dynamo's computed zero
    bias); building the evaluator dominates its cost. The key holds everything the
    one-node model is made of (op, attributes, which inputs are given and their dtypes,
    output count, opset), so sharing is exact; the model is built only on a miss.
    """
    attrs = tuple(
        (a.name, ir.serde.serialize_attribute(a).SerializeToString(deterministic=True))
        for a in node.attributes.values()
    )
    dtypes = tuple(feeds[n].dtype.name if n else "" for n in names)
    opset = opsets.get("", DEFAULT_OPSET)
    key = (node.op_type, attrs, dtypes, len(node.outputs), opset)
    found = _EVALUATORS.get(key)
    if found is None:
        if len(_EVALUATORS) >= _MAX_CACHED:
            _EVALUATORS.clear()
        proto = _single_node_model(node, names, feeds, opset)
        found = _EVALUATORS[key] = ReferenceEvaluator(proto)
    return found


def _quantized_input_dtype(node: ir.Node, feeds: dict[str, np.ndarray]) -> ir.DataType | None:
    """The quantized dtype of a large constant input (see the module docstring), else None."""
    if is_onnx_op(node, tuple(_METADATA_OPS)):
        return None
    for arr in feeds.values():
        dtype = _quantized_array_dtype(arr)
        if dtype is not None:
            return dtype
    return None


def _quantized_array_dtype(arr: np.ndarray) -> ir.DataType | None:
    """``arr``'s dtype when it is a quantized storage type and ``arr`` is weight-sized."""
    if arr.size <= QUANTIZED_MAX_ELEMENTS:
        return None
    try:
        dtype = ir.DataType.from_numpy(arr.dtype)
    except TypeError:
        return None
    return dtype if is_quantized_dtype(dtype) else None


def _metadata_only(node: ir.Node) -> np.ndarray | None:
    """Shape of a static tensor, or CastLike of a constant: answers that read no kernel."""
    if is_onnx_op(node, "Shape") and node.inputs[0] is not None:
        shape = _static_shape(node.inputs[0])
        if shape is None:
            return None
        lo = node.attributes.get_int("start", 0)
        hi = node.attributes.get_int("end", len(shape))
        return np.array(shape[slice(lo, hi)], dtype=np.int64)
    if is_onnx_op(node, "CastLike") and len(node.inputs) == 2:
        src, like = node.inputs
        arr = constant_array(src) if src is not None else None
        if arr is None or like is None or like.dtype is None:
            return None
        if _quantized_array_dtype(arr) not in (None, like.dtype):
            return None  # the general path refuses it
        try:
            return np.asarray(arr).astype(like.dtype.numpy())
        except (TypeError, ValueError):
            return None
    return None


def _static_shape(value: ir.Value) -> tuple[int, ...] | None:
    shape = value.shape
    if shape is None or not all(isinstance(d, int) for d in shape):
        return None
    return tuple(int(d) for d in shape)  # type: ignore[arg-type]


def _single_node_model(
    node: ir.Node, names: list[str], feeds: dict[str, np.ndarray], opset: int
) -> onnx.ModelProto:
    attrs = {a.name: ir.serde.serialize_attribute(a) for a in node.attributes.values()}
    proto_node = onnx.helper.make_node(
        node.op_type, names, [f"out{i}" for i in range(len(node.outputs))]
    )
    proto_node.attribute.extend(attrs.values())
    inputs = [
        onnx.helper.make_tensor_value_info(
            n, onnx.helper.np_dtype_to_tensor_dtype(feeds[n].dtype), None
        )
        for n in names
        if n
    ]
    outputs = [onnx.helper.make_empty_tensor_value_info(o) for o in proto_node.output]
    graph = onnx.helper.make_graph([proto_node], "eval", inputs, outputs)
    imports = [onnx.helper.make_opsetid("", opset)]
    return onnx.helper.make_model(graph, opset_imports=imports)
