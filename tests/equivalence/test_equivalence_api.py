"""verify(): model sources, input sets, tolerances, errors and the result value."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper
from support import verify_inject as inject
from support import verify_models as vm

import bnfold
from bnfold.equivalence import VerifyResult, verify
from bnfold.equivalence.session import ModelRunner
from bnfold.equivalence.source import open_model
from bnfold.errors import InputError, ModelLoadError, VerificationError


@pytest.fixture(scope="module")
def pair() -> tuple[onnx.ModelProto, onnx.ModelProto, onnx.ModelProto]:
    """(reference, correct fold, fold with one channel off by 1e-3)."""
    model = vm.conv_bn(np.random.default_rng(21))
    return model, inject.fold_batchnorms(model), inject.fold_batchnorms(model, bug="channel_off")


def test_sources_path_bytes_proto_ir(tmp_path: Path, pair: tuple) -> None:
    ref, good, _ = pair
    path = tmp_path / "good.onnx"
    onnx.save(good, path)
    for candidate in (path, str(path), good.SerializeToString(), good, ir.from_proto(good)):
        assert verify(ref, candidate, seeds=2), type(candidate)


def test_path_with_external_data(tmp_path: Path, pair: tuple) -> None:
    ref, good, bad = pair
    for name, model in (("ref", ref), ("good", good), ("bad", bad)):
        onnx.save_model(
            onnx.ModelProto.FromString(model.SerializeToString()),  # save_model mutates
            tmp_path / f"{name}.onnx",
            save_as_external_data=True,
            location=f"{name}.data",
            size_threshold=0,
        )
    assert (tmp_path / "ref.data").stat().st_size > 0
    assert verify(tmp_path / "ref.onnx", tmp_path / "good.onnx", seeds=2)
    assert not verify(tmp_path / "ref.onnx", tmp_path / "bad.onnx", seeds=2)
    loaded = ir.load(tmp_path / "good.onnx")  # onnx_ir model whose weights stay on disk
    assert verify(tmp_path / "ref.onnx", loaded, seeds=2)


def test_result_value(pair: tuple) -> None:
    ref, good, bad = pair
    ok = verify(ref, good, seeds=2)
    assert isinstance(ok, VerifyResult) and bool(ok) and ok.passed and not ok.failures
    assert "equivalent" in str(ok)
    text = ok.describe()
    for word in ("max_abs", "max_rel", "mean_abs", "cosine", "floor", "threshold", "y"):
        assert word in text
    data = json.loads(json.dumps(ok.to_dict(), allow_nan=False))
    assert data["schema_version"] == 2 and data["equivalent"] is True
    assert data["seeds"] == [0, 1]
    out = data["outputs"][0]
    for key in (
        "name",
        "passed",
        "max_abs",
        "max_rel",
        "mean_abs",
        "cosine",
        "floor",
        "tolerance",
        "threshold",
        "rtol",
        "atol",
        "failed_seeds",
        "runs",
    ):
        assert key in out
    assert len(out["runs"]) == 2
    failing = verify(ref, bad, seeds=2)
    assert not failing and failing.failures[0].name == "y"
    assert failing.to_dict()["equivalent"] is False
    assert failing.summary().startswith("NOT equivalent: y")


def test_regression_subpackage_import_shadowed_bnfold_verify(pair: tuple) -> None:
    """The verification package was named ``bnfold.verify``: importing it replaced the
    public ``bnfold.verify`` function with the module. It now lives in bnfold.equivalence."""
    import importlib
    import inspect

    importlib.import_module("bnfold.equivalence.api")
    assert inspect.isfunction(bnfold.verify)
    ref, good, _ = pair
    assert bnfold.verify(ref, good, seeds=1)
    assert bnfold.verify(ref, good, seeds=1)


def test_sessions_run_without_graph_optimisation(pair: tuple) -> None:
    with open_model(pair[0], "reference") as source:
        runner = ModelRunner(source, "cpu")
    level = runner.session.get_session_options().graph_optimization_level
    assert level == ort.GraphOptimizationLevel.ORT_DISABLE_ALL


def test_tolerances_loosen_globally_and_per_output(pair: tuple) -> None:
    ref, _, bad = pair
    assert not verify(ref, bad, seeds=2)
    assert verify(ref, bad, seeds=2, rtol=1e-2)
    assert verify(ref, bad, seeds=2, output_tolerances={"y": (None, 1.0)})
    assert verify(ref, bad, seeds=2, output_tolerances={"y": {"rtol": 1e-2}})
    with pytest.raises(InputError, match="unknown output"):
        verify(ref, bad, output_tolerances={"nope": (1.0, 1.0)})
    with pytest.raises(InputError):
        verify(ref, bad, rtol=-1.0)


def test_seeds(pair: tuple) -> None:
    ref, good, _ = pair
    assert verify(ref, good, seeds=[7, 9]).seeds == [7, 9]
    assert len(verify(ref, good, seeds=4).outputs[0].runs) == 4
    with pytest.raises(InputError):
        verify(ref, good, seeds=0)


def test_given_inputs(tmp_path: Path, pair: tuple) -> None:
    ref, good, bad = pair
    x = np.random.default_rng(0).standard_normal((2, 3, 12, 12)).astype(np.float32)
    np.savez(tmp_path / "x.npz", x=x)
    result = verify(ref, good, inputs=tmp_path / "x.npz")
    assert result and result.inputs["x"].startswith("float32 2x3x12x12 (given)")
    assert len(result.outputs[0].runs) == 1
    sets = [{"x": x}, {"x": x[:1].astype(np.float64)}]  # float64 is cast to the model's float32
    assert len(verify(ref, good, inputs=sets).outputs[0].runs) == 2
    assert not verify(ref, bad, inputs={"x": x})
    with pytest.raises(InputError, match="unknown input"):
        verify(ref, good, inputs={"x": x, "z": x})
    with pytest.raises(InputError, match="does not fit"):
        verify(ref, good, inputs={"x": x[:, :2]})
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(InputError):
        verify(ref, good, inputs=tmp_path / "bad.npz")


def test_shapes(pair: tuple) -> None:
    ref, good, _ = pair
    result = verify(ref, good, seeds=1, shapes={"x": (3, 3, 12, 12)})
    assert result.inputs["x"].startswith("float32 3x3x12x12")
    assert not result.defaulted_dims
    with pytest.raises(InputError):
        verify(ref, good, shapes={"x": (1, 4, 12, 12)})
    with pytest.raises(InputError):
        verify(ref, good, shapes={"q": (1,)})


def _two_input_model(y_name: str = "y", b_type: int = TensorProto.FLOAT, b_rank: int = 2):
    b_shape = ["N", 4] if b_rank == 2 else ["N", 4, 1]
    graph = helper.make_graph(
        [helper.make_node("Add", ["a", "b"], [y_name])],
        "g",
        [
            helper.make_tensor_value_info("a", TensorProto.FLOAT, ["N", 4]),
            helper.make_tensor_value_info("b", b_type, b_shape),
        ],
        [helper.make_tensor_value_info(y_name, TensorProto.FLOAT, None)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def test_mismatched_models_are_a_clear_error() -> None:
    base = _two_input_model()
    with pytest.raises(VerificationError, match="output names differ"):
        verify(base, _two_input_model(y_name="z"))
    renamed = _two_input_model()
    renamed.graph.input[1].name = "c"
    renamed.graph.node[0].input[1] = "c"
    with pytest.raises(VerificationError, match="input names differ"):
        verify(base, renamed)
    with pytest.raises(VerificationError, match="rank"):
        verify(base, _two_input_model(b_rank=3))
    static = _two_input_model()
    for value in static.graph.input:
        value.type.tensor_type.shape.dim[1].dim_value = 5
    with pytest.raises(VerificationError, match="shape"):
        verify(base, static)


def test_partial_inputs_are_synthesised() -> None:
    model = _two_input_model()
    a = np.ones((3, 4), np.float32)
    result = verify(model, model, inputs={"a": a})
    assert result
    assert result.inputs["b"].startswith("float32 3x4 (synthesised)")  # N bound by the given a
    sets = [{"a": a}, {"a": a[:1]}]  # each set binds N on its own
    assert len(verify(model, model, inputs=sets).outputs[0].runs) == 2


def test_unreadable_models(tmp_path: Path, pair: tuple) -> None:
    with pytest.raises(ModelLoadError, match="not found"):
        verify(tmp_path / "missing.onnx", pair[1])
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x00garbage")
    with pytest.raises(ModelLoadError):
        verify(pair[0], junk)
    with pytest.raises(ModelLoadError):
        verify(pair[0], 42)


def test_cuda_never_falls_back(pair: tuple) -> None:
    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("CUDA is available here")
    with pytest.raises(VerificationError, match="CUDA provider not available"):
        verify(pair[0], pair[1], provider="cuda")
    with pytest.raises(VerificationError, match="unknown provider"):
        verify(pair[0], pair[1], provider="tpu")


def test_runtime_failure_is_a_verification_error(pair: tuple) -> None:
    model = vm.embedding_gemm_bn(np.random.default_rng(3), vocab=10)
    with pytest.raises(VerificationError, match="onnxruntime cannot run the original model"):
        verify(model, model, inputs={"ids": np.array([11], np.int64)})
