"""Reading a ``torch.export.ExportedProgram``: its BN spellings, layers and constant tensors.

Every way BatchNorm reaches an exported graph (before and after ``run_decompositions()``)
is described once in ``BN_OPS``; producers (convolutions, linear, addmm, mm) in
``layer_of``. Tensors behind placeholders are looked up through the graph signature
(parameters, buffers, lifted constants) or ``get_attr``.
"""

from __future__ import annotations

import dataclasses
import operator
from typing import Any

import torch
from torch import fx
from torch.export import ExportedProgram
from torch.export.graph_signature import InputKind

aten = torch.ops.aten


@dataclasses.dataclass(frozen=True)
class BnOp:
    """Argument positions of one BN spelling (``training``: an index or a fixed bool)."""

    training: int | bool
    eps: int
    tuple_output: bool


BN_OPS: dict[Any, BnOp] = {
    aten.batch_norm.default: BnOp(training=5, eps=7, tuple_output=False),
    aten._native_batch_norm_legit_no_training.default: BnOp(False, 6, True),
    aten.native_batch_norm.default: BnOp(training=5, eps=7, tuple_output=True),
    aten._native_batch_norm_legit_functional.default: BnOp(training=5, eps=7, tuple_output=True),
    aten._native_batch_norm_legit.default: BnOp(training=5, eps=7, tuple_output=True),
    aten._batch_norm_with_update.default: BnOp(True, 6, True),
    aten._batch_norm_no_update.default: BnOp(False, 6, True),
}

CONV_OPS = {
    aten.conv1d.default,
    aten.conv2d.default,
    aten.conv3d.default,
    aten.conv1d.padding,
    aten.conv2d.padding,
    aten.conv3d.padding,
}
CONV_T_OPS = {
    aten.conv_transpose1d.default,
    aten.conv_transpose2d.input,
    aten.conv_transpose3d.input,
}
TRANSPOSES = {aten.permute.default, aten.t.default, aten.transpose.int}


@dataclasses.dataclass
class BnNode:
    """One BN call: its node, the tensor it normalises and how it is spelled."""

    node: fx.Node
    op: BnOp

    @property
    def kind(self) -> str:
        return f"aten.{self.node.target.__name__.split('.')[0]}"  # type: ignore[union-attr]

    @property
    def source(self) -> fx.Node:
        return self.node.args[0]  # type: ignore[return-value]

    def arg(self, i: int) -> Any:
        return self.node.args[i] if i < len(self.node.args) else None

    @property
    def training(self) -> bool:
        if isinstance(self.op.training, bool):
            return self.op.training
        return bool(self.arg(self.op.training))

    @property
    def eps(self) -> float:
        return float(self.arg(self.op.eps))

    def output_users(self) -> tuple[list[fx.Node], list[fx.Node]]:
        """(users of the normalised output, users of any other output)."""
        if not self.op.tuple_output:
            return list(self.node.users), []
        main, other = [], []
        for user in self.node.users:
            if user.target is operator.getitem and user.args[1] == 0:
                main.append(user)
            else:
                other.append(user)
        return main, other


def batchnorms(graph: fx.Graph) -> list[BnNode]:
    """Every BN call in graph order."""
    return [BnNode(n, BN_OPS[n.target]) for n in graph.nodes if n.target in BN_OPS]


class Program:
    """Lookups on one ExportedProgram: which placeholder holds which tensor."""

    def __init__(self, ep: ExportedProgram) -> None:
        self.ep = ep
        self.specs = {
            s.arg.name: s for s in ep.graph_signature.input_specs if hasattr(s.arg, "name")
        }
        self.mutated = set(ep.graph_signature.buffers_to_mutate.values())
        self.mutated |= set(ep.graph_signature.user_inputs_to_mutate.values())

    def tensor(self, node: Any, *, mutated_ok: bool = False) -> torch.Tensor | None:
        """The constant tensor behind ``node`` (parameter, buffer, lifted constant), or None.

        A buffer the program updates is not constant; ``mutated_ok`` reads it anyway (a
        training BN's own running statistics, read as inference).
        """
        if not isinstance(node, fx.Node):
            return None
        if node.op == "get_attr":
            value = getattr(self.ep.graph_module, str(node.target), None)
            return value if isinstance(value, torch.Tensor) else None
        spec = self.specs.get(node.name) if node.op == "placeholder" else None
        if spec is None or spec.target is None or (spec.target in self.mutated and not mutated_ok):
            return None
        if spec.kind in (InputKind.PARAMETER, InputKind.BUFFER):
            if spec.kind == InputKind.BUFFER and not spec.persistent:
                return self.ep.constants.get(spec.target)
            return self.ep.state_dict.get(spec.target)
        if spec.kind == InputKind.CONSTANT_TENSOR:
            value = self.ep.constants.get(spec.target)
            return value if isinstance(value, torch.Tensor) else None
        return None

    def target(self, node: fx.Node) -> str | None:
        """The state-dict / constant name behind a placeholder."""
        spec = self.specs.get(node.name)
        return None if spec is None else spec.target

    def is_user_output(self, node: fx.Node) -> bool:
        out = self.ep.graph_module.graph.output_node()
        return node in out.all_input_nodes


@dataclasses.dataclass
class Layer:
    """A layer whose output channels can absorb a BN: where its weight and bias come from."""

    node: fx.Node
    kind: str  # "Conv" | "ConvTranspose" | "Linear" | "Addmm" | "Mm" | "Bmm"
    weight: fx.Node  # the placeholder holding the weight
    bias: fx.Node | None
    groups: int = 1
    transposed_weight: bool = False  # Addmm/Mm/Bmm: the weight reaches mat2 through a transpose
    beta: float = 1.0  # Addmm's bias multiplier


def layer_of(node: fx.Node) -> Layer | str:
    """Describe ``node`` as a foldable producer, or say why it is not one."""
    target, args = node.target, node.args
    if target in CONV_OPS:
        groups = int(args[6]) if len(args) > 6 else int(node.kwargs.get("groups", 1))
        return Layer(node, "Conv", args[1], _opt(args, 2), groups)
    if target in CONV_T_OPS:
        groups = int(args[6]) if len(args) > 6 else int(node.kwargs.get("groups", 1))
        return Layer(node, "ConvTranspose", args[1], _opt(args, 2), groups)
    if target == aten.convolution.default:
        kind = "ConvTranspose" if args[6] else "Conv"
        return Layer(node, kind, args[1], args[2], int(args[8]))
    if target == aten.linear.default:
        return Layer(node, "Linear", args[1], _opt(args, 2))
    if target in (aten.addmm.default, aten.mm.default):
        mat2 = args[2] if target == aten.addmm.default else args[1]
        weight, transposed = _through_transpose(mat2)
        if target == aten.mm.default:
            return Layer(node, "Mm", weight, None, transposed_weight=transposed)
        if node.kwargs.get("alpha", 1) != 1:
            return "addmm with alpha ≠ 1"
        beta = float(node.kwargs.get("beta", 1))
        return Layer(node, "Addmm", weight, args[0], transposed_weight=transposed, beta=beta)
    if target == aten.bmm.default:  # a decomposed 3-D linear: bmm(x, view(expand(Wᵀ)))
        matrix = _batch_broadcast_source(args[1])
        if matrix is None:
            return "bmm of two computed tensors"
        weight, transposed = _through_transpose(matrix)
        return Layer(node, "Bmm", weight, None, transposed_weight=transposed)
    return f"the BN input comes from {_op_name(node)}, not a convolution or linear layer"


def _opt(args: tuple[Any, ...], i: int) -> Any:
    return args[i] if len(args) > i else None


def _through_transpose(node: Any) -> tuple[Any, bool]:
    """(the tensor before a 2-D transpose, True) or (node, False)."""
    if isinstance(node, fx.Node) and node.target in TRANSPOSES and len(node.users) >= 1:
        if node.target == aten.permute.default and list(node.args[1]) != [1, 0]:
            return node, False
        if node.target == aten.transpose.int and sorted(int(a) % 2 for a in node.args[1:3]) != [
            0,
            1,
        ]:
            return node, False
        return node.args[0], True
    return node, False


BMM_VIEWS = {aten.view.default, aten.reshape.default, aten._unsafe_view.default}


def _batch_broadcast_source(node: Any) -> fx.Node | None:
    """M when ``node`` is ``view(expand(M, [*b, K, N]), [b', K, N])`` of a 2-D M: the same
    matrix for every batch (how ``run_decompositions`` spells a linear over a 3-D input)."""
    if not isinstance(node, fx.Node) or node.target not in BMM_VIEWS:
        return None
    expand = node.args[0]
    if not isinstance(expand, fx.Node) or expand.target != aten.expand.default:
        return None
    matrix = expand.args[0]
    shapes = [getattr(n, "meta", {}).get("val") for n in (node, expand, matrix)]
    if not all(isinstance(v, torch.Tensor) for v in shapes):
        return None
    viewed, expanded, source = (tuple(v.shape) for v in shapes)  # type: ignore[union-attr]
    if len(source) != 2 or expanded[-2:] != source or viewed[-2:] != source:
        return None
    return matrix  # type: ignore[return-value]


def _op_name(node: fx.Node) -> str:
    if node.op == "call_function":
        return str(getattr(node.target, "__name__", node.target))
    return f"a {node.op} ({node.name})"
