"""Real exports of small torch CNNs (BN kept via do_constant_folding=False): correct folds,
including torch's own fp32 folding, pass on every seed; injected bugs fail."""

from __future__ import annotations

import warnings

import onnx
import pytest

torch = pytest.importorskip("torch")

from support import verify_inject as inject  # noqa: E402
from support import verify_nets as nets  # noqa: E402

from bnfold.equivalence import verify  # noqa: E402

SEEDS = 5
SHAPE = (1, 3, 32, 32)
# name -> (network, BN index for the bugs, bugs that apply)
NETS = {
    "resnet": (
        lambda: nets.ResNetish(),
        4,
        ("eps_ignored", "mean_sign", "scale_twice", "beta_dropped", "channel_off"),
    ),
    "decoder": (
        lambda: nets.Decoder(),
        2,  # the first grouped ConvTranspose (32 → 24, groups 2)
        ("eps_ignored", "bias_dropped", "channel_off", "ct_first_group", "ct_interleaved"),
    ),
    "text_detector": (  # sigmoid outputs around 1e-4: tiny
        lambda: nets.TextDetector(),
        2,
        ("eps_ignored", "mean_sign", "scale_twice", "channel_off"),
    ),
}


@pytest.fixture(scope="module")
def exported() -> dict[str, tuple[onnx.ModelProto, onnx.ModelProto]]:
    """name -> (export with BN, export folded by torch itself)."""
    out = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, (build, _, _) in NETS.items():
            torch.manual_seed(0)
            module = nets.randomise_bn(build(), 0, (4, *SHAPE[1:]))
            out[name] = (nets.export(module, SHAPE), nets.export(module, SHAPE, True))
    return out


@pytest.mark.parametrize("name", list(NETS))
def test_correct_folds_pass(exported: dict, name: str) -> None:
    ref, torch_folded = exported[name]
    mine = inject.fold_batchnorms(ref)
    assert inject.count_bn(mine) == 0 < inject.count_bn(ref)
    for candidate in (mine, torch_folded):
        result = verify(ref, candidate, seeds=SEEDS)
        assert result, result.describe()
        assert all(m.passed for o in result.outputs for m in o.runs)


def test_text_detector_outputs_are_tiny(exported: dict) -> None:
    ref, torch_folded = exported["text_detector"]
    result = verify(ref, torch_folded, seeds=SEEDS)
    y = next(o for o in result.outputs if o.name == "y")
    assert max(m.ref_max for m in y.runs) < 0.05


@pytest.mark.parametrize(
    ("name", "bug"), [(n, b) for n, (_, _, bugs) in NETS.items() for b in bugs]
)
def test_injected_bugs_fail(exported: dict, name: str, bug: str) -> None:
    ref = exported[name][0]
    broken = inject.fold_batchnorms(ref, bug=bug, target=NETS[name][1], channel=1)
    result = verify(ref, broken, seeds=SEEDS)
    assert not result, result.describe()
