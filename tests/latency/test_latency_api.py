"""bench(): result shape, levels, comparison and errors."""

from __future__ import annotations

import importlib
import inspect
import json

import onnx_ir
import pytest

import bnfold
from bnfold.errors import DependencyError, InputError, ModelLoadError
from bnfold.latency import BenchResult, bench, bench_models
from bnfold.latency import api as api_module
from bnfold.latency.timing import Latency, Speedup


def test_single_model_result_shape(conv_bn_path):
    result = bench(conv_bn_path, levels=("disable",), iters=4, warmup=1, threads=1)
    assert isinstance(result, BenchResult)
    assert [lev.level for lev in result.levels] == ["disable"]
    (run,) = result.levels[0].runs
    assert result.levels[0].rounds == 4
    assert run.latency.runs == 4
    assert run.latency.min_ms <= run.latency.median_ms <= run.latency.p90_ms
    assert run.speedup is None
    assert result.speedups() == {}
    assert result.inputs == {"x": {"shape": [1, 3, 8, 8], "dtype": "float32"}}
    assert result.models[0].batchnorm == 1


def test_comparison_gives_pairwise_speedup_per_level(conv_bn_path, conv_bn_proto):
    result = bench(conv_bn_path, vs=conv_bn_proto, levels=["disable", "all"], iters=3, warmup=0)
    assert [lev.level for lev in result.levels] == ["disable", "all"]
    for lev in result.levels:
        base, cand = lev.runs
        assert (base.label, cand.label) == ("conv_bn.onnx", "candidate")
        assert base.speedup is None
        assert isinstance(cand.speedup, Speedup)
        assert cand.speedup.pairs == 3
        assert result.speedup(lev.level) == cand.speedup.median
    assert set(result.speedups()) == {"disable", "all"}
    assert result.headline().startswith("candidate vs conv_bn.onnx: ")


@pytest.mark.parametrize(
    ("threads", "compared", "spinning"),
    [(None, False, True), (None, True, False), (2, True, False), (1, True, True)],
)
def test_regression_interleaved_sessions_steal_cores_while_spinning(
    conv_bn_path, monkeypatch, threads, compared, spinning
):
    """Two multi-threaded sessions timed in turn: the idle pool of one busy-waited on the
    cores the other needed, and `bnfold bench --vs` ratios swung from 0.5× to 1.7×."""
    seen: list[bool] = []
    real = api_module.create_session

    def spy(*args, **kwargs):
        seen.append(kwargs["spinning"])
        return real(*args, **kwargs)

    monkeypatch.setattr(api_module, "create_session", spy)
    vs = conv_bn_path if compared else None
    result = bench(conv_bn_path, vs=vs, levels=["all"], iters=2, warmup=0, threads=threads)
    assert seen == [spinning] * (2 if compared else 1)
    assert result.spinning is spinning
    assert result.to_dict()["thread_spinning"] is spinning
    assert ("no spinning" in result.describe()) is not spinning


def test_public_entry_point_and_labels(conv_bn_path, conv_bn_proto):
    importlib.import_module("bnfold.latency.api")  # the package must not shadow bnfold.bench()
    assert inspect.isfunction(bnfold.bench)

    result = bnfold.bench(
        conv_bn_path,
        vs=onnx_ir.from_proto(conv_bn_proto),
        vs_label="folded",
        levels="all",
        iters=2,
        warmup=0,
    )
    assert [m.label for m in result.models] == ["conv_bn.onnx", "folded"]
    assert [lev.level for lev in result.levels] == ["all"]


def test_same_path_twice_gets_distinct_labels(conv_bn_path):
    result = bench(conv_bn_path, vs=conv_bn_path, levels=("disable",), iters=1, warmup=0)
    labels = [m.label for m in result.models]
    assert len(set(labels)) == 2


def test_many_models_round_robin(conv_bn_path, conv_bn_proto):
    models = [("a", conv_bn_path), ("b", conv_bn_proto), ("c", conv_bn_proto.SerializeToString())]
    result = bench_models(models, levels=("basic",), iters=2, warmup=0)
    runs = result.levels[0].runs
    assert [r.label for r in runs] == ["a", "b", "c"]
    assert [r.speedup is None for r in runs] == [True, False, False]


def test_auto_iters_from_warmup(conv_bn_path):
    result = bench(conv_bn_path, levels=("disable",), warmup=0)
    assert result.warmup == 1  # auto needs one round to size the run
    assert 10 <= result.levels[0].rounds <= 500


def test_json_schema(conv_bn_path, conv_bn_proto):
    data = json.loads(json.dumps(bench(conv_bn_path, vs=conv_bn_proto, iters=2).to_dict()))
    assert set(data) == {
        "onnxruntime",
        "provider",
        "threads",
        "thread_spinning",
        "warmup",
        "inputs",
        "models",
        "levels",
        "speedup",
    }
    assert set(data["models"][0]) == {
        "label",
        "size_bytes",
        "nodes",
        "batchnorm",
        "dropout",
        "op_counts",
    }
    run = data["levels"][1]["runs"][1]
    latency_keys = set(Latency.__dataclass_fields__)
    assert {"label", "session_ms", "speedup"} | latency_keys == set(run)
    assert set(run["speedup"]) == {"median", "p10", "p90", "pairs"}
    assert data["levels"][0]["runs"][0]["speedup"] is None
    assert [lev["level"] for lev in data["levels"]] == ["disable", "all"]


def test_describe_lists_models_and_levels(conv_bn_path, conv_bn_proto):
    text = bench(conv_bn_path, vs=conv_bn_proto, levels=("basic", "extended"), iters=2).describe()
    for word in ("conv_bn.onnx", "candidate", "basic", "extended", "speed-up", "×"):
        assert word in text


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"levels": ("fast",)}, "unknown optimisation level"),
        ({"levels": ()}, "no optimisation level"),
        ({"iters": 0}, "iters must be at least 1"),
        ({"warmup": -1}, "warmup must not be negative"),
        ({"threads": 0}, "threads must be at least 1"),
        ({"provider": "tpu"}, "unknown provider"),
        ({"shapes": {"nope": (1,)}}, "no model input"),
    ],
)
def test_bad_options(conv_bn_path, options, message):
    with pytest.raises(InputError, match=message):
        bench(conv_bn_path, **{"iters": 1, "warmup": 0, **options})


def test_models_with_different_inputs_are_refused(conv_bn_path, relu_path):
    with pytest.raises(InputError, match="must have the same inputs"):
        bench(conv_bn_path, vs=relu_path, iters=1)


def test_missing_file(tmp_path):
    with pytest.raises(ModelLoadError, match="not found"):
        bench(str(tmp_path / "missing.onnx"))


def test_cuda_unavailable_fails_before_loading(monkeypatch, tmp_path):
    import onnxruntime as ort

    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    with pytest.raises(DependencyError, match="CUDA provider not available"):
        bench(str(tmp_path / "missing.onnx"), provider="cuda")


def test_run_failure_hints_at_shapes(tmp_path):
    import numpy as np
    import onnx
    import onnx.numpy_helper as nh
    import onnx.parser

    model = onnx.parser.parse_model(
        """
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[N,3,H,W] x) => (float[N,2,A,B] y) <float[2,3,3,3] w> {
          y = Conv (x, w)
        }
        """
    )
    model.graph.initializer.append(nh.from_array(np.ones((2, 3, 3, 3), np.float32), "w"))
    path = tmp_path / "spatial.onnx"
    onnx.save(model, path)
    with pytest.raises(InputError, match="symbolic dimensions were set to 1"):
        bench(str(path), levels=("disable",), iters=1, warmup=0)
    result = bench(str(path), levels=("disable",), iters=1, warmup=0, shapes={"x": (1, 3, 5, 5)})
    assert result.inputs["x"]["shape"] == [1, 3, 5, 5]
