"""BatchNorm in quantized (QDQ) models: what bnfold does to them, and what it costs.

For timm models exported with ``dynamo=True, optimize=False`` (BN left in the graph, random
BN statistics) and quantized with onnxruntime's ``quantize_static`` (QDQ, per-channel
weights), four variants side by side:

- ``quantized``: the quantized original;
- ``bnfold``: ``bnfold.fold(quantized)`` (default: exact folds only, nothing dequantized);
- ``--requantize``: ``bnfold.fold(quantized, requantize=True)``;
- ``fold→quantize``: the reference point: fold the float model first, then quantize it.

Per variant: BN left, file size, output drift from the quantized original in steps of the
output's quantization scale (ORT_DISABLE_ALL and ORT_ENABLE_ALL) and ORT_ENABLE_ALL latency
(median, models timed in turn in one run). Writes ``results/quantized.md``.

    python benchmarks/quantized.py        # resnet18, mobilenetv2_050, regnetx_002, efficientnet_b0
    python benchmarks/quantized.py --models resnet18 --size 160
"""

from __future__ import annotations

import argparse
import contextlib
import io
import tempfile
import time
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnxruntime import quantization

import bnfold
from bnfold.equivalence.quantized_outputs import output_scales
from bnfold.equivalence.requantized import own_noise, verify_requantized

HERE = Path(__file__).resolve().parent
LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


class _Calibration(quantization.CalibrationDataReader):  # type: ignore[misc]
    def __init__(self, shape: tuple[int, ...], name: str, count: int = 8) -> None:
        rng = np.random.default_rng(0)
        self._sets = iter(
            [{name: rng.standard_normal(shape).astype(np.float32)} for _ in range(count)]
        )

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._sets, None)


def export(name: str, size: int, path: Path) -> Path:
    """A timm model with random BN statistics, BN left unfolded."""
    import timm
    import torch

    from bnfold.testing.zoo import randomize_bn

    torch.manual_seed(0)  # the same conv/linear weights every run
    model = randomize_bn(timm.create_model(name, pretrained=False).eval(), seed=0)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (torch.randn(1, 3, size, size),),
            str(path),
            input_names=["x"],
            dynamo=True,
            optimize=False,
        )
    return path


def quantize(src: Path, dst: Path, shape: tuple[int, ...]) -> Path:
    with contextlib.redirect_stderr(io.StringIO()):
        quantization.quantize_static(
            str(src),
            str(dst),
            _Calibration(shape, "x"),
            quant_format=quantization.QuantFormat.QDQ,
            per_channel=True,
        )
    return dst


def session(path: Path, level: str) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.graph_optimization_level = LEVELS[level]
    options.intra_op_num_threads = 1
    options.log_severity_level = 4
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def drift_steps(
    reference: Path, candidate: Path, level: str, feeds: list[dict], scale: float
) -> float:
    ref, cand = session(reference, "disable"), session(candidate, level)
    worst = 0.0
    for f in feeds:
        worst = max(worst, float(np.abs(ref.run(None, f)[0] - cand.run(None, f)[0]).max()))
    return worst / scale


def latencies(paths: dict[str, Path], feeds: dict, rounds: int) -> dict[str, float]:
    """Median ORT_ENABLE_ALL latency (ms), variants timed in turn, round by round."""
    sessions = {k: session(p, "all") for k, p in paths.items()}
    for s in sessions.values():
        s.run(None, feeds)
    times: dict[str, list[float]] = {k: [] for k in sessions}
    for _ in range(rounds):
        for k, s in sessions.items():
            start = time.perf_counter()
            s.run(None, feeds)
            times[k].append((time.perf_counter() - start) * 1e3)
    return {k: float(np.median(v)) for k, v in times.items()}


def bn_count(path: Path) -> int:
    return Counter(n.op_type for n in onnx.load(path).graph.node)["BatchNormalization"]


def run_model(name: str, size: int, rounds: int, work: Path) -> list[str]:
    shape = (1, 3, size, size)
    float_model = export(name, size, work / f"{name}.onnx")
    paths = {"quantized": quantize(float_model, work / f"{name}.q.onnx", shape)}
    paths["bnfold"] = bnfold.fold(paths["quantized"]).save(work / f"{name}.q.bnfold.onnx")
    requantized = bnfold.fold(paths["quantized"], requantize=True)
    paths["--requantize"] = requantized.save(work / f"{name}.q.rq.onnx")
    pairs = requantized.report.dropped_roundings
    verdict = verify_requantized(paths["quantized"], paths["--requantize"], pairs)
    folded_float = bnfold.fold(float_model).save(work / f"{name}.folded.onnx")
    paths["fold→quantize"] = quantize(folded_float, work / f"{name}.folded.q.onnx", shape)
    rng = np.random.default_rng(1)
    feeds = [{"x": rng.standard_normal(shape).astype(np.float32)} for _ in range(3)]
    quantized = onnx.load(paths["quantized"])
    scales = output_scales(quantized)
    scale = scales[quantized.graph.output[0].name]
    noise = own_noise(quantized, pairs, scales)[quantized.graph.output[0].name]
    timing = latencies(paths, feeds[0], rounds)
    rows = []
    for variant, path in paths.items():
        drift = {lev: drift_steps(paths["quantized"], path, lev, feeds, scale) for lev in LEVELS}
        check = ("pass" if verdict else "FAIL") if variant == "--requantize" else ""
        rows.append(
            f"| {name} | {variant} | {bn_count(path)} | {path.stat().st_size / 1e6:.1f} MB | "
            f"{drift['disable']:.1f} | {drift['all']:.1f} | "
            f"{noise:.1f} | {check} | {timing[variant]:.2f} ms | "
            f"{timing['quantized'] / timing[variant]:.2f}× |"
        )
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="resnet18,mobilenetv2_050,regnetx_002,efficientnet_b0")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "quantized.md")
    args = parser.parse_args()
    header = [
        "| model | variant | BN left | size | drift, steps (disable) | drift, steps (all) | "
        "own noise, steps | bnfold's check | latency at all | speed-up vs quantized |",
        "|---|---|---:|---:|---:|---:|---:|---|---:|---:|",
    ]
    rows: list[str] = []
    with tempfile.TemporaryDirectory(prefix="bnfold-quantized-") as tmp:
        for name in args.models.split(","):
            rows += run_model(name, args.size, args.rounds, Path(tmp))
    text = "\n".join(
        [
            "# BatchNorm in quantized (QDQ) models",
            "",
            f"`python benchmarks/quantized.py --models {args.models} --size {args.size}`: "
            f"onnxruntime {ort.__version__}, 1 thread, {args.rounds} rounds, variants timed in "
            "turn. Drift: max |output − quantized original at ORT_DISABLE_ALL| in steps of "
            "the output's quantization scale. Own noise: how far the quantized original itself "
            "moves (ORT_DISABLE_ALL, steps, on bnfold's verification inputs) when the scales of "
            "the inner Q/DQ pairs that `--requantize` drops move by ±0.1% "
            "(`bnfold.equivalence.requantized.own_noise`; a recalibration moves them more). "
            "bnfold's "
            "check: `--requantize`'s verification (the fold exact against the original with "
            "those pairs bypassed; drift ≤ max(3, 2 × own noise) steps).",
            "",
            *header,
            *rows,
            "",
        ]
    )
    args.out.write_text(text)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
