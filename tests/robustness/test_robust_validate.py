"""Validation refuses broken models but never legitimate ones that merely look unusual."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from support.robust_corpus import C_IN, C_OUT, bn_arrays, good_model, save

import bnfold
from bnfold import foldmath
from bnfold.errors import ModelLoadError
from bnfold.onnx.io import validate


def fold_path(model: onnx.ModelProto, tmp_path: Path, name: str = "m.onnx"):
    return bnfold.fold(save(model, tmp_path / name))


def counts(result) -> dict:
    return result.report.counts()["batchnorm"]


def test_minus_infinity_attention_mask_is_accepted(tmp_path: Path) -> None:
    """-inf constants are normal outside linear-layer weights (additive attention masks)."""
    model = good_model()
    mask = np.zeros((1, 6, 8, 8), np.float32)
    mask[..., 4:] = -np.inf
    model.graph.initializer.append(numpy_helper.from_array(mask, "mask"))
    model.graph.node[-1].output[0] = "e"
    model.graph.node.append(helper.make_node("Add", ["e", "mask"], ["y"], name="masked"))
    assert counts(fold_path(model, tmp_path))["folded"] == 1


def test_tiny_negative_variance_within_epsilon_is_accepted(tmp_path: Path) -> None:
    bn = bn_arrays(np.random.default_rng(0))
    bn["var"][0] = -1e-7  # training noise: variance + ε is still > 0
    assert counts(fold_path(good_model(bn=bn), tmp_path))["folded"] == 1


def test_variance_exactly_minus_epsilon_is_refused(tmp_path: Path) -> None:
    bn = bn_arrays(np.random.default_rng(0))
    bn["var"][2] = np.float32(-1e-5)
    with pytest.raises(ModelLoadError, match="variance is negative"):
        fold_path(good_model(bn=bn), tmp_path)


def test_constant_node_parameters_are_validated_too(tmp_path: Path) -> None:
    """paddle2onnx style: BN parameters arrive as Constant nodes, not initializers."""
    model = good_model()
    var = next(t for t in model.graph.initializer if t.name == "var")
    arr = numpy_helper.to_array(var).copy()
    arr[1] = -3.0
    model.graph.initializer.remove(var)
    const = helper.make_node("Constant", [], ["var"], value=numpy_helper.from_array(arr, "v"))
    model.graph.node.insert(0, const)
    with pytest.raises(ModelLoadError, match=r"'bn'.*variance is negative \(-3 at channel 1"):
        fold_path(model, tmp_path)


def test_runtime_computed_parameters_are_not_judged(tmp_path: Path) -> None:
    """A BN whose variance comes from a graph input cannot be checked (or folded)."""
    model = good_model()
    var = next(t for t in model.graph.initializer if t.name == "var")
    model.graph.initializer.remove(var)
    model.graph.input.append(helper.make_tensor_value_info("var", TensorProto.FLOAT, [6]))
    result = fold_path(model, tmp_path)
    assert counts(result)["folded"] == 0 and counts(result)["left"] == 1


def test_onnxruntime_contrib_operator_is_accepted(tmp_path: Path) -> None:
    model = good_model()
    model.graph.node[2].op_type, model.graph.node[2].domain = "Gelu", "com.microsoft"
    model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    assert counts(fold_path(model, tmp_path))["folded"] == 1


def test_unknown_operator_of_a_runtime_domain_is_refused(tmp_path: Path) -> None:
    model = good_model()
    model.graph.node[2].op_type, model.graph.node[2].domain = "NoSuchOp", "com.microsoft"
    model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    with pytest.raises(ModelLoadError, match=r"'NoSuchOp' of domain 'com\.microsoft'"):
        fold_path(model, tmp_path)


def test_custom_domain_defined_by_a_model_function_is_accepted(tmp_path: Path) -> None:
    model = good_model()
    func = helper.make_function(
        "custom.ops",
        "MyRelu",
        ["a"],
        ["b"],
        [helper.make_node("Relu", ["a"], ["b"])],
        [helper.make_opsetid("", 17)],
    )
    model.functions.append(func)
    model.graph.node[2].op_type, model.graph.node[2].domain = "MyRelu", "custom.ops"
    model.opset_import.append(helper.make_opsetid("custom.ops", 1))
    assert counts(fold_path(model, tmp_path))["folded"] == 1


def _if_model(branch_reads: str) -> onnx.ModelProto:
    """good_model + an If whose then-branch reads ``branch_reads`` from the outer scope."""
    model = good_model()
    out = helper.make_tensor_value_info("t", TensorProto.FLOAT, None)
    then = helper.make_graph(
        [helper.make_node("Identity", [branch_reads], ["t"])], "then", [], [out]
    )
    other = helper.make_graph([helper.make_node("Identity", ["b"], ["t"])], "else", [], [out])
    model.graph.initializer.append(numpy_helper.from_array(np.array(True), "flag"))
    model.graph.node.append(
        helper.make_node("If", ["flag"], ["z"], then_branch=then, else_branch=other)
    )
    model.graph.output.append(helper.make_tensor_value_info("z", TensorProto.FLOAT, None))
    return model


def test_subgraph_reading_an_outer_scope_value_is_accepted() -> None:
    validate.check_defined_names(_if_model("r").graph, "m")


def test_subgraph_reading_an_undefined_value_is_refused() -> None:
    with pytest.raises(ModelLoadError, match="reads 'ghost'"):
        validate.check_defined_names(_if_model("ghost").graph, "m")


def test_graph_output_nobody_produces_is_refused() -> None:
    model = good_model()
    model.graph.output.append(helper.make_tensor_value_info("nowhere", TensorProto.FLOAT, None))
    with pytest.raises(ModelLoadError, match="graph output 'nowhere'"):
        validate.check_defined_names(model.graph, "m")


@pytest.mark.parametrize("dtype", [np.float16, np.float64])
def test_non_finite_weights_are_found_in_every_float_dtype(dtype: type) -> None:
    arr = np.ones(3 * (1 << 10), dtype)
    arr[-1] = np.nan
    arr[5] = -np.inf
    assert validate._count_non_finite(arr) == 2


def test_non_finite_scan_is_chunked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(validate, "_CHUNK", 7)
    arr = np.zeros(100, np.float32)
    arr[[0, 6, 7, 50, 99]] = np.inf
    assert validate._count_non_finite(arr) == 5


@pytest.mark.parametrize("cut", [1, 4], ids=["one-byte", "one-float"])
def test_regression_short_raw_data_is_refused_on_load(tmp_path: Path, cut: int) -> None:
    """A weight whose raw_data is shorter than its shape was reported as "not a constant"
    and only failed later, inside onnxruntime; it is now refused when the model loads."""
    model = good_model()
    weight = next(t for t in model.graph.initializer if t.name == "W")
    need = len(weight.raw_data)
    weight.raw_data = weight.raw_data[:-cut]
    with pytest.raises(ModelLoadError, match=f"'W' holds {need - cut} bytes .* needs {need}"):
        fold_path(model, tmp_path)


def _inf_weight_model() -> onnx.ModelProto:
    w = np.random.default_rng(4).normal(0, 0.3, (C_OUT, C_IN, 3, 3))
    w[2, 1, 0, 0] = np.inf
    return good_model(weight=w)


def test_regression_folded_conv_weight_was_scanned_for_nan_twice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Loading scanned every linear-layer weight for NaN/Inf and the fold then read it
    again; a weight that folds is now read once, by the fold (issue 18: fold cost)."""
    scanned: list[tuple[int, ...]] = []
    count, finite = validate._count_non_finite, foldmath.all_finite

    def spy_count(arr: np.ndarray) -> int:
        scanned.append(arr.shape)
        return count(arr)

    def spy_finite(arr: np.ndarray) -> bool:
        scanned.append(arr.shape)
        return finite(arr)

    monkeypatch.setattr(validate, "_count_non_finite", spy_count)
    monkeypatch.setattr(foldmath, "all_finite", spy_finite)
    assert counts(fold_path(good_model(), tmp_path))["folded"] == 1
    assert (C_OUT, C_IN, 3, 3) not in scanned


def test_nan_weight_before_batchnorm_is_still_refused_with_its_name(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"Conv 'conv' input 'W' has 1 NaN/Inf"):
        fold_path(_inf_weight_model(), tmp_path)


def test_nan_weight_left_unfolded_is_refused_after_the_fold(tmp_path: Path) -> None:
    """The deferred scan covers the weights no fold rewrote (here: BN kept by request)."""
    path = save(_inf_weight_model(), tmp_path / "m.onnx")
    with pytest.raises(ModelLoadError, match=r"Conv 'conv' input 'W' has 1 NaN/Inf"):
        bnfold.fold(path, keep="bn")


def test_nan_weight_in_memory_model_is_left_with_its_reason() -> None:
    """In-memory models are not validated at load: the fold's own reason names the cause."""
    result = bnfold.fold(_inf_weight_model())
    assert counts(result)["folded"] == 0
    assert "Conv weight contains NaN or Inf" in result.report.describe()
