"""The graph walker: subgraphs in onnx-ir's order, found without its generic iterator."""

from __future__ import annotations

import onnx_ir as ir

from bnfold.onnx.walk import subgraphs, walk_graphs


def _graph(name: str, nodes: list[ir.Node]) -> ir.Graph:
    return ir.Graph([], [n.outputs[0] for n in nodes[-1:]], nodes=nodes, name=name)


def _if(then: ir.Graph, other: ir.Graph) -> ir.Node:
    cond = ir.Value(name="c")
    return ir.Node(
        "",
        "If",
        [cond],
        attributes=[ir.AttrGraph("then_branch", then), ir.AttrGraph("else_branch", other)],
    )


def test_subgraphs_match_onnx_ir_order_through_nesting() -> None:
    inner_a = _graph("inner_a", [ir.Node("", "Identity", [ir.Value(name="x")])])
    inner_b = _graph("inner_b", [ir.Node("", "Identity", [ir.Value(name="y")])])
    then = _graph("then", [_if(inner_a, inner_b)])
    other = _graph("else", [ir.Node("", "Identity", [ir.Value(name="z")])])
    loop_body = _graph("body", [ir.Node("", "Identity", [ir.Value(name="w")])])
    scan = ir.Node(
        "", "Scan", [ir.Value(name="s")], attributes=[ir.AttrGraphs("bodies", [loop_body])]
    )
    main = _graph("main", [_if(then, other), scan])
    model = ir.Model(main, ir_version=10)

    found = subgraphs(main)

    assert [g.name for g in found] == [g.name for g in main.subgraphs()]
    assert [g.name for g in found] == ["then", "inner_a", "inner_b", "else", "body"]
    assert [g for g, _ in walk_graphs(model)][1:] == found
