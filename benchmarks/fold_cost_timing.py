"""In-process, interleaved timing of file → file steps on one model (run in a worker process).

    python benchmarks/fold_cost_timing.py MODEL.onnx OUTDIR REPEAT   # prints one JSON line

Steps, each called as a user would call it in-process, after its imports and one untimed
warm-up call:

- ``bnfold``: ``bnfold.fold(path).save(out)``;
- ``ort-basic``: an ``InferenceSession`` with ``ORT_ENABLE_BASIC`` and
  ``optimized_model_filepath=out`` (onnxruntime's offline optimisation);
- ``load+save``: ``onnx.save(onnx.load(path), out)``;
- ``io-floor`` (for reading the figures, no target): bnfold's own reading and writing with
  no check and no pass — the wire-level parse with weights memory-mapped, onnx-ir's
  ``deserialize_model`` and the streaming writer. Every onnx-ir based fold pays at least this.

Each round runs every step once, in a fresh random order; the output file is removed
(untimed) before each step, so no step pays for freeing another's file. Ratios are taken
pairwise within each round and their median reported, so drift on a shared machine hits
both sides of a ratio alike.
"""

from __future__ import annotations

import json
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import fold_cost_stages

STEPS = ("bnfold", "ort-basic", "load+save", "io-floor")


def steps(src: Path, dst: Path) -> dict[str, Callable[[], None]]:
    """The steps, imports done."""
    import onnx
    import onnx_ir as ir
    import onnxruntime as ort

    import bnfold
    from bnfold.onnx.io import mapped, stream_save

    def fold() -> None:
        bnfold.fold(src).save(dst)

    def ort_basic() -> None:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        options.optimized_model_filepath = str(dst)
        ort.InferenceSession(str(src), options, providers=["CPUExecutionProvider"])

    def load_save() -> None:
        onnx.save(onnx.load(str(src)), str(dst))

    def io_floor() -> None:
        read = mapped.read_mapped(src)
        if read is None:  # too small to map: the plain parse
            model = ir.serde.deserialize_model(onnx.load(str(src)))
        else:
            model = ir.serde.deserialize_model(read.proto)
            mapped.attach(model, read.weights)
        stream_save.write_inline(model, dst)

    return {"bnfold": fold, "ort-basic": ort_basic, "load+save": load_save, "io-floor": io_floor}


def time_model(src: Path, outdir: Path, repeat: int, seed: int = 0) -> dict[str, Any]:
    """Seconds per step per round, and the rounds' order."""
    dst = outdir / "fold_cost_out.onnx"
    calls = steps(src, dst)
    for call in calls.values():  # warm-up: lazy imports, first-call caches
        dst.unlink(missing_ok=True)
        call()
    rng = random.Random(seed)
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(repeat):
        order = list(calls)
        rng.shuffle(order)
        for name in order:
            dst.unlink(missing_ok=True)
            start = time.perf_counter()
            calls[name]()
            times[name].append(time.perf_counter() - start)
    dst.unlink(missing_ok=True)
    return {"seconds": times}


def ratio(times: dict[str, list[float]], a: str, b: str) -> float:
    """Median over rounds of ``a``'s time / ``b``'s time in the same round."""
    return statistics.median(x / y for x, y in zip(times[a], times[b], strict=True))


def main(argv: list[str]) -> int:
    src, outdir, repeat = Path(argv[0]), Path(argv[1]), int(argv[2])
    result = time_model(src, outdir, repeat)
    result["stages"] = fold_cost_stages.profile(src, outdir / "fold_cost_stages.onnx", repeat)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
