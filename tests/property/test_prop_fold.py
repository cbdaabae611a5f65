"""Property: folding any random linear-layer → BN graph keeps it equivalent.

Graphs mix Conv/ConvTranspose (rank 1–3, groups, strides, dilations, pads, output
padding), Gemm (transB, alpha, beta, C) and MatMul (+ bias Add, rank-3 tokens), with
Dropout in between, extra consumers, weight-sharing twins, fp16/fp32/fp64. The judge is
onnxruntime with ORT_DISABLE_ALL on both sides, tolerance scaled to output magnitude.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from hypothesis import given, note
from support.prop_graphs import Case, build, cases
from support.prop_profiles import profile

import bnfold
from bnfold.workflow import FoldFileOptions, fold_file

RTOL = {"float16": 2e-2, "float32": 1e-4, "float64": 1e-10}


def run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feeds), strict=True))


def assert_close(ref: np.ndarray, cand: np.ndarray, dtype: str, name: str) -> None:
    """|cand − ref| ≤ rtol·max(1, max|ref|): scaled to the output's magnitude."""
    assert cand.shape == ref.shape and cand.dtype == ref.dtype, name
    r, c = ref.astype(np.float64), cand.astype(np.float64)
    assert np.array_equal(np.isfinite(r), np.isfinite(c)), f"{name}: non-finite pattern differs"
    finite = np.isfinite(r)
    scale = max(1.0, float(np.max(np.abs(r[finite]), initial=0.0)))
    err = float(np.max(np.abs(r[finite] - c[finite]), initial=0.0))
    assert err <= RTOL[dtype] * scale, f"{name}: max error {err:.3g} vs scale {scale:.3g}"


@profile(share=1.0)
@given(case=cases())
def test_folding_random_graphs_is_exact(case: Case) -> None:
    built = build(case)
    original = built.model.SerializeToString()
    result = bnfold.fold(built.model)
    folded = result.model
    note(result.report.describe())

    assert built.model.SerializeToString() == original, "the caller's model was modified"
    onnx.checker.check_model(folded, full_check=True)
    assert [i.name for i in folded.graph.input] == [i.name for i in built.model.graph.input]
    assert [o.name for o in folded.graph.output] == [o.name for o in built.model.graph.output]
    assert not any(n.op_type == "Dropout" for n in folded.graph.node)
    counts = result.report.counts()["batchnorm"]
    assert counts["found"] == built.bn_count
    assert counts["folded"] + counts["rewritten"] >= built.must_fold, result.report.describe()
    left = sum(n.op_type == "BatchNormalization" for n in folded.graph.node)
    assert left <= built.bn_count - built.must_fold

    rng = np.random.default_rng(case.seed)
    feeds = {"x": rng.normal(0, 1, built.input_shape).astype(case.dtype)}
    ref, cand = run(built.model, feeds), run(folded, feeds)
    assert set(ref) == set(cand)
    for name in ref:
        assert_close(ref[name], cand[name], case.dtype, name)

    again = bnfold.fold(folded).report.counts()["batchnorm"]
    assert again["folded"] == 0, "a second fold still found something to fold"


@profile(share=0.15)
@given(case=cases())
def test_files_with_external_data_fold_like_models_in_memory(case: Case, tmp_path_factory) -> None:
    """The file path (validation, external data, atomic save) gives the same model."""
    built = build(case)
    folder = tmp_path_factory.mktemp("prop")
    src = folder / "m.onnx"
    copy = onnx.ModelProto()
    copy.CopyFrom(built.model)  # onnx.save with external data rewrites its argument
    onnx.save(copy, src, save_as_external_data=True, location="m.data", size_threshold=0)
    outcome = fold_file(src, FoldFileOptions(verify=False))
    assert outcome.error is None and outcome.written, outcome.error
    on_disk = onnx.load(folder / "m.folded.onnx")  # reads its external data too
    in_memory = bnfold.fold(built.model).model
    rng = np.random.default_rng(case.seed)
    feeds = {"x": rng.normal(0, 1, built.input_shape).astype(case.dtype)}
    ref, a, b = run(built.model, feeds), run(on_disk, feeds), run(in_memory, feeds)
    for name in ref:
        assert_close(ref[name], a[name], case.dtype, name)
        np.testing.assert_array_equal(a[name], b[name])
