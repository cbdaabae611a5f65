"""Optimisation levels, threads and the CUDA availability check."""

from __future__ import annotations

import onnxruntime as ort
import pytest

from bnfold.cli import bench_cmd
from bnfold.errors import DependencyError, InputError, ModelLoadError
from bnfold.latency import sessions

SPIN = "session.intra_op.allow_spinning"

ORT_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


@pytest.mark.parametrize("level", sessions.LEVELS)
def test_level_maps_to_ort_enum(level):
    assert sessions.session_options(level).graph_optimization_level == ORT_LEVELS[level]


def test_threads_set_intra_op():
    options = sessions.session_options("all", threads=3)
    assert options.intra_op_num_threads == 3
    assert options.inter_op_num_threads == 1


def config_entry(options: ort.SessionOptions, key: str) -> str | None:
    try:
        return options.get_session_config_entry(key)
    except RuntimeError:  # onnxruntime raises for a key never set
        return None


def test_spinning_can_be_switched_off():
    assert config_entry(sessions.session_options("all"), SPIN) is None  # onnxruntime's default
    options = sessions.session_options("all", spinning=False)
    assert config_entry(options, SPIN) == "0"
    assert config_entry(options, "session.inter_op.allow_spinning") == "0"


def test_unknown_level_and_provider_are_input_errors():
    with pytest.raises(InputError, match="unknown optimisation level"):
        sessions.check_level("max")
    with pytest.raises(InputError, match="unknown provider"):
        sessions.providers_for("tpu")


def test_cli_names_match_library():
    assert bench_cmd.LEVEL_NAMES == sessions.LEVELS
    assert bench_cmd.PROVIDER_NAMES == sessions.PROVIDERS


def test_cuda_unavailable_is_a_one_line_dependency_error(monkeypatch):
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    with pytest.raises(DependencyError) as info:
        sessions.providers_for("cuda")
    assert "\n" not in str(info.value)
    assert "onnxruntime-gpu" in str(info.value)


@pytest.mark.filterwarnings("ignore:Specified provider")
def test_cuda_listed_but_session_falls_back_to_cpu(monkeypatch, conv_bn_path):
    if sessions.cuda_available():
        pytest.skip("a real CUDA provider is present")
    monkeypatch.setattr(
        ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"]
    )
    with pytest.raises(DependencyError, match="CUDA provider not available"):
        sessions.create_session(conv_bn_path, "all", provider="cuda")


@pytest.mark.gpu
def test_cuda_session_when_present(conv_bn_path):
    if not sessions.cuda_available():
        pytest.skip("CUDAExecutionProvider not available")
    timed = sessions.create_session(conv_bn_path, "all", provider="cuda")
    assert timed.session.get_providers()[0] == "CUDAExecutionProvider"


def test_create_session_times_and_reports_bad_files(tmp_path, conv_bn_path):
    timed = sessions.create_session(conv_bn_path, "disable", threads=1)
    assert timed.create_ms > 0
    assert [i.name for i in timed.session.get_inputs()] == ["x"]
    with pytest.raises(ModelLoadError, match="not found"):
        sessions.create_session(str(tmp_path / "missing.onnx"), "disable")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(ModelLoadError, match="cannot load"):
        sessions.create_session(str(bad), "disable")
