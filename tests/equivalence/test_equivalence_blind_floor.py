"""A model whose own rounding noise is a large share of its output gets a warning."""

from __future__ import annotations

import numpy as np
from support.graphs import GraphBuilder

import bnfold
from bnfold.equivalence import verify


def _conv_bn_then(chaos: float) -> object:
    g = GraphBuilder(seed=3)
    x = g.input("x", [1, 3, 8, 8])
    y = g.node("Conv", [x, g.weight("w", [4, 3, 3, 3])], pads=[1, 1, 1, 1])
    y = g.bn(y, 4)
    y = g.node("Mul", [y, g.const("gain", np.array(chaos, dtype=np.float32))])
    g.node("Sin", [y], outputs=["out"])
    g.output("out", 4)
    return g.build()


def test_chaotic_model_is_verified_with_a_warning_that_small_errors_hide() -> None:
    model = _conv_bn_then(1e5)  # a one-ulp change of the BN output moves sin(1e5·y) by ~1e-2
    folded = bnfold.fold(model).model
    result = verify(model, folded)
    assert result
    assert any("cannot see small fold errors" in w for w in result.warnings), result.warnings


def test_ordinary_model_has_no_such_warning() -> None:
    model = _conv_bn_then(1.0)
    result = verify(model, bnfold.fold(model).model)
    assert result
    assert not any("cannot see small fold errors" in w for w in result.warnings)
