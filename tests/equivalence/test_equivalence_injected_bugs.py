"""verify() fails every plausible folding bug and passes the correct fold on every seed.

Each model keeps its BatchNorm (random statistics); ``verify_inject.fold_batchnorms`` folds
it correctly with bnfold.foldmath, or with one bug injected into one BN's fold.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx
import pytest
from support import verify_inject as inject
from support import verify_models as vm

from bnfold.equivalence import verify

SEEDS = 5
COMMON_BUGS = (
    "eps_ignored",
    "mean_sign",
    "scale_twice",
    "bias_dropped",
    "beta_dropped",
    "channel_off",
)
CT_BUGS = ("ct_first_group", "ct_interleaved")


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


# name -> (builder, bugs that apply, BN index the bug goes into)
MODELS: dict[str, tuple[Callable[[], onnx.ModelProto], tuple[str, ...], int]] = {
    "conv": (lambda: vm.conv_bn(_rng(1)), COMMON_BUGS, 0),
    "conv_depthwise": (lambda: vm.conv_bn(_rng(2), c_in=8, c_out=8, group=8), COMMON_BUGS, 0),
    "conv_transpose_g2": (
        lambda: vm.conv_transpose_bn(_rng(3), c_in=4, c_out=6, group=2),
        COMMON_BUGS + CT_BUGS,
        0,
    ),
    "conv_transpose_g3": (
        lambda: vm.conv_transpose_bn(_rng(4), c_in=6, c_out=9, group=3),
        COMMON_BUGS + CT_BUGS,
        0,
    ),
    "gemm_transB": (lambda: vm.gemm_bn(_rng(5)), (*COMMON_BUGS, "gemm_beta_kept"), 0),
    "gemm": (lambda: vm.gemm_bn(_rng(6), trans_b=0), (*COMMON_BUGS, "gemm_beta_kept"), 0),
    "sigmoid_tiny": (
        lambda: vm.conv_bn(_rng(7), activation="Sigmoid", beta_offset=-10.0),
        COMMON_BUGS,
        0,
    ),
    "sigmoid_saturated": (
        lambda: vm.conv_bn(_rng(8), activation="Sigmoid", gamma_scale=50.0),
        COMMON_BUGS,
        0,
    ),
    "deep_middle_layer": (lambda: vm.deep_cnn(_rng(9)), COMMON_BUGS, 2),
}
BUG_CASES = [(m, bug) for m, (_, bugs, _) in MODELS.items() for bug in bugs]


@pytest.fixture(scope="module")
def built() -> dict[str, onnx.ModelProto]:
    return {name: build() for name, (build, _, _) in MODELS.items()}


@pytest.mark.parametrize("name", list(MODELS))
def test_correct_fold_passes_on_every_seed(built: dict[str, onnx.ModelProto], name: str) -> None:
    model = built[name]
    folded = inject.fold_batchnorms(model)
    assert inject.count_bn(folded) < inject.count_bn(model)
    result = verify(model, folded, seeds=SEEDS)
    assert result, result.describe()
    runs = [m for o in result.outputs for m in o.runs]
    assert len(runs) == SEEDS * len(result.outputs)
    assert all(m.passed for m in runs)


@pytest.mark.parametrize(("name", "bug"), BUG_CASES)
def test_injected_bug_fails(built: dict[str, onnx.ModelProto], name: str, bug: str) -> None:
    model = built[name]
    target = MODELS[name][2]
    broken = inject.fold_batchnorms(model, bug=bug, target=target, channel=1)
    assert _weights(broken) != _weights(inject.fold_batchnorms(model)), "bug changed nothing"
    result = verify(model, broken, seeds=SEEDS)
    assert not result, f"{bug} passed:\n{result.describe()}"
    assert result.failures
    assert "NOT equivalent" in result.describe()


def test_one_channel_off_by_1e3_is_far_above_the_floor(built: dict[str, onnx.ModelProto]) -> None:
    """The noise floor must not swallow a 1e-3 relative error in one output channel."""
    model = built["conv"]
    folded, broken = inject.fold_batchnorms(model), inject.fold_batchnorms(model, bug="channel_off")
    good = verify(model, folded, seeds=SEEDS, measure_floor=True).outputs[0]
    bad = verify(model, broken, seeds=SEEDS).outputs[0]  # it fails, so its floor is measured
    assert good.floor is not None and bad.floor is not None
    assert bad.floor == good.floor  # the floor belongs to the reference alone
    assert bad.max_abs > 50 * bad.floor
    assert good.max_abs <= 2 * good.floor


def _weights(model: onnx.ModelProto) -> list[bytes]:
    return [t.SerializeToString() for t in model.graph.initializer] + [
        n.SerializeToString() for n in model.graph.node
    ]
