"""The CUDA provider path (skipped without onnxruntime-gpu and a GPU)."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from support import verify_inject as inject
from support import verify_models as vm

from bnfold.equivalence import verify

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        "CUDAExecutionProvider" not in ort.get_available_providers(),
        reason="needs onnxruntime-gpu with CUDAExecutionProvider",
    ),
]


def test_cuda_correct_fold_passes_and_bug_fails() -> None:
    model = vm.deep_cnn(np.random.default_rng(51), head="Sigmoid", head_offset=-10.0)
    result = verify(model, inject.fold_batchnorms(model), seeds=3, provider="cuda")
    assert result, result.describe()
    assert result.provider == "cuda"
    broken = inject.fold_batchnorms(model, bug="channel_off", target=2)
    assert not verify(model, broken, seeds=3, provider="cuda")
