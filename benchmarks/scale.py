"""Scale benchmark: fold time versus model size, and peak memory versus weight bytes.

Two experiments, each measured in a fresh subprocess (clean peak-RSS accounting):

* ``layers``: a chain of N × (Conv 1×1 → BatchNorm → Relu) for N = 1k and 10k (or as
  given). Folding must be linear in N: the 10k/1k time ratio should be near 10.
* ``big``: a model over 2 GB (external data) of Gemm → BatchNorm layers. It folds, saves
  and (optionally) verifies; peak memory should stay near the weight bytes, not a multiple.

Usage::

    python benchmarks/scale.py                       # 1k vs 10k layers
    python benchmarks/scale.py --layers 1000 3000 10000
    python benchmarks/scale.py --big 2.2 [--verify]  # a 2.2 GB model (needs ~7 GB disk)
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

CHANNELS = 8


def bn_arrays(rng: np.random.Generator, c: int, prefix: str) -> list[onnx.TensorProto]:
    """Random γ, β, μ, σ² as float32 initializers."""
    arrays = {
        "gamma": rng.uniform(0.5, 2.0, c) * rng.choice([-1.0, 1.0], c),
        "beta": rng.normal(0, 0.5, c),
        "mean": rng.normal(0, 0.5, c),
        "var": rng.uniform(0.2, 3.0, c),
    }
    return [
        numpy_helper.from_array(a.astype(np.float32), f"{prefix}_{k}") for k, a in arrays.items()
    ]


def make_chain(layers: int, path: Path, channels: int = CHANNELS) -> Path:
    """x → N × (Conv1×1 → BN → Relu) → y; weights scaled to keep activations O(1)."""
    rng = np.random.default_rng(layers)
    nodes, inits, x = [], [], "x"
    for i in range(layers):
        w = rng.normal(0, 1 / math.sqrt(channels), (channels, channels, 1, 1))
        inits.append(numpy_helper.from_array(w.astype(np.float32), f"w{i}"))
        inits.extend(bn_arrays(rng, channels, f"bn{i}"))
        nodes.append(helper.make_node("Conv", [x, f"w{i}"], [f"c{i}"], name=f"conv{i}"))
        names = [f"bn{i}_{k}" for k in ("gamma", "beta", "mean", "var")]
        nodes.append(helper.make_node("BatchNormalization", [f"c{i}", *names], [f"b{i}"]))
        nodes.append(helper.make_node("Relu", [f"b{i}"], [f"r{i}"], name=f"relu{i}"))
        x = f"r{i}"
    nodes[-1].output[0] = "y"
    shape = [1, channels, 4, 4]
    graph = helper.make_graph(
        nodes,
        f"chain{layers}",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def make_big(gigabytes: float, path: Path, width: int = 8192) -> Path:
    """x[1, w] → L × (Gemm(w×w) → BN) with external data; L chosen to pass ``gigabytes``.

    Weights are written tensor by tensor (never the whole model in memory).
    """
    layer_bytes = width * width * 4
    layers = max(1, math.ceil(gigabytes * 1e9 / layer_bytes))
    data_name = f"{path.name}.data"
    rng = np.random.default_rng(0)
    inits, nodes, x, offset = [], [], "x", 0
    with open(path.parent / data_name, "wb") as data:
        for i in range(layers):
            for _row in range(0, width, 1024):  # 32 MB slabs of W
                slab = rng.standard_normal((1024, width), dtype=np.float32)
                data.write((slab / np.float32(math.sqrt(width))).tobytes())
            tensor = TensorProto(name=f"w{i}", data_type=TensorProto.FLOAT, dims=[width, width])
            tensor.data_location = TensorProto.EXTERNAL
            for key, value in (
                ("location", data_name),
                ("offset", offset),
                ("length", layer_bytes),
            ):
                tensor.external_data.add(key=key, value=str(value))
            offset += layer_bytes
            inits.append(tensor)
            inits.extend(bn_arrays(rng, width, f"bn{i}"))
            nodes.append(helper.make_node("Gemm", [x, f"w{i}"], [f"g{i}"], name=f"gemm{i}"))
            names = [f"bn{i}_{k}" for k in ("gamma", "beta", "mean", "var")]
            nodes.append(helper.make_node("BatchNormalization", [f"g{i}", *names], [f"b{i}"]))
            x = f"b{i}"
    nodes[-1].output[0] = "y"
    graph = helper.make_graph(
        nodes,
        "big",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, width])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


# The measurement runs in a fresh interpreter; a thread samples RssAnon/RssFile.
_PROBE = textwrap.dedent(
    """
    import json, sys, threading, time
    from pathlib import Path

    def rss():
        fields = {}
        for line in open("/proc/self/status"):
            key, _, value = line.partition(":")
            if key in ("VmRSS", "RssAnon", "RssFile"):
                fields[key] = int(value.split()[0]) * 1024
        return fields

    peak = {"VmRSS": 0, "RssAnon": 0, "RssFile": 0}
    stop = False
    def sample():
        while not stop:
            for k, v in rss().items():
                peak[k] = max(peak[k], v)
            time.sleep(0.02)

    import bnfold
    from bnfold.workflow import FoldFileOptions, fold_file
    import bnfold.onnx.api, bnfold.onnx.pipeline  # noqa: F401  (imports outside the timing)
    base = rss()
    threading.Thread(target=sample, daemon=True).start()
    src, out, verify = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3] == "1"
    t0, c0 = time.perf_counter(), time.process_time()
    result = bnfold.fold(src)
    t1, c1 = time.perf_counter(), time.process_time()
    result.save(out)
    t2 = time.perf_counter()
    verified = None
    if verify:
        verified = bool(bnfold.verify(src, out, seeds=1))
    t3 = time.perf_counter()
    stop = True
    time.sleep(0.05)
    counts = result.report.counts()["batchnorm"]
    print(json.dumps({
        "fold_s": t1 - t0, "fold_cpu_s": c1 - c0, "save_s": t2 - t1,
        "verify_s": t3 - t2 if verify else None,
        "verified": verified, "folded": counts["folded"], "found": counts["found"],
        "base_rss": base["VmRSS"], "peak_rss": peak["VmRSS"],
        "peak_anon": peak["RssAnon"], "peak_file": peak["RssFile"],
    }))
    """
)


def measure(src: Path, out: Path, *, verify: bool = False) -> dict[str, float]:
    """Fold ``src`` into ``out`` in a fresh interpreter; times and peak memory."""
    proc = subprocess.run(
        [sys.executable, "-c", _PROBE, str(src), str(out), "1" if verify else "0"],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"measurement failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def model_bytes(path: Path) -> int:
    data = path.with_name(f"{path.name}.data")
    return path.stat().st_size + (data.stat().st_size if data.exists() else 0)


def run_layers(counts: list[int], work: Path, repeats: int) -> None:
    """Fold chains of each length; wall and CPU time (CPU time resists a busy machine)."""
    print(
        f"{'layers':>8} {'model MB':>9} {'fold s':>7} {'CPU s':>7} {'CPU ms/layer':>13} "
        f"{'save s':>7} {'peak RSS MB':>12} {'above base MB':>14}"
    )
    rows = {}
    for n in counts:
        src = make_chain(n, work / f"chain{n}.onnx")
        runs = [measure(src, work / f"chain{n}.out.onnx") for _ in range(repeats)]
        best = min(runs, key=lambda r: r["fold_cpu_s"])
        assert best["folded"] == n, best
        rows[n] = best
        print(
            f"{n:>8} {model_bytes(src) / 1e6:>9.1f} {best['fold_s']:>7.2f} "
            f"{best['fold_cpu_s']:>7.2f} {best['fold_cpu_s'] / n * 1000:>13.3f} "
            f"{best['save_s']:>7.2f} {best['peak_rss'] / 1e6:>12.0f} "
            f"{(best['peak_rss'] - best['base_rss']) / 1e6:>14.0f}"
        )
    small, large = min(rows), max(rows)
    if small != large:
        wall = rows[large]["fold_s"] / rows[small]["fold_s"]
        cpu = rows[large]["fold_cpu_s"] / rows[small]["fold_cpu_s"]
        print(
            f"{large} vs {small} layers: fold time ×{wall:.1f} wall, ×{cpu:.1f} CPU "
            f"(linear: ×{large / small:.1f})"
        )


def run_big(gigabytes: float, work: Path, verify: bool) -> None:
    src = make_big(gigabytes, work / "big.onnx")
    size = model_bytes(src)
    print(f"model: {size / 1e9:.2f} GB ({src})")
    r = measure(src, work / "big.folded.onnx", verify=verify)
    print(
        f"folded {r['folded']}/{r['found']} BN; fold {r['fold_s']:.1f} s, save {r['save_s']:.1f} s"
        + (
            f", verify {r['verify_s']:.1f} s ({'ok' if r['verified'] else 'FAILED'})"
            if verify
            else ""
        )
    )
    print(
        f"peak RSS {r['peak_rss'] / 1e9:.2f} GB (anonymous {r['peak_anon'] / 1e9:.2f} GB, "
        f"file-backed mmap {r['peak_file'] / 1e9:.2f} GB) = "
        f"{r['peak_rss'] / size:.2f}× the model; base {r['base_rss'] / 1e9:.2f} GB"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--repeats", type=int, default=1, help="best of N runs per size")
    parser.add_argument("--big", type=float, metavar="GB", help="also fold a model of GB size")
    parser.add_argument("--verify", action="store_true", help="verify the big model too")
    parser.add_argument("--keep", type=Path, help="work folder to keep (default: a temp folder)")
    args = parser.parse_args(argv)
    work = args.keep or Path(tempfile.mkdtemp(prefix="bnfold-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        if args.big:
            run_big(args.big, work, args.verify)
        else:
            run_layers(args.layers, work, args.repeats)
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
