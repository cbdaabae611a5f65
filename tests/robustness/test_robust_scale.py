"""Scale: a model over 2 GB folds (memory near its size) and verifies.

Fold *time* against layer count is a benchmark, not a test: ``benchmarks/scale.py``
prints 1k vs 10k layers side by side.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from scale import make_big, model_bytes

# The CLI in a child process that reports its own peak RSS on exit.
PEAK_ENTRY = (
    "import atexit, resource, sys\n"
    "atexit.register(lambda: sys.stderr.write("
    "f'PEAK_RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}\\n'))\n"
    "from bnfold.cli.main import main\n"
    "main()\n"
)


def run_cli(*args: str) -> tuple[subprocess.CompletedProcess[str], float, int]:
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", PEAK_ENTRY, *args], capture_output=True, text=True, timeout=3600
    )
    elapsed = time.perf_counter() - start
    peaks = [
        int(line.split()[1]) for line in proc.stderr.splitlines() if line.startswith("PEAK_RSS")
    ]
    return proc, elapsed, peaks[-1] if peaks else 0


@pytest.fixture(scope="module")
def big_model(tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("big")
    src = make_big(2.2, folder / "big.onnx")
    assert model_bytes(src) > 2 * 1024**3
    yield src
    shutil.rmtree(folder, ignore_errors=True)


def run_ort(path: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


def check_folded_output(out: Path) -> None:
    data = out.with_name(out.name + ".data")
    assert data.exists() and data.stat().st_size > 2 * 1024**3
    proto = onnx.load(out, load_external_data=False)
    assert not any(n.op_type == "BatchNormalization" for n in proto.graph.node)
    onnx.checker.check_model(str(out))


@pytest.mark.slow
def test_model_over_2gb_folds_in_memory_near_its_size(big_model: Path) -> None:
    """Fold and save only; equivalence judged here with onnxruntime (ORT_DISABLE_ALL)."""
    size = model_bytes(big_model)
    out = big_model.with_name("nv.onnx")
    proc, elapsed, peak = run_cli(str(big_model), "-o", str(out), "--no-verify")
    print(
        f"\n{size / 1e9:.2f} GB model folded and saved in {elapsed:.0f} s, "
        f"peak RSS {peak / 1e9:.2f} GB ({peak / size:.2f}× the model)"
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    check_folded_output(out)
    assert peak < 3 * size, "peak memory far above the model size (a needless copy?)"
    x = np.random.default_rng(0).normal(0, 1, (1, 8192)).astype(np.float32)
    ref = run_ort(big_model, x)
    cand = run_ort(out, x)
    scale = max(1.0, float(np.abs(ref).max()))
    assert float(np.abs(ref - cand).max()) <= 1e-4 * scale
    out.unlink()
    out.with_name(out.name + ".data").unlink()


@pytest.mark.slow
def test_model_over_2gb_folds_and_verifies(big_model: Path) -> None:
    """The default CLI run: fold, verify before writing, write with external data."""
    size = model_bytes(big_model)
    out = big_model.with_name("v.onnx")
    proc, elapsed, peak = run_cli(str(big_model), "-o", str(out))
    print(
        f"\n{size / 1e9:.2f} GB model folded and verified in {elapsed:.0f} s, "
        f"peak RSS {peak / 1e9:.2f} GB ({peak / size:.2f}× the model)"
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "equivalent" in proc.stdout
    check_folded_output(out)
