"""Tiny test models with BatchNorm left in, built by hand with onnx.helper.

Every model gets random BN statistics and affine parameters (the defaults μ=0, σ²=1,
γ=1, β=0 would hide folding bugs). ``dtype`` picks float32 or float16 for the whole graph.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

OPSET = 17


def _t(array: np.ndarray, name: str, dtype: type) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(array).astype(dtype), name)


def bn_params(
    rng: np.random.Generator,
    c: int,
    prefix: str,
    dtype: type = np.float32,
    beta_offset: float = 0.0,
    mean_offset: float = 0.0,
) -> list[onnx.TensorProto]:
    """γ, β, μ, σ² as initializers: σ² log-uniform in [1e-3, 4], some γ negative."""
    gamma = rng.uniform(0.5, 2.0, c) * rng.choice([-1.0, 1.0], c, p=[0.2, 0.8])
    beta = rng.normal(0.0, 0.5, c) + beta_offset
    mean = rng.normal(0.0, 1.0, c) + mean_offset
    var = np.exp(rng.uniform(np.log(1e-3), np.log(4.0), c))
    arrays = {"gamma": gamma, "beta": beta, "mean": mean, "var": var}
    return [_t(v, f"{prefix}_{k}", dtype) for k, v in arrays.items()]


def bn_node(x: str, y: str, prefix: str, eps: float = 1e-5) -> onnx.NodeProto:
    names = [f"{prefix}_{k}" for k in ("gamma", "beta", "mean", "var")]
    return helper.make_node("BatchNormalization", [x, *names], [y], epsilon=eps, name=prefix)


def _model(
    nodes: list[onnx.NodeProto], inits: list[onnx.TensorProto], x_shape: list, dtype: type
) -> onnx.ModelProto:
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    graph = helper.make_graph(
        nodes,
        "test",
        [helper.make_tensor_value_info("x", elem, x_shape)],
        [onnx.ValueInfoProto(name="y")],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    return onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)


def conv_bn(
    rng: np.random.Generator,
    *,
    c_in: int = 3,
    c_out: int = 8,
    group: int = 1,
    size: int = 12,
    conv_bias: bool = True,
    beta_offset: float = 0.0,
    cancel_offset: float = 0.0,
    activation: str | None = None,
    gamma_scale: float = 1.0,
    dtype: type = np.float32,
) -> onnx.ModelProto:
    """x → Conv(3×3) → BN → [activation] → y.

    ``beta_offset`` shifts BN's β (−10 gives sigmoid outputs near 5e-5); ``cancel_offset``
    adds the same large constant to the Conv bias and BN's μ, so the reference computes a
    small result as a difference of large numbers (ill-conditioned, a high noise floor);
    ``gamma_scale`` multiplies γ (large values saturate a following sigmoid).
    """
    w = rng.normal(0, 1 / np.sqrt(9 * c_in / group), (c_out, c_in // group, 3, 3))
    inits = [_t(w, "W", dtype)]
    inputs = ["x", "W"]
    if conv_bias or cancel_offset:
        inits.append(_t(rng.normal(0, 0.5, c_out) + cancel_offset, "B", dtype))
        inputs.append("B")
    bn = bn_params(rng, c_out, "bn", dtype, beta_offset=beta_offset, mean_offset=cancel_offset)
    if gamma_scale != 1.0:
        bn[0] = _t(numpy_helper.to_array(bn[0]).astype(np.float64) * gamma_scale, "bn_gamma", dtype)
    inits += bn
    nodes = [
        helper.make_node("Conv", inputs, ["c"], pads=[1, 1, 1, 1], group=group, name="conv"),
        bn_node("c", "z" if activation else "y", "bn"),
    ]
    if activation:
        nodes += _tail(activation, "z", "y", inits, dtype)
    return _model(nodes, inits, ["N", c_in, size, size], dtype)


def _tail(
    kind: str, x: str, y: str, inits: list[onnx.TensorProto], dtype: type
) -> list[onnx.NodeProto]:
    """A unary op, or ``ArgMax`` over channels (int64 output), or ``IsPositive`` (bool)."""
    if kind == "ArgMax":
        return [helper.make_node("ArgMax", [x], [y], axis=1, keepdims=0)]
    if kind == "IsPositive":
        inits.append(_t(np.zeros((), dtype), "zero", dtype))
        return [helper.make_node("Greater", [x, "zero"], [y])]
    return [helper.make_node(kind, [x], [y])]


def embedding_gemm_bn(
    rng: np.random.Generator, *, vocab: int = 10, k: int = 32, n: int = 16
) -> onnx.ModelProto:
    """ids (int64, N) → Gather(table V×K) → Gemm(transB) → BN → y: no float input at all."""
    inits = [
        _t(rng.normal(0, 1, (vocab, k)), "table", np.float32),
        _t(rng.normal(0, 1 / np.sqrt(k), (n, k)), "W", np.float32),
        _t(rng.normal(0, 0.5, n), "C", np.float32),
        *bn_params(rng, n, "bn"),
    ]
    nodes = [
        helper.make_node("Gather", ["table", "ids"], ["e"], axis=0),
        helper.make_node("Gemm", ["e", "W", "C"], ["g"], transB=1, name="gemm"),
        bn_node("g", "y", "bn"),
    ]
    graph = helper.make_graph(
        nodes,
        "test",
        [helper.make_tensor_value_info("ids", onnx.TensorProto.INT64, ["N"])],
        [onnx.ValueInfoProto(name="y")],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    return onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)


def conv_transpose_bn(
    rng: np.random.Generator,
    *,
    c_in: int = 4,
    c_out: int = 6,
    group: int = 2,
    size: int = 8,
    dtype: type = np.float32,
) -> onnx.ModelProto:
    """x → ConvTranspose(3×3, stride 2, groups) → BN → y, with C_in ≠ C_out."""
    w = rng.normal(0, 1 / np.sqrt(9 * c_in / group), (c_in, c_out // group, 3, 3))
    inits = [
        _t(w, "W", dtype),
        _t(rng.normal(0, 0.5, c_out), "B", dtype),
        *bn_params(rng, c_out, "bn", dtype),
    ]
    nodes = [
        helper.make_node(
            "ConvTranspose", ["x", "W", "B"], ["c"], strides=[2, 2], group=group, name="convT"
        ),
        bn_node("c", "y", "bn"),
    ]
    return _model(nodes, inits, ["N", c_in, size, size], dtype)


def gemm_bn(
    rng: np.random.Generator,
    *,
    k: int = 32,
    n: int = 16,
    trans_b: int = 1,
    alpha: float = 0.75,
    beta: float = 0.5,
    dtype: type = np.float32,
) -> onnx.ModelProto:
    """x (N×K) → Gemm(α, β, transB) → BN → y."""
    shape = (n, k) if trans_b else (k, n)
    inits = [
        _t(rng.normal(0, 1 / np.sqrt(k), shape), "W", dtype),
        _t(rng.normal(0, 0.5, n), "C", dtype),
        *bn_params(rng, n, "bn", dtype),
    ]
    nodes = [
        helper.make_node(
            "Gemm", ["x", "W", "C"], ["g"], alpha=alpha, beta=beta, transB=trans_b, name="gemm"
        ),
        bn_node("g", "y", "bn"),
    ]
    return _model(nodes, inits, ["N", k], dtype)


def deep_cnn(
    rng: np.random.Generator,
    *,
    layers: int = 4,
    width: int = 16,
    size: int = 16,
    head: str | None = None,
    head_offset: float = 0.0,
    dtype: type = np.float32,
) -> onnx.ModelProto:
    """x → [Conv(bias) → BN → Relu] × layers → Conv(1×1) → BN → [head] → y."""
    nodes: list[onnx.NodeProto] = []
    inits: list[onnx.TensorProto] = []
    prev, c_prev = "x", 3
    for i in range(layers):
        w = rng.normal(0, np.sqrt(2 / (9 * c_prev)), (width, c_prev, 3, 3))
        inits += [
            _t(w, f"W{i}", dtype),
            _t(rng.normal(0, 0.1, width), f"B{i}", dtype),
            *bn_params(rng, width, f"bn{i}", dtype, mean_offset=0.5),
        ]
        nodes += [
            helper.make_node(
                "Conv", [prev, f"W{i}", f"B{i}"], [f"c{i}"], pads=[1, 1, 1, 1], name=f"conv{i}"
            ),
            bn_node(f"c{i}", f"b{i}", f"bn{i}"),
            helper.make_node("Relu", [f"b{i}"], [f"r{i}"]),
        ]
        prev, c_prev = f"r{i}", width
    w = rng.normal(0, np.sqrt(1 / c_prev), (4, c_prev, 1, 1))
    inits += [_t(w, "Wh", dtype), *bn_params(rng, 4, "bnh", dtype, beta_offset=head_offset)]
    nodes += [
        helper.make_node("Conv", [prev, "Wh"], ["ch"], name="convh"),
        bn_node("ch", "z" if head else "y", "bnh"),
    ]
    if head:
        nodes += _tail(head, "z", "y", inits, dtype)
    return _model(nodes, inits, ["N", 3, size, size], dtype)
