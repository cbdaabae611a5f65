"""The one graph walker: every graph of a model (main, subgraphs, functions) and its nodes.

Also the opset a node runs under, with ``DEFAULT_OPSET`` for a model that imports no
default ONNX domain.
"""

from __future__ import annotations

from collections.abc import Iterator

import onnx_ir as ir

DEFAULT_OPSET = 21  # the newest opset whose BatchNormalization/Dropout semantics we know


def walk_graphs(model: ir.Model) -> Iterator[tuple[ir.Graph | ir.Function, str]]:
    """Every graph with nodes and its scope: main graph, subgraphs, functions (and theirs)."""
    yield model.graph, ""
    for sub in subgraphs(model.graph):
        yield sub, f"subgraph:{sub.name or '?'}"
    for func in model.functions.values():
        yield func, f"function:{func.domain}::{func.name}"
        for sub in subgraphs(func):
            yield sub, f"function:{func.domain}::{func.name}/subgraph:{sub.name or '?'}"


def subgraphs(graph: ir.Graph | ir.Function) -> list[ir.Graph]:
    """Every subgraph under ``graph``, depth first, in ``ir.Graph.subgraphs()``'s order.

    A plain loop over node attributes: onnx-ir's own walk goes through its generic
    recursive iterator, which cost more than a whole fold pass on graphs of ~1000 nodes.
    """
    found: dict[ir.Graph, None] = {}
    _collect_subgraphs(graph, found)
    return list(found)


def _collect_subgraphs(graph: ir.Graph | ir.Function, found: dict[ir.Graph, None]) -> None:
    for node in graph:
        attributes = node.attributes.data  # the plain dict: Mapping views iterate slowly
        if not attributes:
            continue
        for attr in attributes.values():
            if not isinstance(attr, ir.Attr):
                continue
            if attr.type == ir.AttributeType.GRAPH:
                inner = [attr.value]
            elif attr.type == ir.AttributeType.GRAPHS:
                inner = list(attr.value)
            else:
                continue
            for sub in inner:
                found.setdefault(sub, None)
                _collect_subgraphs(sub, found)


def all_nodes(model: ir.Model) -> list[ir.Node]:
    """A snapshot list of every node (safe to mutate the graphs while iterating it)."""
    return [node for graph, _ in walk_graphs(model) for node in graph]


def model_opset(model: ir.Model) -> int:
    """The model's default-domain opset (``DEFAULT_OPSET`` when it imports none)."""
    return model.opset_imports.get("", DEFAULT_OPSET)


def node_opset(node: ir.Node, model: ir.Model) -> int:
    """The opset ``node`` runs under: its own version, else the model's."""
    return node.version if node.version is not None else model_opset(model)
