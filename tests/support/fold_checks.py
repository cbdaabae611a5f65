"""Helpers for the extra-fold tests: tiny graphs with random BN, ORT_DISABLE_ALL comparisons.

Every BN built here has random γ (both signs), β, μ and σ²; every comparison runs the
original and the folded model in onnxruntime with all graph optimisations disabled (ORT
fuses Conv+BN itself at higher levels, which would hide folding bugs).
"""

from __future__ import annotations

import io
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from bnfold.onnx.api import OnnxFoldResult, fold_onnx
from bnfold.report import ReportEntry

OPSET = 17


class Builder:
    """Collects nodes and initializers; ``model()`` returns a checked, shape-inferred model."""

    def __init__(self, seed: int = 0, dtype: Any = np.float32) -> None:
        self.rng = np.random.default_rng(seed)
        self.dtype = np.dtype(dtype)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self._n = 0

    def name(self, base: str) -> str:
        self._n += 1
        return f"{base}{self._n}"

    def const(self, array: np.ndarray, base: str = "c") -> str:
        name = self.name(base)
        self.inits.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def weight(self, shape: Sequence[int], base: str = "w", scale: float = 0.5) -> str:
        return self.const(self.rng.normal(0, scale, tuple(shape)).astype(self.dtype), base)

    def op(self, op_type: str, inputs: Sequence[str], n_out: int = 1, **attrs: Any) -> str:
        name = self.name(op_type.lower())
        outs = [name] + [f"{name}_out{i}" for i in range(1, n_out)]
        self.nodes.append(helper.make_node(op_type, list(inputs), outs, name=name, **attrs))
        return name

    def bn(self, x: str, c: int, eps: float = 1e-5, **attrs: Any) -> str:
        """A BatchNormalization with random statistics (γ of both signs)."""
        p = bn_params(self.rng, c, self.dtype)
        names = [self.const(p[k], f"bn_{k}") for k in ("scale", "bias", "mean", "var")]
        return self.op("BatchNormalization", [x, *names], epsilon=eps, **attrs)

    def model(
        self,
        inputs: dict[str, Sequence[int | str]],
        outputs: Sequence[str],
        opset: int = OPSET,
        elem: int | None = None,
    ) -> onnx.ModelProto:
        elem = elem or helper.np_dtype_to_tensor_dtype(self.dtype)
        graph = helper.make_graph(
            self.nodes,
            "g",
            [helper.make_tensor_value_info(k, elem, list(v)) for k, v in inputs.items()],
            [onnx.ValueInfoProto(name=o) for o in outputs],
            self.inits,
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
        model.ir_version = 8
        model = onnx.shape_inference.infer_shapes(model, strict_mode=True)
        onnx.checker.check_model(model, full_check=True)
        return model


def bn_params(rng: np.random.Generator, c: int, dtype: Any = np.float32) -> dict[str, np.ndarray]:
    """Random γ (some negative), β, μ, σ² in [0.2, 3]."""
    sign = rng.choice([-1.0, 1.0], size=c, p=[0.3, 0.7])
    return {
        "scale": (sign * rng.uniform(0.5, 2.0, c)).astype(dtype),
        "bias": rng.normal(0.0, 0.7, c).astype(dtype),
        "mean": rng.normal(0.0, 0.7, c).astype(dtype),
        "var": rng.uniform(0.2, 3.0, c).astype(dtype),
    }


def session(model: onnx.ModelProto) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def feeds_for(model: onnx.ModelProto, seed: int = 0) -> dict[str, np.ndarray]:
    """Random inputs for every graph input (symbolic dims become 2)."""
    rng = np.random.default_rng(seed)
    inits = {i.name for i in model.graph.initializer}
    feeds = {}
    for inp in model.graph.input:
        if inp.name in inits:
            continue
        t = inp.type.tensor_type
        shape = [d.dim_value if d.HasField("dim_value") else 2 for d in t.shape.dim]
        dtype = helper.tensor_dtype_to_np_dtype(t.elem_type)
        feeds[inp.name] = rng.normal(0, 1, shape).astype(dtype)
    return feeds


def run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
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


def init(model: onnx.ModelProto, name: str) -> np.ndarray:
    for t in model.graph.initializer:
        if t.name == name:
            return numpy_helper.to_array(t)
    raise KeyError(name)


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


FLOAT = TensorProto.FLOAT
FLOAT16 = TensorProto.FLOAT16
BFLOAT16 = TensorProto.BFLOAT16
