"""Apply fold plans to a copy of an ExportedProgram and rebuild a valid program.

The caller's program is never touched: the graph module and signature are copied, folded
weights become new uniquely named parameters (a weight that something else also reads keeps
its original), BN parameters and buffers that nothing reads any more are dropped with their
signature entries (``num_batches_tracked`` and its update outputs too), and the result is
rebuilt the way torch's own passes do it (``ExportedProgram._update``), so the graph
signature is validated and range constraints (dynamic shapes) carry over.
"""

from __future__ import annotations

import copy
import operator
import re
from collections.abc import Iterable
from typing import Any

import torch
from torch import fx, nn
from torch.export import ExportedProgram
from torch.export.graph_signature import (
    ExportGraphSignature,
    InputKind,
    InputSpec,
    OutputKind,
    OutputSpec,
    TensorArgument,
)

from bnfold.export.plan import FoldPlan, LayerFold
from bnfold.export.program import BN_OPS

aten = torch.ops.aten
SUFFIX = "bnfolded"


DROPOUT_OPS = {aten.dropout.default, aten.feature_dropout.default, aten.alpha_dropout.default}


def apply_plans(
    ep: ExportedProgram, plans: Iterable[FoldPlan], dropouts: Iterable[str] = ()
) -> ExportedProgram:
    """A new program with ``plans`` applied and the named inference Dropout calls removed."""
    return _Rewriter(ep).run(list(plans), list(dropouts))


def inference_program(ep: ExportedProgram, batchnorms: Iterable[str]) -> ExportedProgram:
    """A copy whose named training-mode BN calls normalise with their running statistics.

    The ``assume_eval`` reference: the same program read as inference, nothing folded.
    """
    rewriter = _Rewriter(ep)
    for name in batchnorms:
        rewriter.to_inference(rewriter.nodes[name])
    return rewriter.run([], [])


def dropouts(ep: ExportedProgram) -> list[tuple[str, bool]]:
    """Every Dropout call as ``(name, train)``; with ``train=False`` it is the identity."""
    return [
        (n.name, bool(n.args[2]) if len(n.args) > 2 else True)
        for n in ep.graph_module.graph.nodes
        if n.target in DROPOUT_OPS
    ]


class _Rewriter:
    def __init__(self, ep: ExportedProgram) -> None:
        self.ep = ep
        self.gm: fx.GraphModule = copy.deepcopy(ep.graph_module)
        self.graph = self.gm.graph
        _keep_names(ep.graph_module.graph, self.graph)
        self.nodes = {n.name: n for n in self.graph.nodes}
        sig = ep.graph_signature
        self.inputs: list[InputSpec] = [copy.copy(s) for s in sig.input_specs]
        self.output_specs: list[OutputSpec] = [copy.copy(s) for s in sig.output_specs]
        self.state_dict = dict(ep.state_dict)
        self.constants = dict(ep.constants)
        self.candidates: list[fx.Node] = []  # placeholders / nodes that may now be dead
        self.fake_mode = torch._guards.detect_fake_mode(
            [n.meta.get("val") for n in self.graph.nodes if n.op == "placeholder"]
        )
        self.anchor = self._parameter_anchor()

    # -- the whole job ------------------------------------------------------------------
    def run(self, plans: list[FoldPlan], dropouts: list[str]) -> ExportedProgram:
        for name in dropouts:
            node = self.nodes[name]
            node.replace_all_uses_with(node.args[0])
            self.graph.erase_node(node)
        for plan in plans:
            for fold in plan.folds:
                self._fold_layer(fold)
            if plan.replaces is not None:  # an identity branch: the sum loses the BN term
                add, rest = (self.nodes[name] for name in plan.replaces)
                add.replace_all_uses_with(rest)
                self.candidates += [a for a in add.args[:2] if isinstance(a, fx.Node)]
                self.graph.erase_node(add)
            self._remove_bn(self.nodes[plan.bn])
        self._drop_dead()
        out = self.graph.output_node()
        for arg, spec in zip(out.args[0], self.output_specs, strict=True):
            if isinstance(arg, fx.Node) and isinstance(spec.arg, TensorArgument):
                spec.arg = TensorArgument(name=arg.name)
        self.graph.lint()
        self.gm.recompile()
        signature = ExportGraphSignature(input_specs=self.inputs, output_specs=self.output_specs)
        return self.ep._update(
            self.gm, signature, state_dict=self.state_dict, constants=self.constants
        )

    # -- producers ------------------------------------------------------------------------
    def _fold_layer(self, fold: LayerFold) -> None:
        node = self.nodes[fold.layer]
        base = fold.weight_target or f"{fold.layer}.weight"
        prefix = base.rsplit(".", 1)[0] + "." if "." in base else ""
        w_ph = self._new_parameter(f"{base}_{SUFFIX}", fold.weight, node)
        b_ph = self._new_parameter(f"{prefix}bias_{SUFFIX}", fold.bias, node)
        args = list(node.args)
        if fold.kind in ("Conv", "ConvTranspose", "Linear"):
            args += [None] * (3 - len(args))
            self.candidates += [a for a in args[1:3] if isinstance(a, fx.Node)]
            args[1], args[2] = w_ph, b_ph
            node.args = tuple(args)
            return
        mat2 = args[2] if fold.kind == "Addmm" else args[1]
        new_mat2 = self._replace_weight_source(mat2, w_ph)
        if fold.kind == "Bmm":
            self.candidates.append(mat2)
            node.args = (args[0], new_mat2)
            with self.graph.inserting_after(node):
                biased = self.graph.call_function(aten.add.Tensor, (node, b_ph))
            biased.meta = copy.copy(node.meta)
            node.replace_all_uses_with(biased, delete_user_cb=lambda user: user is not biased)
            return
        if fold.kind == "Addmm":
            self.candidates += [a for a in (args[0], mat2) if isinstance(a, fx.Node)]
            node.args = (b_ph, args[1], new_mat2)
            node.kwargs = {k: v for k, v in node.kwargs.items() if k != "beta"}
            return
        self.candidates.append(mat2)
        with self.graph.inserting_before(node):
            addmm = self.graph.call_function(aten.addmm.default, (b_ph, args[0], new_mat2))
        addmm.meta = copy.copy(node.meta)
        node.replace_all_uses_with(addmm)
        self.graph.erase_node(node)
        self.nodes[fold.layer] = addmm

    def _replace_weight_source(self, mat2: fx.Node, w_ph: fx.Node) -> fx.Node:
        """The new weight, through new copies of the ops (transpose, expand, view) that led
        from the old weight to mat2."""
        if mat2.op == "placeholder" or mat2.op == "get_attr":
            return w_ph
        source = self._replace_weight_source(mat2.args[0], w_ph)  # type: ignore[arg-type]
        with self.graph.inserting_before(mat2):
            new = self.graph.call_function(mat2.target, (source, *mat2.args[1:]), dict(mat2.kwargs))
        new.meta = copy.copy(mat2.meta)
        return new

    def _new_parameter(self, target: str, tensor: torch.Tensor, layer: fx.Node) -> fx.Node:
        target = self._unique_target(target)
        name = "p_" + re.sub(r"\W", "_", target)
        with self.graph.inserting_after(self.anchor):
            ph = self.graph.placeholder(name)
        self.anchor = ph
        if self.fake_mode is not None:
            ph.meta["val"] = self.fake_mode.from_tensor(tensor, static_shapes=True)
        else:
            ph.meta["val"] = tensor
        spec = InputSpec(InputKind.PARAMETER, TensorArgument(name=ph.name), target, None)
        self.inputs.insert(self._spec_index(), spec)
        grad = tensor.is_floating_point()
        self.state_dict[target] = nn.Parameter(tensor.contiguous(), requires_grad=grad)
        return ph

    def _unique_target(self, target: str) -> str:
        taken = set(self.state_dict) | set(self.constants)
        taken |= {s.target for s in self.inputs if s.target}
        if target not in taken:
            return target
        i = 1
        while f"{target}{i}" in taken:
            i += 1
        return f"{target}{i}"

    def _parameter_anchor(self) -> fx.Node:
        """New parameters go after the last parameter placeholder (or first, if none)."""
        placeholders = [n for n in self.graph.nodes if n.op == "placeholder"]
        kinds = {s.arg.name: s.kind for s in self.inputs if hasattr(s.arg, "name")}
        params = [p for p in placeholders if kinds.get(p.name) == InputKind.PARAMETER]
        if params:
            return params[-1]
        with self.graph.inserting_before(placeholders[0]):
            marker = self.graph.placeholder("_bnfold_anchor")
        self._marker = marker
        return marker

    def _spec_index(self) -> int:
        """Position of the placeholder just created, among the input specs."""
        names = [n.name for n in self.graph.nodes if n.op == "placeholder"]
        names = [n for n in names if n != "_bnfold_anchor"]
        return names.index(self.anchor.name)

    # -- the BN ---------------------------------------------------------------------------
    def to_inference(self, bn: fx.Node) -> None:
        """Make a training BN normalise with its running statistics (and update nothing)."""
        op = BN_OPS[bn.target]
        if not op.tuple_output:
            args = list(bn.args)
            args[5] = False
            bn.args = tuple(args)
            return
        x, w, b, mean, var = bn.args[:5]
        momentum, eps = bn.args[op.eps - 1], bn.args[op.eps]
        with self.graph.inserting_before(bn):
            new = self.graph.call_function(
                aten._native_batch_norm_legit_no_training.default,
                (x, w, b, mean, var, momentum, eps),
            )
        new.meta = copy.copy(bn.meta)
        if "val" in new.meta:
            new.meta["val"] = tuple(new.meta["val"])[:3]
        for user in list(bn.users):
            if user.target is operator.getitem and user.args[1] in (0, 1, 2):
                user.args = (new, user.args[1])
            else:
                self._drop_outputs(user)
                self.graph.erase_node(user)
        self.graph.erase_node(bn)

    def _remove_bn(self, bn: fx.Node) -> None:
        source = bn.args[0]
        assert isinstance(source, fx.Node)
        self.candidates += [a for a in bn.args[1:5] if isinstance(a, fx.Node)]
        self._drop_batch_counter(bn.args[3])
        if BN_OPS[bn.target].tuple_output:
            for user in list(bn.users):
                if user.target is operator.getitem and user.args[1] == 0:
                    user.replace_all_uses_with(source)
                else:  # a training BN's running-statistics update (assume_eval)
                    self._drop_outputs(user)
                self.graph.erase_node(user)
        else:
            bn.replace_all_uses_with(source)
        self.graph.erase_node(bn)

    def _drop_outputs(self, node: fx.Node) -> None:
        """Remove buffer-mutation outputs that are ``node``."""
        out = self.graph.output_node()
        pairs = [
            (arg, spec)
            for arg, spec in zip(out.args[0], self.output_specs, strict=True)
            if not (arg is node and spec.kind == OutputKind.BUFFER_MUTATION)
        ]
        out.args = (tuple(arg for arg, _ in pairs),)
        self.output_specs = [spec for _, spec in pairs]

    def _drop_batch_counter(self, running_mean: Any) -> None:
        """The BN's ``num_batches_tracked`` and its ``+1`` update go with it."""
        if not isinstance(running_mean, fx.Node) or running_mean.op != "placeholder":
            return
        spec = next(s for s in self.inputs if getattr(s.arg, "name", None) == running_mean.name)
        if not spec.target or not spec.target.endswith("running_mean"):
            return
        counter = spec.target[: -len("running_mean")] + "num_batches_tracked"
        for s in self.inputs:
            if s.kind != InputKind.BUFFER or s.target != counter:
                continue
            ph = self.nodes.get(s.arg.name)
            if ph is None:
                return
            for user in list(ph.users):
                if user.target not in (aten.add.Tensor, aten.add_.Tensor):
                    return
                out = self.graph.output_node()
                if any(u is not out for u in user.users):
                    return
                self._drop_outputs(user)
                if not user.users:
                    self.graph.erase_node(user)
            self.candidates.append(ph)

    # -- cleanup --------------------------------------------------------------------------
    def _drop_dead(self) -> None:
        marker = getattr(self, "_marker", None)
        if marker is not None:
            self.graph.erase_node(marker)
        seen: set[fx.Node] = set()
        for node in self.candidates:
            if node in seen or getattr(node, "_erased", False) or node.users:
                continue
            seen.add(node)
            if node.op == "call_function":  # a transpose of an old weight
                parents = node.all_input_nodes
                self.graph.erase_node(node)
                self.candidates += parents
                continue
            if node.op != "placeholder":
                continue
            spec = next(s for s in self.inputs if getattr(s.arg, "name", None) == node.name)
            if spec.kind == InputKind.USER_INPUT:
                continue
            self.inputs.remove(spec)
            self.graph.erase_node(node)
            if spec.target and not any(s.target == spec.target for s in self.inputs):
                self.state_dict.pop(spec.target, None)
                self.constants.pop(spec.target, None)


def _keep_names(original: fx.Graph, copied: fx.Graph) -> None:
    """Give copied nodes their original names (a deep copy renames e.g. ``input``)."""
    for old, new in zip(original.nodes, copied.nodes, strict=True):
        if new.name != old.name:
            new.name = old.name
            copied._graph_namespace._rename_object(new, old.name)
