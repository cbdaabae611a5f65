"""Keep-lists on ONNX graphs: ``keep_dropout`` and ``keep=[glob]`` leave nodes as they are.

Monte-Carlo dropout at inference needs Dropout kept while BN still folds; a named BN may be
kept for later fine-tuning or FLOPs counting. Kept nodes are reported as "kept by request",
never as a skip reason, and every pass honours them (producer, consumer, identity branch).
"""

from __future__ import annotations

import onnx
import pytest
from support.graphs import GraphBuilder
from support.onnx_checks import assert_equivalent, entry, op_count, op_types

import bnfold
from bnfold.check import check_model


def conv_bn_dropout() -> onnx.ModelProto:
    """x → Conv → BN 'bn1' → Relu → Dropout 'drop' → Conv → BN 'bn2' → y."""
    b = GraphBuilder(seed=3)
    x = b.input("x", ["N", 3, 6, 6])
    y = b.node("Conv", [x, b.weight("w1", [4, 3, 3, 3])], name="conv1", pads=[1, 1, 1, 1])
    y = b.bn(y, 4, name="bn1")
    y = b.node("Relu", [y], name="relu")
    y = b.node("Dropout", [y], name="drop")
    y = b.node("Conv", [y, b.weight("w2", [5, 4, 1, 1])], name="conv2")
    b.bn(y, 5, name="bn2", output="y")
    b.output("y", 4)
    return b.build()


def pre_activation() -> onnx.ModelProto:
    """x → Relu → BN 'pre' → Conv (no padding) → y: only the consumer fold applies."""
    b = GraphBuilder(seed=4)
    x = b.input("x", ["N", 4, 5, 5])
    y = b.node("Relu", [x], name="relu")
    y = b.bn(y, 4, name="pre")
    b.node("Conv", [y, b.weight("w", [3, 4, 1, 1])], name="conv", outputs=["y"])
    b.output("y", 4)
    return b.build()


def identity_branch() -> onnx.ModelProto:
    """RepVGG-style ``Conv(x) + BN(x)``: the identity-branch pass folds BN 'branch'."""
    b = GraphBuilder(seed=5)
    x = b.input("x", ["N", 4, 5, 5])
    c = b.node("Conv", [x, b.weight("w", [4, 4, 3, 3])], name="conv", pads=[1, 1, 1, 1])
    n = b.bn(x, 4, name="branch")
    b.node("Add", [c, n], name="sum", outputs=["y"])
    b.output("y", 4)
    return b.build()


def test_keep_dropout_keeps_every_dropout_and_still_folds_bn() -> None:
    model = conv_bn_dropout()
    result = bnfold.fold(model, keep_dropout=True)
    assert op_types(result.model) == ["Conv", "Relu", "Dropout", "Conv"]
    drop = entry(result.report, "drop")
    assert drop.status == "kept" and drop.reason == "kept by request"
    assert result.report.counts()["dropout"] == {"found": 1, "removed": 0, "left": 0, "kept": 1}
    assert result.report.counts()["batchnorm"]["folded"] == 2
    assert_equivalent(model, result.model)


def test_keep_glob_keeps_the_named_bn_only() -> None:
    model = conv_bn_dropout()
    result = bnfold.fold(model, keep=["bn2"])
    assert op_types(result.model) == ["Conv", "Relu", "Conv", "BatchNormalization"]
    assert entry(result.report, "bn2").status == "kept"
    assert entry(result.report, "bn1").status == "folded"
    assert entry(result.report, "drop").status == "removed"
    assert result.report.left == [] and [e.name for e in result.report.kept] == ["bn2"]
    assert "kept BatchNormalization bn2: kept by request" in result.report.describe()
    assert_equivalent(model, result.model)


def test_keep_globs_match_bn_and_dropout_names_with_fnmatch() -> None:
    result = bnfold.fold(conv_bn_dropout(), keep=["bn*", "dr?p"])
    assert op_count(result.model, "BatchNormalization") == 2
    assert op_count(result.model, "Dropout") == 1
    assert sorted(e.name for e in result.report.kept) == ["bn1", "bn2", "drop"]


@pytest.mark.parametrize("make", [pre_activation, identity_branch], ids=["consumer", "branch"])
def test_kept_bn_is_left_by_every_pass(make) -> None:
    model = make()
    name = "pre" if make is pre_activation else "branch"
    assert bnfold.fold(model).report.counts()["batchnorm"]["folded"] == 1  # foldable
    result = bnfold.fold(model, keep=[name])
    assert op_count(result.model, "BatchNormalization") == 1
    kept = entry(result.report, name)
    assert (kept.status, kept.reason) == ("kept", "kept by request")
    assert_equivalent(model, result.model)


def test_keep_pattern_that_matches_nothing_is_a_warning() -> None:
    result = bnfold.fold(conv_bn_dropout(), keep=["bn_typo*"])
    assert op_count(result.model, "BatchNormalization") == 0
    assert result.report.warnings == ["keep pattern 'bn_typo*' matched no BatchNorm or Dropout"]


def test_check_does_not_count_kept_nodes_as_foldable() -> None:
    model = conv_bn_dropout()
    assert not check_model(model)
    assert check_model(model, keep=["bn*"], keep_dropout=True)
    partial = check_model(model, keep=["bn1"])
    assert sorted(e.name for e in partial.foldable) == ["bn2", "drop"]


def test_a_bad_keep_pattern_is_an_input_error() -> None:
    with pytest.raises(bnfold.InputError, match="non-empty strings"):
        bnfold.fold(conv_bn_dropout(), keep=[""])
