"""Where ``bnfold.fold(path).save(out)`` spends its time: a per-stage profile without cProfile.

Each stage is a library function wrapped with a timer (cProfile's per-call overhead would
inflate the Python-heavy stages and hide the numpy ones). The stages do not overlap:

- ``read``: the wire-level parse with weights memory-mapped (``mapped.read_mapped``);
- ``checks``: structural checks of the input (opsets, names, tensor sizes, external data),
  the ONNX checker and shape inference on a weight-free copy, BN parameter checks and the
  NaN/Inf scan of the weights no fold read;
- ``deserialize``: onnx-ir's ``deserialize_model``;
- ``conv scaling``: the float64 W·s of every folded Conv (``scale_output_channels_cast``);
- ``constant folding``: ``FoldConstantsPass`` (dynamo's computed zero biases);
- ``other passes``: the rest of the pass pipeline (matching, planning, rewriting);
- ``save``: the streaming write into a temporary file and the rename;
- ``rest``: whatever the stages above do not cover.

Used by ``fold_cost_timing.py`` after its timed rounds; ``python fold_cost_stages.py
MODEL.onnx OUT.onnx [REPEAT]`` prints the same figures as JSON.
"""

from __future__ import annotations

import collections
import contextlib
import json
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

STAGES = (
    "read",
    "checks",
    "deserialize",
    "conv scaling",
    "constant folding",
    "other passes",
    "save",
    "rest",
)


@contextlib.contextmanager
def _timers(spent: dict[str, float]) -> Iterator[None]:
    """Wrap the stage functions for the duration; ``spent`` collects seconds per stage."""
    import onnx_ir as ir

    from bnfold import foldmath
    from bnfold.onnx import api
    from bnfold.onnx.io import files, mapped, validate
    from bnfold.onnx.passes import fold_constants

    wrapped: list[tuple[Any, str, Callable[..., Any]]] = []

    def wrap(owner: Any, name: str, stage: str) -> None:
        original = getattr(owner, name)

        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                spent[stage] += time.perf_counter() - start

        wrapped.append((owner, name, original))
        setattr(owner, name, timed)

    wrap(mapped, "read_mapped", "read")
    wrap(ir.serde, "deserialize_model", "deserialize")
    for name in ("validate_proto", "validate_model", "check_deferred_weights"):
        wrap(validate, name, "checks")
    for name in ("check_external_data", "check_proto"):
        wrap(files, name, "checks")
    wrap(foldmath, "scale_output_channels_cast", "conv scaling")
    wrap(fold_constants.FoldConstantsPass, "run", "constant folding")
    wrap(api, "run_pipeline", "pipeline")
    wrap(api.io, "save_model", "save")
    try:
        yield
    finally:
        for owner, name, original in reversed(wrapped):
            setattr(owner, name, original)


def profile(src: Path, dst: Path, repeat: int = 5) -> dict[str, float]:
    """Median seconds per stage over ``repeat`` calls (after one warm-up call)."""
    import bnfold

    rounds: list[dict[str, float]] = []
    for i in range(repeat + 1):
        spent: dict[str, float] = collections.defaultdict(float)
        dst.unlink(missing_ok=True)
        with _timers(spent):
            start = time.perf_counter()
            bnfold.fold(src).save(dst)
            total = time.perf_counter() - start
        if i == 0:
            continue  # warm-up: imports, first-call caches
        passes = spent.pop("pipeline", 0.0)
        spent["other passes"] = passes - spent["conv scaling"] - spent["constant folding"]
        spent["rest"] = total - sum(spent.values())
        spent["total"] = total
        rounds.append(dict(spent))
    dst.unlink(missing_ok=True)
    return {k: statistics.median(r.get(k, 0.0) for r in rounds) for k in (*STAGES, "total")}


def main(argv: list[str]) -> int:
    repeat = int(argv[2]) if len(argv) > 2 else 5
    print(json.dumps(profile(Path(argv[0]), Path(argv[1]), repeat)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
