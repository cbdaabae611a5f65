"""Is a standalone BatchNormalization faster as Mul+Add in onnxruntime? Measure it.

A BN that can fold nowhere can be rewritten exactly as ``x·s + t``. This script times one
BN node against the equivalent Mul+Add (and Mul-only / Add-only forms) on CPU, at
ORT_DISABLE_ALL and ORT_ENABLE_ALL, over a few activation shapes, and prints a Markdown
table of median latencies. Usage::

    python benchmarks/standalone_bn.py [--repeat 200] [--threads 1]
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

logger = logging.getLogger(__name__)

SHAPES = ((1, 32, 56, 56), (1, 64, 28, 28), (8, 128, 14, 14), (1, 256, 7, 7), (64, 512))


def bn_model(shape: tuple[int, ...], form: str, seed: int = 0) -> onnx.ModelProto:
    """x → BN (form "bn") or x → Mul → Add (form "muladd") with random statistics."""
    rng = np.random.default_rng(seed)
    c = shape[1]
    gamma, beta = rng.uniform(0.5, 1.5, c), rng.normal(0, 0.3, c)
    mean, var = rng.normal(0, 0.5, c), rng.uniform(0.25, 1.75, c)
    eps = np.float32(1e-5)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)
    if form == "bn":
        inits = [
            numpy_helper.from_array(a.astype(np.float32), n)
            for a, n in ((gamma, "g"), (beta, "b"), (mean, "m"), (var, "v"))
        ]
        nodes = [helper.make_node("BatchNormalization", ["x", "g", "b", "m", "v"], ["y"])]
    else:
        s = gamma / np.sqrt(var + np.float64(eps))
        t = beta - mean * s
        bshape = (c,) + (1,) * (len(shape) - 2)
        inits = [
            numpy_helper.from_array(s.reshape(bshape).astype(np.float32), "s"),
            numpy_helper.from_array(t.reshape(bshape).astype(np.float32), "t"),
        ]
        nodes = [
            helper.make_node("Mul", ["x", "s"], ["xs"]),
            helper.make_node("Add", ["xs", "t"], ["y"]),
        ]
    graph = helper.make_graph(nodes, "bn", [x], [y], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def median_ms(model: onnx.ModelProto, level: str, repeat: int, threads: int) -> float:
    """Median latency of one run, in milliseconds."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
    opts.intra_op_num_threads = threads
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    shape = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    feed = {"x": np.random.default_rng(1).standard_normal(shape).astype(np.float32)}
    for _ in range(max(10, repeat // 10)):
        sess.run(None, feed)
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        sess.run(None, feed)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=200)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    print("| shape | level | BN ms | Mul+Add ms | Mul+Add / BN |")
    print("|---|---|---:|---:|---:|")
    for shape in SHAPES:
        for level in ("ORT_DISABLE_ALL", "ORT_ENABLE_ALL"):
            bn = median_ms(bn_model(shape, "bn"), level, args.repeat, args.threads)
            ma = median_ms(bn_model(shape, "muladd"), level, args.repeat, args.threads)
            print(f"| {shape} | {level} | {bn:.4f} | {ma:.4f} | {ma / bn:.2f} |")


if __name__ == "__main__":
    main()
