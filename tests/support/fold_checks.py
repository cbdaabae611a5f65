"""Fold-and-check shortcuts for tests that build with :class:`support.graphs.Builder`.

``fold`` folds and checker-validates; ``assert_equivalent`` here returns the worst relative
error (scaled by max(1, max|ref|)) over a few seeds, where :mod:`support.onnx_checks` compares
output by output; ``ops`` counts op types in subgraphs and functions too. Every comparison runs
onnxruntime with all graph optimisations disabled (ORT fuses Conv+BN itself at higher levels,
which would hide folding bugs).
"""

from __future__ import annotations

import io
from collections import Counter
from typing import Any

import numpy as np
import onnx

from bnfold.onnx.api import OnnxFoldResult, fold_onnx
from bnfold.report import ReportEntry
from support.onnx_checks import random_feeds, session


def feeds_for(model: onnx.ModelProto, seed: int = 0) -> dict[str, np.ndarray]:
    """Random inputs for every graph input (symbolic dims become 2)."""
    return random_feeds(model, np.random.default_rng(seed))


def run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Outputs in graph order, under ORT_DISABLE_ALL."""
    return session(model).run(None, feeds)


def assert_equivalent(
    original: onnx.ModelProto, folded: onnx.ModelProto, rtol: float = 1e-5, seeds: int = 2
) -> float:
    """Both models at ORT_DISABLE_ALL on random inputs; return the worst relative error."""
    worst = 0.0
    for seed in range(seeds):
        feeds = feeds_for(original, seed)
        ref, got = run(original, feeds), run(folded, feeds)
        assert len(ref) == len(got)
        for r, g in zip(ref, got, strict=True):
            assert r.shape == g.shape and r.dtype == g.dtype
            r64, g64 = r.astype(np.float64), g.astype(np.float64)
            err = float(np.max(np.abs(r64 - g64)) / max(1.0, float(np.max(np.abs(r64)))))
            worst = max(worst, err)
    assert worst <= rtol, f"relative error {worst:.3g} > {rtol:g}"
    return worst


def fold(model: onnx.ModelProto, **opts: Any) -> tuple[onnx.ModelProto, OnnxFoldResult]:
    """Fold and check the result is a valid model; returns (proto, result)."""
    result = fold_onnx(model, **opts)
    proto = result.model
    onnx.checker.check_model(proto, full_check=True)
    return proto, result


def ops(model: onnx.ModelProto) -> Counter[str]:
    """Op counts over the main graph, subgraphs and functions."""
    counts: Counter[str] = Counter()
    graphs: list[Any] = [model.graph, *model.functions]
    while graphs:
        g = graphs.pop()
        for node in g.node:
            counts[node.op_type] += 1
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    graphs.append(attr.g)
    return counts


def bn_entries(result: OnnxFoldResult) -> list[ReportEntry]:
    return result.report.batchnorms


def only_bn(result: OnnxFoldResult) -> ReportEntry:
    entries = bn_entries(result)
    assert len(entries) == 1, entries
    return entries[0]


def export_torch(module: Any, inputs: tuple[Any, ...], **kwargs: Any) -> onnx.ModelProto:
    """Legacy torch export that keeps BN unfolded (do_constant_folding=False)."""
    import torch

    buf = io.BytesIO()
    kwargs.setdefault("opset_version", 17)
    torch.onnx.export(module, inputs, buf, dynamo=False, do_constant_folding=False, **kwargs)
    return onnx.load_from_string(buf.getvalue())


def randomize_bn(module: Any, seed: int = 0) -> Any:
    """Random running stats and affine parameters for every torch BN module (in place)."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                n = m.num_features
                sign = torch.where(torch.rand(n, generator=gen) < 0.3, -1.0, 1.0)
                m.weight.copy_(sign * (torch.rand(n, generator=gen) + 0.5))
                m.bias.copy_(torch.randn(n, generator=gen) * 0.5)
                m.running_mean.copy_(torch.randn(n, generator=gen) * 0.5)
                m.running_var.copy_(torch.rand(n, generator=gen) * 1.5 + 0.25)
    return module
