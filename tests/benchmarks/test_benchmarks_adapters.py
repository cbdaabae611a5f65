"""The comparison benchmark's tool adapters and worker isolation (benchmarks/ scripts import
by bare name through pytest's ``pythonpath``, as they do when run)."""

from __future__ import annotations

import adapters
import onnx
import pytest
from isolation import ToolWorkers
from measure import max_error, op_counts, reference_outputs

CLASSICAL = ("onnxoptimizer", "onnxsim", "onnxslim", "ort-basic", "onnxscript")


@pytest.mark.parametrize("tool", CLASSICAL)
def test_other_tools_fold_a_plain_conv_bn(tool, conv_bn_path, tmp_path):
    out = tmp_path / f"{tool}.onnx"
    result = adapters.run_job(tool, conv_bn_path, str(out))
    if result["status"] == "not installed":
        pytest.skip(f"{tool} not installed")
    assert result["status"] == "ok", result
    assert result["seconds"] > 0
    assert op_counts(str(out))["BatchNormalization"] == 0
    assert max_error(str(out), reference_outputs(conv_bn_path)).equivalent


def test_a_failing_tool_is_a_status_not_an_exception(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not onnx")
    result = adapters.run_job("ort-basic", str(bad), str(tmp_path / "out.onnx"))
    assert result["status"].startswith("error: ")
    assert "\n" not in result["status"]


def test_missing_tool_reads_not_installed(monkeypatch):
    fake = adapters.Adapter("ghost", ("no_such_module_xyz",), lambda s, d: None, "")
    monkeypatch.setitem(adapters.ADAPTERS, "ghost", fake)
    assert adapters.run_job("ghost", "a", "b") == {"status": "not installed"}


def test_max_error_flags_a_wrong_model(conv_bn_proto, conv_bn_path, tmp_path):
    wrong = tmp_path / "wrong.onnx"
    w = next(t for t in conv_bn_proto.graph.initializer if t.name == "w")
    data = onnx.numpy_helper.to_array(w).copy()
    data[0] *= 1.001  # one channel off by 1e-3 relative
    w.CopyFrom(onnx.numpy_helper.from_array(data, "w"))
    onnx.save(conv_bn_proto, wrong)
    check = max_error(str(wrong), reference_outputs(conv_bn_path))
    assert not check.equivalent
    assert check.max_abs > 0


def test_worker_survives_a_crash(conv_bn_path, tmp_path):
    with ToolWorkers(timeout_s=120) as workers:
        assert workers.run("ort-basic", conv_bn_path, str(tmp_path / "a.onnx"))["status"] == "ok"
        process, _ = workers._workers["ort-basic"]
        process.kill()  # as a segfault in the tool would
        process.join()
        crashed = workers.run("ort-basic", conv_bn_path, str(tmp_path / "b.onnx"))
        assert crashed["status"].startswith("error: crashed")
        again = workers.run("ort-basic", conv_bn_path, str(tmp_path / "c.onnx"))
        assert again["status"] == "ok"


def test_floor_is_a_bare_round_trip_that_folds_nothing(conv_bn_path, tmp_path):
    out = tmp_path / "floor.onnx"
    result = adapters.run_job(adapters.FLOOR.name, conv_bn_path, str(out))
    assert result["status"] == "ok", result
    assert op_counts(str(out)) == op_counts(conv_bn_path)
    assert max_error(str(out), reference_outputs(conv_bn_path)).equivalent
