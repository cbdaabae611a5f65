"""End to end: bnfold.fold folds, bnfold.verify proves it (path, ModelProto and onnx_ir)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
from support import verify_models as vm

import bnfold
from bnfold.testing import assert_equivalent

pytest.importorskip("bnfold.onnx.api")


@pytest.mark.parametrize(
    "build",
    [
        lambda: vm.conv_bn(np.random.default_rng(41)),
        lambda: vm.conv_transpose_bn(np.random.default_rng(42), c_in=4, c_out=6, group=2),
        lambda: vm.gemm_bn(np.random.default_rng(43)),
        lambda: vm.deep_cnn(np.random.default_rng(44), head="Sigmoid", head_offset=-10.0),
    ],
    ids=["conv", "conv_transpose_g2", "gemm", "deep_tiny_sigmoid"],
)
def test_fold_then_verify(tmp_path: Path, build: Callable[[], onnx.ModelProto]) -> None:
    model = build()
    src = tmp_path / "model.onnx"
    onnx.save(model, src)
    folded = bnfold.fold(src)
    out = folded.save(tmp_path / "model.folded.onnx")
    assert not any(n.op_type == "BatchNormalization" for n in onnx.load(out).graph.node)
    assert_equivalent(src, out, seeds=5)
    assert bnfold.verify(model, folded.model, seeds=2)  # ModelProto
    assert bnfold.verify(src, folded.ir_model, seeds=2)  # onnx_ir.Model
