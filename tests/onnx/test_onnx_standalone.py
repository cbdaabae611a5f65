"""Standalone BN (folds nowhere): left by default, rewritten to Mul/Add when asked."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from support.fold_checks import assert_equivalent, fold, only_bn, ops
from support.graphs import Builder
from support.onnx_checks import initializer_array

from bnfold.cli.main import cli


def _standalone(rank: int = 4) -> tuple[onnx.ModelProto, str]:
    b = Builder(seed=rank)
    r = b.op("Relu", ["x"])
    y = b.bn(r, 3)
    z = b.op("Relu", [y])
    shape = (2, 3, 4, 5, 6)[:rank]
    return b.model({"x": shape}, [z]), y


def test_standalone_is_left_by_default() -> None:
    model, _ = _standalone()
    folded, result = fold(model)
    entry = only_bn(result)
    assert entry.status == "left"
    assert entry.reason.startswith("producer: Relu")
    assert ops(folded)["BatchNormalization"] == 1


@pytest.mark.parametrize("rank", [2, 3, 4, 5])
def test_rewrite_standalone_is_exact(rank: int) -> None:
    model, _ = _standalone(rank)
    folded, result = fold(model, rewrite_standalone=True)
    entry = only_bn(result)
    assert entry.status == "rewritten" and entry.pattern == "BN→Mul+Add"
    assert "consumer: Relu" in entry.reason  # the note keeps why it could not fold
    assert ops(folded) == {"Relu": 2, "Mul": 1, "Add": 1}
    mul = next(n for n in folded.graph.node if n.op_type == "Mul")
    assert initializer_array(folded, mul.input[1]).shape == (3,) + (1,) * (rank - 2)
    assert_equivalent(model, folded)
    counts = result.report.counts()["batchnorm"]
    assert counts["rewritten"] == 1 and counts["left"] == 0


def test_rewrite_keeps_graph_output_name() -> None:
    b = Builder(seed=9)
    y = b.bn(b.op("Relu", ["x"]), 3)
    model = b.model({"x": (2, 3, 4)}, [y])
    folded, _ = fold(model, rewrite_standalone=True)
    assert [o.name for o in folded.graph.output] == [y]
    assert_equivalent(model, folded)


def test_rewrite_uses_only_mul_when_shift_is_zero() -> None:
    b = Builder(seed=10)
    r = b.op("Relu", ["x"])
    names = [
        b.const(np.array([2.0, -1.0], np.float32)),
        b.const(np.zeros(2, np.float32)),
        b.const(np.zeros(2, np.float32)),
        b.const(np.ones(2, np.float32)),
    ]
    y = b.op("BatchNormalization", [r, *names], epsilon=0.0)
    model = b.model({"x": (2, 2, 3)}, [y])
    folded, result = fold(model, rewrite_standalone=True)
    assert only_bn(result).pattern == "BN→Mul"
    assert ops(folded) == {"Relu": 1, "Mul": 1}
    assert_equivalent(model, folded)


def test_cli_flag(tmp_path: Path) -> None:
    model, _ = _standalone()
    src, out = tmp_path / "m.onnx", tmp_path / "o.onnx"
    onnx.save(model, src)
    result = CliRunner().invoke(cli, [str(src), "-o", str(out), "--rewrite-standalone"])
    assert result.exit_code == 0, result.output
    assert ops(onnx.load(out))["BatchNormalization"] == 0
