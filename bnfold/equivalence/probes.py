"""Probe outputs: compare what a squashing op at a graph output hides.

A Sigmoid saturated at 1.0, a Softmax that is one-hot, a Relu that is 0 or an ArgMax
all throw away most of a difference between two models: a folding bug can sit entirely
in a saturated region. When both models end an output in the same such op (possibly
followed by layout ops), the op's input is exposed as an extra output (through an
Identity) and judged by the same rule as the real outputs.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping

import onnx
from onnx import helper

logger = logging.getLogger(__name__)

SQUASHERS = frozenset(
    {"Sigmoid", "HardSigmoid", "Tanh", "Softmax", "Clip", "Relu", "ArgMax", "ArgMin"}
)
LAYOUT_OPS = frozenset({"Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "Identity"})
_MAX_WALK = 4  # layout ops between the squashing op and the graph output


@dataclasses.dataclass(frozen=True)
class Probe:
    """The input of the squashing op ``op`` that produces graph output ``output``."""

    output: str
    op: str
    value: str  # the probed value's name in this model

    @property
    def name(self) -> str:
        """The extra output's name (the same in both models)."""
        return f"{self.output}::{self.op}_input"


def find_probes(model: onnx.ModelProto) -> dict[str, Probe]:
    """Probes for this model's main-graph outputs, keyed by output name."""
    graph = model.graph
    producers = {out: node for node in graph.node for out in node.output}
    constants = {t.name for t in graph.initializer}
    probes = {}
    for output in graph.output:
        node = producers.get(output.name)
        for _ in range(_MAX_WALK):
            if node is None or node.op_type not in LAYOUT_OPS or node.domain not in ("", "ai.onnx"):
                break
            node = producers.get(node.input[0])
        if node is None or node.op_type not in SQUASHERS or node.domain not in ("", "ai.onnx"):
            continue
        value = node.input[0]
        if value and value not in constants and producers.get(value) is not None:
            probes[output.name] = Probe(output.name, node.op_type, value)
    return probes


def common_probes(
    reference: onnx.ModelProto, candidate: onnx.ModelProto
) -> list[tuple[Probe, Probe]]:
    """Probe pairs for outputs both models end in the same squashing op."""
    ref = find_probes(reference)
    cand = find_probes(candidate)
    return [(p, cand[name]) for name, p in ref.items() if name in cand and cand[name].op == p.op]


def with_probes(model: onnx.ModelProto, probes: list[Probe]) -> onnx.ModelProto:
    """A copy of ``model`` with each probe exposed as an extra graph output."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    taken = {v for node in out.graph.node for v in node.output} | {i.name for i in out.graph.input}
    for probe in probes:
        if probe.name in taken:
            logger.debug("probe name %s already used; skipped", probe.name)
            continue
        out.graph.node.append(
            helper.make_node(
                "Identity", [probe.value], [probe.name], name=f"bnfold_probe_{probe.name}"
            )
        )
        out.graph.output.append(onnx.ValueInfoProto(name=probe.name))
    return out


def probe_labels(pairs: list[tuple[Probe, Probe]]) -> Mapping[str, str]:
    """Probe output name → ``"<output> before <Op>"`` for reports."""
    return {p.name: f"{p.output} before {p.op}" for p, _ in pairs}
