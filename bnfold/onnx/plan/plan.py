"""The one plan type: a checked change that mutates the graph only when applied."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import onnx_ir as ir


@dataclasses.dataclass
class Plan:
    """A checked change; ``apply()`` mutates the graph.

    ``apply`` returns the value that now carries the planned result when that value is new
    (an output-side fold that had to insert a bias Add), else None.
    """

    apply: Callable[[], ir.Value | None]
    into: list[str]  # the layers whose weights change
    path: list[str]  # op types walked through, e.g. ["MatMul", "Reshape"]


def combined(plans: list[Plan], op: str) -> Plan:
    """One Plan applying every part plan (each checked already), e.g. per Concat input."""

    def apply() -> None:
        for plan in plans:
            plan.apply()

    return Plan(apply, [name for plan in plans for name in plan.into], [op])
