"""FoldContext: options, unique names and the outcome record shared by all passes."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable, Iterator

import numpy as np
import onnx_ir as ir

from bnfold.keep import KEPT_REASON, KeepList, unused_warning
from bnfold.onnx.constants import is_onnx_op
from bnfold.onnx.walk import walk_graphs
from bnfold.report import FoldReport, ReportEntry

logger = logging.getLogger(__name__)

TRACKED_OPS = ("BatchNormalization", "Dropout")


@dataclasses.dataclass
class FoldOptions:
    """User-facing switches of the ONNX pipeline."""

    allow_graph_input_params: bool = False  # fold parameters that are overridable graph inputs
    assume_eval: bool = False  # treat training-mode BN/Dropout as inference
    rewrite_standalone: bool = False  # BN that folds nowhere → Mul/Add (slower in ORT CPU)
    max_iterations: int = 20
    requantize: bool = False  # fold BN between Q/DQ pairs, dropping the inner pair (not exact)
    quantize_bias: bool = False  # re-quantize folded biases to int32 (not bit-exact)
    keep: KeepList = dataclasses.field(default_factory=KeepList)  # nodes left as they are


@dataclasses.dataclass
class _Tracked:
    node: ir.Node
    name: str
    kind: str
    scope: str
    status: str = "left"
    into: str | None = None
    pattern: str | None = None
    reason: str | None = None


class FoldContext:
    """Per-run state: options, a name registry and what happened to each BN/Dropout."""

    def __init__(self, model: ir.Model, options: FoldOptions | None = None) -> None:
        self.model = model
        self.options = options or FoldOptions()
        self.report = FoldReport()
        self._tracked: dict[int, _Tracked] = {}
        self._names: set[str] = set()
        self._suffix: dict[str, int] = {}  # next suffix per base: keeps unique_name O(1)
        self._function_graphs: set[int] = set()
        self._graphs: list[tuple[ir.Graph | ir.Function, str]] | None = None
        # BN node id → (node, eps, option, parameter tensors), what they read as (batchnorm.py)
        self.bn_cache: dict[int, tuple[tuple[object, ...], object]] = {}
        self._scan()
        self._mark_kept()
        if model.ir_version < 4 and not self.options.allow_graph_input_params:
            # IR 3 *requires* every initializer to be listed as a graph input: that is the
            # format, not a request to override weights at run time.
            self.options = dataclasses.replace(self.options, allow_graph_input_params=True)
            self.report.warn(
                f"IR version {model.ir_version}: initializers listed as graph inputs (required "
                "by that format) are treated as constants"
            )

    # -- keep-lists -------------------------------------------------------------------
    def kept(self, node: ir.Node) -> bool:
        """True for a BN/Dropout the user asked to keep: no pass may fold or remove it.

        Every pass picks its BN through ``batchnorm.frozen_batchnorms`` (or checks this
        directly), so the keep-list is honoured in one place.
        """
        tracked = self._tracked.get(id(node))
        return tracked is not None and tracked.status == "kept"

    def _mark_kept(self) -> None:
        keep = self.options.keep
        if not keep:
            return
        names = []
        for t in self._tracked.values():
            aliases = _aliases(t)
            names.extend(aliases)
            if keep.keeps(aliases, is_dropout=t.kind == "Dropout"):
                t.status, t.reason = "kept", KEPT_REASON
        unused = keep.unused(names)
        if unused:
            self.report.warn(unused_warning(unused))

    # -- graph walking ---------------------------------------------------------------
    def all_graphs(self) -> Iterator[tuple[ir.Graph | ir.Function, str]]:
        """Every graph with nodes: main graph, subgraphs, functions (and their subgraphs).

        Computed once per run: passes never create or delete subgraphs.
        """
        if self._graphs is None:
            self._graphs = list(walk_graphs(self.model))
        return iter(self._graphs)

    def all_nodes(self) -> list[ir.Node]:
        """A snapshot list of every node (safe to mutate the graphs while iterating it)."""
        nodes: list[ir.Node] = []
        for graph, _ in self.all_graphs():
            nodes.extend(graph)
        return nodes

    def in_function(self, node: ir.Node) -> bool:
        """True when the node lives in a model-local function body (no initializers there)."""
        graph = node.graph
        return graph is not None and id(graph) in self._function_graphs

    def _scan(self) -> None:
        for func in self.model.functions.values():
            self._function_graphs.add(id(func))
            self._function_graphs.add(id(func.graph))
        for graph, scope in self.all_graphs():
            for value in _graph_values(graph):
                if value.name:
                    self._names.add(value.name)
            for node in graph:
                if is_onnx_op(node, TRACKED_OPS):
                    self._tracked[id(node)] = _Tracked(
                        node, display_name(node), node.op_type, scope
                    )

    # -- names and constants ---------------------------------------------------------
    def unique_name(self, base: str) -> str:
        """A value name not used anywhere in the model, derived from ``base``."""
        base = base or "bnfold"
        name, i = base, self._suffix.get(base, 0)
        while name in self._names:
            i += 1
            name = f"{base}_{i}"
        self._suffix[base] = i
        self._names.add(name)
        return name

    def new_constant(
        self, near: ir.Node, array: np.ndarray, base: str, dtype: ir.DataType | None = None
    ) -> ir.Value:
        """A fresh constant in ``near``'s graph: an initializer, or a Constant node in functions."""
        name = self.unique_name(base)
        tensor = ir.Tensor(array, dtype=dtype, name=name)
        graph = near.graph
        assert graph is not None
        if self.in_function(near):
            const = ir.node(
                "Constant", inputs=[], attributes={"value": tensor}, name=f"{name}_const"
            )
            const.outputs[0].name = name
            const.outputs[0].type = ir.TensorType(tensor.dtype)
            const.outputs[0].shape = ir.Shape(array.shape)
            graph.insert_before(near, const)
            return const.outputs[0]
        value = ir.Value(
            name=name,
            shape=ir.Shape(array.shape),
            type=ir.TensorType(tensor.dtype),
            const_value=tensor,
        )
        graph.register_initializer(value)  # type: ignore[union-attr]
        if self.model.ir_version < 4:  # IR 3 requires every initializer to be a graph input
            self.model.ir_version = 4
        return value

    # -- outcome record --------------------------------------------------------------
    def skip(self, node: ir.Node, reason: str) -> None:
        """Record why a tracked node was not folded (the latest reason wins)."""
        tracked = self._tracked.get(id(node))
        if tracked is not None and tracked.status == "left":
            tracked.reason = reason
            logger.debug("skip %s: %s", tracked.name, reason)

    def reason_of(self, node: ir.Node) -> str | None:
        """The reason (or note) currently recorded for a tracked node."""
        tracked = self._tracked.get(id(node))
        return tracked.reason if tracked is not None else None

    def done(
        self,
        node: ir.Node,
        status: str,
        *,
        into: str | None = None,
        pattern: str | None = None,
        note: str | None = None,
    ) -> None:
        """Record that a tracked node was folded / removed / rewritten."""
        tracked = self._tracked.get(id(node))
        if tracked is None:
            return
        if tracked.status == "kept":  # a pass that forgot ctx.kept(): fail loudly in tests
            raise AssertionError(f"{tracked.name} is kept by request but a pass changed it")
        tracked.status, tracked.into, tracked.pattern = status, into, pattern
        tracked.reason = note

    def build_report(self) -> FoldReport:
        """Materialise the report: one entry per tracked BN/Dropout, in model order."""
        report = self.report
        report.entries = []
        for t in self._tracked.values():
            status = t.status
            reason = t.reason
            if status == "left" and t.node.graph is None:
                continue  # replaced by a tracked successor node
            if status == "left" and not reason:
                reason = default_reason(t.node)
            report.add(
                ReportEntry(
                    name=t.name,
                    kind=t.kind,
                    status=status,  # type: ignore[arg-type]
                    into=t.into,
                    pattern=t.pattern,
                    reason=reason,
                    scope=t.scope,
                )
            )
        return report


def _aliases(t: _Tracked) -> list[str]:
    """Names a keep pattern may match: the node name and, in a subgraph, ``scope/name``."""
    names = [t.name]
    if t.scope:
        names.append(f"{t.scope}/{t.name}")
    return names


def display_name(node: ir.Node) -> str:
    """The node's name, or a stable stand-in built from its first output."""
    if node.name:
        return node.name
    out = node.outputs[0].name if node.outputs else "?"
    return f"{node.op_type}({out})"


def default_reason(node: ir.Node) -> str:
    """Reason for a node no pass tried to fold."""
    if node.op_type == "Dropout":
        return "Dropout could not be removed"
    x = node.inputs[0] if node.inputs else None
    if x is None or x.producer() is None:
        return "input comes straight from a graph input; nothing to fold into"
    return f"producer {x.producer().op_type} is not a foldable linear layer"


def _graph_values(graph: ir.Graph | ir.Function) -> Iterable[ir.Value]:
    yield from graph.inputs
    if isinstance(graph, ir.Graph):
        yield from graph.initializers.values()
    for node in graph:
        yield from node.outputs
