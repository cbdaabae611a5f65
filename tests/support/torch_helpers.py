"""Shared helpers for the torch tests: tiny models with randomised BN, fold-and-check."""

from __future__ import annotations

import torch
from torch import nn

import bnfold
from bnfold.testing.zoo import randomize_bn
from bnfold.torch import TorchFoldResult


def randomise_bn(module: nn.Module, seed: int) -> nn.Module:
    """Random running mean/var and affine parameters for every BN (the ONNX export tests' draw:
    μ ~ N(0, 1), σ² in [0.3, 2.5], |γ| in [0.5, 2] of either sign, β ~ N(0, 1)); eval mode."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                c = m.num_features
                m.running_mean.copy_(torch.randn(c, generator=gen))
                m.running_var.copy_(torch.rand(c, generator=gen) * 2.2 + 0.3)
                sign = torch.where(torch.rand(c, generator=gen) < 0.5, -1.0, 1.0)
                m.weight.copy_(sign * (torch.rand(c, generator=gen) * 1.5 + 0.5))
                m.bias.copy_(torch.randn(c, generator=gen))
    return module.eval()


def prepared(model: nn.Module, seed: int = 0) -> nn.Module:
    """Randomise every BN's statistics and affine parameters, then switch to eval."""
    torch.manual_seed(seed)
    return randomize_bn(model, seed).eval()


def fold_checked(model: nn.Module, *inputs: torch.Tensor) -> TorchFoldResult:
    """Fold with example inputs and assert the outputs match the original independently."""
    with torch.no_grad():
        expected = model(*inputs)
    result = bnfold.fold(model, example_inputs=inputs)
    with torch.no_grad():
        got = result.model(*inputs)
    for e, g in zip(_flat(expected), _flat(got), strict=True):
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-5)
    assert result.verification
    return result


def statuses(result: TorchFoldResult) -> dict[str, str]:
    return {e.name: e.status for e in result.report.batchnorms}


def modules_of(model: nn.Module, kind: type) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, kind)]


def _flat(x: object) -> list[torch.Tensor]:
    if isinstance(x, torch.Tensor):
        return [x]
    return [t for item in x for t in _flat(item)]  # type: ignore[attr-defined]
