"""Cheaper verification gives the same verdicts: sessions side by side, the reference half
started before the candidate exists, weights handed to onnxruntime as arrays."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from support import verify_inject as inject
from support import verify_models as vm

from bnfold.equivalence import skeleton, threads, verify
from bnfold.equivalence.jitter import jittered_copy, jittered_skeleton, open_jittered
from bnfold.equivalence.pending import PendingVerification
from bnfold.equivalence.source import join, open_model
from bnfold.errors import ModelLoadError


def _model(activation: str | None = "Sigmoid") -> onnx.ModelProto:
    """Conv → BN → Sigmoid with weights large enough to travel as arrays (probes too)."""
    return vm.conv_bn(np.random.default_rng(5), c_in=16, c_out=32, activation=activation)


@pytest.fixture(scope="module")
def models() -> tuple[onnx.ModelProto, onnx.ModelProto, onnx.ModelProto]:
    """(reference, correct fold, fold whose BN β is lost)."""
    ref = _model()
    return ref, inject.fold_batchnorms(ref), inject.fold_batchnorms(ref, bug="beta_dropped")


@pytest.fixture
def budget():
    """Restore the process's thread budget after a test changes it."""
    yield threads.set_thread_budget
    threads.set_thread_budget(None)


def _same(a, b) -> None:
    da, db = a.to_dict(), b.to_dict()
    assert da == db


def test_thread_plan_shares_the_budget() -> None:
    assert threads.plan(3, budget=1) == threads.Plan(workers=1, intra_op=1)
    assert threads.plan(3, budget=2) == threads.Plan(workers=2, intra_op=1)
    assert threads.plan(3, budget=16) == threads.Plan(workers=3, intra_op=5)
    assert threads.plan(2, budget=3) == threads.Plan(workers=2, intra_op=1)
    with pytest.raises(ValueError):
        threads.set_thread_budget(0)


def test_side_by_side_sessions_give_the_same_result_as_one_at_a_time(models, budget) -> None:
    ref, good, bad = models
    budget(1)  # one session at a time, one thread each
    serial = [verify(ref, cand, seeds=3) for cand in (good, bad)]
    budget(3)  # sessions side by side (two, three once the floor is needed), one thread each
    parallel = [verify(ref, cand, seeds=3) for cand in (good, bad)]
    assert serial[0] and not serial[1]
    for a, b in zip(serial, parallel, strict=True):
        _same(a, b)
    assert any(o.probe for o in parallel[0].outputs)  # the probe was compared as well


def test_pending_verification_gives_what_verify_gives(models, tmp_path: Path) -> None:
    ref, good, bad = models
    path = tmp_path / "ref.onnx"
    onnx.save(ref, path)
    for cand in (good, bad):
        with PendingVerification(path, seeds=2) as pending:
            got = pending.verify(cand)
        _same(got, verify(path, cand, seeds=2))
    assert not got  # the β-dropped fold is still caught


def test_pending_verification_replans_when_the_candidate_fixes_a_dim(tmp_path: Path) -> None:
    """The reference's symbolic batch is static in the candidate: the sets are planned again
    on the merged specs, as ``verify`` plans them."""
    ref = _model(activation=None)
    cand = inject.fold_batchnorms(ref)
    cand.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 2
    got = PendingVerification(ref, seeds=2).verify(cand)
    want = verify(ref, cand, seeds=2)
    _same(got, want)
    assert got.input_shapes["x"][0] == 2


def test_pending_verification_limits_inputs_to_the_model(models, tmp_path: Path) -> None:
    ref, good, _ = models
    data = {"x": np.ones((1, 16, 12, 12), np.float32), "other": np.zeros(3, np.float32)}
    shapes = {"x": (1, 16, 12, 12), "other": (3,)}
    pending = PendingVerification(
        ref, inputs=[data], shapes=shapes, only_matching_inputs=True, seeds=1
    )
    result = pending.verify(good)
    assert result and result.inputs["x"].endswith("(given)")


def test_pending_verification_reports_a_bad_reference_when_asked(tmp_path: Path) -> None:
    pending = PendingVerification(tmp_path / "missing.onnx")
    with pytest.raises(ModelLoadError, match="not found"):
        pending.verify(_model())


def test_pending_verification_closed_unused_stops_its_thread(models) -> None:
    ref, _, _ = models
    pending = PendingVerification(ref, seeds=5)
    pending.close()
    assert not pending._thread.is_alive()
    pending.close()  # idempotent
    with pytest.raises(RuntimeError):
        pending.verify(ref)


def test_jittered_skeleton_moves_what_jittered_copy_moves() -> None:
    """The same rng moves the same values (initializers and Constant nodes): the noise
    floor is what it was when the jittered copy was a whole proto."""
    model = _model()
    k = numpy_helper.from_array(np.full((1, 32, 1, 1), 2.0, np.float32))
    model.graph.node.insert(0, onnx.helper.make_node("Constant", [], ["k"], value=k))
    model.graph.node.append(onnx.helper.make_node("Mul", ["y", "k"], ["y2"]))
    old = jittered_copy(model, np.random.default_rng(3), 1)
    new = join(jittered_skeleton(skeleton.split(model), np.random.default_rng(3), 1))
    for a, b in zip(old.graph.initializer, new.graph.initializer, strict=True):
        assert a.name == b.name
        np.testing.assert_array_equal(numpy_helper.to_array(a), numpy_helper.to_array(b))
    assert old.graph.node[0] == new.graph.node[0]  # the jittered Constant
    before = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    after = {t.name: numpy_helper.to_array(t) for t in new.graph.initializer}
    assert not np.array_equal(before["W"], after["W"])


def test_split_and_join_round_trip_with_external_data(tmp_path: Path) -> None:
    model = _model()
    path = tmp_path / "ext.onnx"
    onnx.save(model, path, save_as_external_data=True, location="ext.data", size_threshold=0)
    with open_model(path, "reference") as src:
        parts = src.skeleton()
    assert "W" in parts.arrays and parts.proto.ByteSize() < 4096
    small = [t for t in parts.proto.graph.initializer if t.name not in parts.arrays]
    assert all(not onnx.external_data_helper.uses_external_data(t) for t in small)
    back = {t.name: numpy_helper.to_array(t) for t in join(parts).graph.initializer}
    for t in _model().graph.initializer:  # onnx.save moved ``model``'s data out
        np.testing.assert_array_equal(back[t.name], numpy_helper.to_array(t))


def test_regression_weight_jitter_reserialised_the_whole_model() -> None:
    """The jittered reference was a full proto copy, serialised and parsed again by
    onnxruntime; now only its structure is serialised and the weights go as arrays."""
    model = _model()
    with (
        open_model(model, "reference") as src,
        open_jittered(src, np.random.default_rng(0), 1) as jittered,
    ):
        assert jittered.initializers and "W" in jittered.initializers
        assert len(jittered.payload) < model.ByteSize() / 4
