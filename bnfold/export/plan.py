"""Decide, per BN call of an exported program, whether and how it folds (no graph edits).

The rules are the shared ones: ``patterns.bn_training_reason`` for training mode,
``foldmath.check_bn_params`` / ``bn_scale_shift`` for the parameters, ``foldmath``'s producer
folds for the new weights and ``patterns.split_concat`` for a BN after a channel ``aten.cat``.
A plan names nodes, so it can be applied to any copy of the same program.
"""

from __future__ import annotations

import dataclasses
import operator

import numpy as np
import torch
from torch import fx
from torch.export import ExportedProgram

from bnfold import foldmath, patterns
from bnfold.export.program import BnNode, Layer, Program, batchnorms, layer_of
from bnfold.report import ReportEntry
from bnfold.torch.layers import _cast  # float64 → dtype with foldmath's refusals

aten = torch.ops.aten
ALREADY = "already absorbs another BN (folded in a later round when that one stays)"
MUTATION_OUTPUTS = (3, 4)  # _native_batch_norm_legit_functional's new running mean / var


@dataclasses.dataclass
class LayerFold:
    """New weight and bias for one producer (weight in its placeholder's layout)."""

    layer: str  # node name of the producer
    kind: str
    weight: torch.Tensor
    bias: torch.Tensor
    weight_target: str | None  # the original weight's state-dict name, for naming


@dataclasses.dataclass
class FoldPlan:
    """One BN folded into one or more producers."""

    bn: str  # node name of the BN call
    kind: str
    pattern: str
    folds: list[LayerFold]
    replaces: tuple[str, str] | None = None  # identity branch: (sum node, its other term)

    @property
    def into(self) -> str:
        return ", ".join(f.layer for f in self.folds)

    def entry(self) -> ReportEntry:
        return ReportEntry(self.bn, self.kind, "folded", into=self.into, pattern=self.pattern)


def plan_program(
    ep: ExportedProgram, *, assume_eval: bool = False
) -> tuple[list[FoldPlan], list[ReportEntry]]:
    """Plans for every foldable BN, and report entries for the rest."""
    program = Program(ep)
    plans: list[FoldPlan] = []
    left: list[ReportEntry] = []
    claimed: set[str] = set()  # each layer absorbs one BN per run (weights planned once)
    for bn in batchnorms(ep.graph_module.graph):
        plan = plan_bn(program, bn, assume_eval)
        if not isinstance(plan, str) and claimed & {f.layer for f in plan.folds}:
            plan = f"{plan.into} {ALREADY}"
        if isinstance(plan, str):
            left.append(ReportEntry(bn.node.name, bn.kind, "left", reason=plan))
        else:
            claimed |= {f.layer for f in plan.folds}
            plans.append(plan)
    return plans, left


def plan_bn(program: Program, bn: BnNode, assume_eval: bool) -> FoldPlan | str:
    """How this BN folds, or why it does not."""
    why = _bn_reason(program, bn, assume_eval)
    if why:
        return why
    params = _bn_params(program, bn)
    if isinstance(params, str):
        return params
    gamma, beta, mean, var = params
    why = foldmath.check_bn_params(gamma, beta, mean, var, bn.eps)
    if why:
        return why
    scale, shift = foldmath.bn_scale_shift(gamma, beta, mean, var, bn.eps)
    producer = _plan_producer(program, bn, scale, shift)
    if not isinstance(producer, str):
        return producer
    from bnfold.export.plan_consumer import plan_consumer  # it imports this module

    main, _ = bn.output_users()
    bn_out = main[0] if bn.op.tuple_output and len(main) == 1 else bn.node
    single = len(main) == 1 or not bn.op.tuple_output  # one getitem of the output, or none
    consumer = plan_consumer(program, bn_out, scale, shift) if single else "-"
    if not isinstance(consumer, str):
        kinds = "/".join(sorted({f.kind for f in consumer}))
        return FoldPlan(bn.node.name, bn.kind, f"BN→{kinds} (consumer)", consumer)
    from bnfold.export.plan_identity import plan_identity

    identity = plan_identity(program, bn_out, bn.source, scale, shift) if single else "-"
    if isinstance(identity, str):
        return producer
    fold, add, rest = identity
    pattern = "Conv+BN(identity)→Conv (re-param)"
    return FoldPlan(bn.node.name, bn.kind, pattern, [fold], replaces=(add, rest))


def _plan_producer(
    program: Program, bn: BnNode, scale: np.ndarray, shift: np.ndarray
) -> FoldPlan | str:
    source = bn.source
    if not isinstance(source, fx.Node) or source.op != "call_function":
        return "the BN input is not computed by a layer"
    if len(value_users(source)) != 1 or program.is_user_output(source):
        return f"the BN input {source.name} has other users"
    source = _through_copies(program, source)
    if isinstance(source, str):
        return source
    if source.target == aten.cat.default:
        return _plan_concat(program, bn, source, scale, shift)
    if source.target == aten.add.Tensor and not source.kwargs:
        return _plan_sum(program, bn, source, scale, shift)
    layer = layer_of(source)
    if isinstance(layer, str):
        return layer
    why = _channel_axis_reason(layer, bn.source, scale.shape[0])
    if why:
        return why
    fold = fold_layer(program, layer, scale, shift)
    if isinstance(fold, str):
        return fold
    return FoldPlan(bn.node.name, bn.kind, f"{layer.kind}→BN", [fold])


COPIES = {aten.clone.default, aten.alias.default}
MATRIX_KINDS = ("Addmm", "Mm", "Bmm")  # weight as mat2: (in, out), or (out, in) transposed
SHAPE_READERS = {aten.reshape_as.default, aten.view_as.default, aten.expand_as.default}
SIZE_READERS = {aten.sym_size.int, aten.sym_stride.int, aten.sym_numel.default}


def value_users(node: fx.Node) -> list[fx.Node]:
    """Users that read ``node``'s values; ``reshape_as(y, node)`` and ``sym_size`` read only
    its shape, which a fold keeps."""
    out = []
    for user in node.users:
        if user.target in SIZE_READERS:
            continue
        if user.target in SHAPE_READERS and user.args[0] is not node:
            continue
        out.append(user)
    return out


RESHAPES = {
    aten.view.default,
    aten.reshape.default,
    aten._unsafe_view.default,
    aten.flatten.using_ints,
    aten.unsqueeze.default,
    aten.squeeze.dim,
    aten.squeeze.dims,
}


def _channel_axis_reason(layer: Layer, bn_input: fx.Node, channels: int) -> str | None:
    """Why the layer's output-channel axis is not BN's axis 1 (through any reshapes)."""
    out, seen = layer.node.meta.get("val"), bn_input.meta.get("val")
    if out is None or seen is None:
        return f"the shapes between {layer.node.name} and the BN are unknown"
    known, new = _dims(out), _dims(seen)
    axis = 1 if layer.kind in ("Conv", "ConvTranspose") else len(known) - 1
    if patterns.same_channel_axis(known, axis, channels, new, 1):
        return None
    return (
        f"{layer.node.name}'s channels (axis {axis} of {_shape(known)}) are not the BN's "
        f"channel axis 1 of {_shape(new)}"
    )


def _dims(val: torch.Tensor) -> list[int | None]:
    return [d if isinstance(d, int) else None for d in val.shape]


def _shape(dims: list[int | None]) -> str:
    return "(" + ", ".join("?" if d is None else str(d) for d in dims) + ")"


def _through_copies(program: Program, node: fx.Node) -> fx.Node | str:
    """Step back over value-preserving copies (a decomposed inference Dropout is a clone)
    and reshapes (LeViT's ``bn(x.flatten(0, 1)).reshape_as(x)``; the channel axis is
    checked later by ``_channel_axis_reason``)."""
    while node.target in COPIES or node.target in RESHAPES:
        node = node.args[0]  # type: ignore[assignment]
        if not isinstance(node, fx.Node) or node.op != "call_function":
            return "the BN input is not computed by a layer"
        if len(value_users(node)) != 1 or program.is_user_output(node):
            return f"the BN input {node.name} has other users"
    return node


def _bn_reason(program: Program, bn: BnNode, assume_eval: bool) -> str | None:
    main, other = bn.output_users()
    statistics_used = any(not _dropped_mutation(program, bn, u) for u in other)
    why = patterns.bn_training_reason(bn.training, statistics_used, assume_eval)
    if why:
        return why.replace("training_mode=1", "training=True").replace(
            "--assume-eval", "assume_eval=True (--assume-eval)"
        )
    if not main:
        return "the BN output is unused"
    if bn.arg(3) is None or bn.arg(4) is None:
        return "BN has no running statistics"
    return None


def _dropped_mutation(program: Program, bn: BnNode, user: fx.Node) -> bool:
    """A training BN's new running statistic that only updates its buffer (gone once eval)."""
    if not bn.training or user.target is not operator.getitem:
        return False
    if user.args[1] not in MUTATION_OUTPUTS:
        return False
    out = program.ep.graph_module.graph.output_node()
    return all(u is out for u in user.users) and user.name in (
        program.ep.graph_signature.buffers_to_mutate
    )


def _bn_params(
    program: Program, bn: BnNode
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | str:
    arrays = []
    for i in (3, 4):  # a training BN updates them itself; _bn_reason checked the updates
        t = program.tensor(bn.arg(i), mutated_ok=bn.training)
        if t is None:
            return "BN running statistics are not constants of the program"
        arrays.append(_np(t))
    mean, var = arrays
    gamma = np.ones_like(mean) if bn.arg(1) is None else program.tensor(bn.arg(1))
    beta = np.zeros_like(mean) if bn.arg(2) is None else program.tensor(bn.arg(2))
    if gamma is None or beta is None:
        return "BN weight or bias is not a constant of the program"
    return _np(gamma), _np(beta), mean, var


def fold_layer(
    program: Program, layer: Layer, scale: np.ndarray, shift: np.ndarray
) -> LayerFold | str:
    """New weights for ``layer`` computing ``s·layer(x) + t`` per output channel."""
    arrays = layer_arrays(program, layer)
    if isinstance(arrays, str):
        return arrays
    weight, w, bias = arrays
    why = _shape_reason(layer, w, scale.shape[0])
    if why:
        return why
    axis = 1 if layer.kind in MATRIX_KINDS and not layer.transposed_weight else 0
    if layer.kind == "Addmm":
        bias = _addmm_bias(bias, layer.beta, scale.shape[0])
        if isinstance(bias, str):
            return bias
    new_b64 = foldmath.fold_output_bias(bias, scale, shift)
    if layer.kind != "ConvTranspose":
        new_w64 = foldmath.scale_output_channels(w, scale, axis=axis)
        return cast_layer_fold(program, layer, weight, w, new_w64, new_b64, axis)
    new_w64 = foldmath.scale_conv_transpose_output(w, scale, layer.groups)
    grouped = foldmath.grouped_conv_transpose(new_w64, layer.groups)
    original = foldmath.grouped_conv_transpose(w, layer.groups)
    cast, why = _cast(grouped, weight.dtype, original, foldmath.CONV_TRANSPOSE_AXES)
    if why:
        return f"{layer.node.name}: {why}"
    return _with_bias(program, layer, weight, cast.reshape(w.shape), new_b64)


def _shape_reason(layer: Layer, w: np.ndarray, channels: int) -> str | None:
    if w.ndim < 2:
        return f"the weight of {layer.node.name} is {w.ndim}-D"
    if layer.kind == "ConvTranspose":
        produced = w.shape[1] * layer.groups
    elif layer.kind in MATRIX_KINDS and not layer.transposed_weight:
        produced = w.shape[1]
    else:
        produced = w.shape[0]
    if produced != channels:
        return f"BN has {channels} channels but {layer.node.name} produces {produced}"
    return None


def _addmm_bias(bias: np.ndarray | None, beta: float, channels: int) -> np.ndarray | str:
    """addmm's ``beta·bias`` as one value per output feature."""
    if bias is None:
        return np.zeros(channels)
    if bias.size not in (1, channels) or (bias.ndim == 2 and bias.shape[0] != 1):
        return f"addmm's bias has shape {tuple(bias.shape)}, not one value per feature"
    return np.broadcast_to(bias.reshape(-1), (channels,)) * beta


def _plan_concat(
    program: Program, bn: BnNode, cat: fx.Node, scale: np.ndarray, shift: np.ndarray
) -> FoldPlan | str:
    """BN after ``aten.cat`` on the channel axis: one slice of (s, t) per input."""
    inputs = cat.args[0]
    dim = int(cat.args[1]) if len(cat.args) > 1 else int(cat.kwargs.get("dim", 0))
    val = cat.meta.get("val")
    if val is None or dim % val.dim() != 1:
        return "the BN input is a concatenation along another axis than the channels"
    if len(set(inputs)) != len(inputs):  # type: ignore[arg-type]
        return "the same tensor is concatenated twice"
    sizes = []
    for part in inputs:  # type: ignore[union-attr]
        part_val = part.meta.get("val") if isinstance(part, fx.Node) else None
        if part_val is None or not isinstance(part_val.shape[1], int):
            return "a concatenated input has an unknown channel count"
        sizes.append(int(part_val.shape[1]))
    parts = patterns.split_concat(scale, shift, sizes)
    if isinstance(parts, str):
        return parts
    folds = []
    for part, (s, t) in zip(inputs, parts, strict=True):  # type: ignore[arg-type]
        if (
            len(value_users(part)) != 1
            or program.is_user_output(part)
            or part.op != "call_function"
        ):
            return f"the concatenated input {part.name} has other users"
        layer = layer_of(part)
        if isinstance(layer, str):
            return f"concatenated input {part.name}: {layer}"
        fold = _fold_part(program, layer, part, s, t)
        if isinstance(fold, str):
            return fold
        folds.append(fold)
    return FoldPlan(bn.node.name, bn.kind, "Concat→BN (split)", folds)


def _plan_sum(
    program: Program, bn: BnNode, add: fx.Node, scale: np.ndarray, shift: np.ndarray
) -> FoldPlan | str:
    """BN after ``a + b`` of two layers: s·(a + b) + t = (s·a + t) + s·b (``split_sum``)."""
    terms = add.args[:2]
    if not all(isinstance(t, fx.Node) for t in terms) or terms[0] is terms[1]:
        return "the BN input comes from add.Tensor, not a convolution or linear layer"
    folds = []
    for term, (s, t) in zip(terms, patterns.split_sum(scale, shift, 2), strict=True):
        layer = layer_of(term)  # type: ignore[arg-type]
        if isinstance(layer, str):
            return "the BN input comes from add.Tensor, not a convolution or linear layer"
        if len(value_users(term)) != 1 or program.is_user_output(term):  # type: ignore[arg-type]
            return f"the summed term {term.name} has other users"  # type: ignore[union-attr]
        fold = _fold_part(program, layer, add, s, t)
        if isinstance(fold, str):
            return fold
        folds.append(fold)
    return FoldPlan(bn.node.name, bn.kind, "Add(Conv terms)→BN", folds)


def _fold_part(
    program: Program, layer: Layer, where: fx.Node, s: np.ndarray, t: np.ndarray
) -> LayerFold | str:
    """``fold_layer`` for one part of a split BN, once the part's channel axis is proven."""
    why = _channel_axis_reason(layer, where, int(s.shape[0]))
    return why if why else fold_layer(program, layer, s, t)


def cast_layer_fold(
    program: Program,
    layer: Layer,
    weight: torch.Tensor,
    w: np.ndarray,
    new_w64: np.ndarray,
    new_b64: np.ndarray,
    out_axis: int,
) -> LayerFold | str:
    """Cast the float64 results back (``foldmath``'s refusals) into a LayerFold."""
    new_w, why = _cast(new_w64, weight.dtype, w, out_axis)
    if why:
        return f"{layer.node.name}: {why}"
    return _with_bias(program, layer, weight, new_w, new_b64)


def _with_bias(
    program: Program, layer: Layer, weight: torch.Tensor, new_w: torch.Tensor, new_b64: np.ndarray
) -> LayerFold | str:
    """The LayerFold of a cast weight and its float64 bias, cast back the same way."""
    new_b, why = _cast(new_b64, weight.dtype, None)
    if why:
        return f"{layer.node.name}: {why}"
    target = program.target(layer.weight) if layer.weight.op == "placeholder" else None
    device = weight.device
    return LayerFold(layer.node.name, layer.kind, new_w.to(device), new_b.to(device), target)


def layer_arrays(
    program: Program, layer: Layer
) -> tuple[torch.Tensor, np.ndarray, np.ndarray | None] | str:
    """The layer's weight (tensor and float64 array) and bias array, or why they are unusable."""
    weight = program.tensor(layer.weight)
    if weight is None or not weight.dtype.is_floating_point:
        return f"the weight of {layer.node.name} is not a float constant of the program"
    bias = None
    if layer.bias is not None:
        bias_t = program.tensor(layer.bias)
        if bias_t is None:
            return f"the bias of {layer.node.name} is not a constant of the program"
        bias = _np(bias_t)
    return weight, _np(weight), bias


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().to("cpu", torch.float64).numpy()
