"""bnfold.fold(nn.Module) vs torch.fx.experimental.optimization.fuse on the zoo.

For each model: BN ops executed (forward hooks on BN-like modules), the share of them folded
by each tool, the max abs error of each against the original, and CPU eager latency (median of
interleaved runs: original, fx-fused and bnfold timed in rotating order within each round).

    .venv/bin/python benchmarks/torch_fold_bench.py [--models a,b] [--rounds 25] [--threads 1]
        [--clock wall|cpu] [--out table.md]

With ``--threads 1`` all work runs on the calling thread, so ``--clock cpu`` (thread CPU time)
measures the model, not the scheduler, on a shared machine.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import logging
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import fx, nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_leaves

import bnfold
from bnfold.testing.zoo import ZOO, is_bn_like

logger = logging.getLogger(__name__)
TOLERANCE = 1e-4  # relative to max|ref|: above it a result counts as wrong


@dataclasses.dataclass
class Variant:
    """One way of running a model: its module (or why there is none), error, BN left, timings."""

    model: nn.Module | None
    failure: str | None = None
    error: float = float("nan")
    bn_left: int = 0
    times: list[float] = dataclasses.field(default_factory=list)

    @property
    def median_ms(self) -> float:
        return statistics.median(self.times) * 1e3 if self.times else float("nan")


@dataclasses.dataclass
class Row:
    name: str
    executed: int
    scale: float
    variants: dict[str, Variant]

    @property
    def same_graph(self) -> bool:
        """bnfold produced exactly fx.fuse's code (signature annotations aside)."""
        codes = [_body(self.variants[k].model) for k in ("fx.fuse", "bnfold")]
        return codes[0] is not None and codes[0] == codes[1]

    def folded(self, key: str) -> int:
        v = self.variants[key]
        return 0 if v.failure else self.executed - v.bn_left

    def wrong(self, key: str) -> bool:
        v = self.variants[key]
        return v.failure is None and not v.error <= TOLERANCE * max(self.scale, 1e-6)


def count_bn_ops(model: nn.Module, inputs: tuple[torch.Tensor, ...]) -> int:
    """BN ops executed in one forward pass, whether called as modules or inlined by fx.

    Counts ops reading a ``running_var`` buffer (every inference BN reads it once per call,
    also when fx traced through a non-torch.nn BN class), calls of BN-like modules without
    running statistics (``track_running_stats=False``), and BN modules that fx traced into
    constant arithmetic (FrozenBatchNorm2d becomes ``x * c1 + c2``: applied, not folded).
    """
    stats = {id(b) for name, b in model.named_buffers() if name.rsplit(".", 1)[-1] == "running_var"}
    count = [0]

    class _Reads(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
            leaves = tree_leaves((args, kwargs or {}))
            count[0] += sum(1 for t in leaves if isinstance(t, torch.Tensor) and id(t) in stats)
            return func(*args, **(kwargs or {}))

    def untracked(module: nn.Module, *_: Any) -> None:
        count[0] += 1

    handles = [
        m.register_forward_hook(untracked)
        for m in model.modules()
        if is_bn_like(m) and getattr(m, "running_var", None) is None
    ]
    for gm in (m for m in model.modules() if isinstance(m, fx.GraphModule)):
        inlined = _inlined_bn_without_stats(gm)
        if inlined:
            handles.append(gm.register_forward_hook(lambda *_, n=inlined: _add(count, n)))
    try:
        with torch.no_grad(), _Reads():
            model(*inputs)
    finally:
        for h in handles:
            h.remove()
    return count[0]


def _add(count: list[int], n: int) -> None:
    count[0] += n


def _inlined_bn_without_stats(gm: fx.GraphModule) -> int:
    """BN modules fx traced into ops that never read a running_var buffer."""
    reads: dict[str, bool] = {}
    for node in gm.graph.nodes:
        stack = node.meta.get("nn_module_stack") or {}
        keys = [k for k, (_, cls) in stack.items() if "batchnorm" in _cls_name(cls).lower()]
        if not keys or node.op == "call_module":
            continue
        var = node.op == "get_attr" and str(node.target).endswith("running_var")
        reads[keys[-1]] = reads.get(keys[-1], False) or var
    return sum(1 for read in reads.values() if not read)


def _cls_name(cls: Any) -> str:
    return cls if isinstance(cls, str) else getattr(cls, "__name__", "")


def _outputs(model: nn.Module, inputs: tuple[torch.Tensor, ...]) -> list[torch.Tensor]:
    with torch.no_grad():
        out = model(*inputs)
    return list(out) if isinstance(out, (tuple, list)) else [out]


def _error(ref: list[torch.Tensor], model: nn.Module, inputs: tuple[torch.Tensor, ...]) -> float:
    got = _outputs(model, inputs)
    return max(float((a.double() - b.double()).abs().max()) for a, b in zip(ref, got, strict=True))


def _fx_fuse(model: nn.Module) -> nn.Module:
    from torch.fx.experimental.optimization import fuse

    return fuse(model)


def _bnfold(model: nn.Module, inputs: tuple[torch.Tensor, ...]) -> nn.Module:
    result = bnfold.fold(model, example_inputs=inputs)
    if not result.verification:
        raise RuntimeError("bnfold's own verification failed")
    return result.model


def build_row(name: str) -> tuple[Row, tuple[torch.Tensor, ...]]:
    model, inputs = ZOO[name]()
    ref = _outputs(model, inputs)
    scale = max(float(r.abs().max()) for r in ref)
    makers: dict[str, Callable[[], nn.Module]] = {
        "original": lambda: copy.deepcopy(model),
        "fx.fuse": lambda: _fx_fuse(model),
        "bnfold": lambda: _bnfold(model, inputs),
    }
    variants = {}
    for key, make in makers.items():
        try:
            built = make().eval()
        except Exception as exc:  # report, do not crash the benchmark
            variants[key] = Variant(None, f"{type(exc).__name__}: {str(exc).splitlines()[0][:60]}")
            continue
        variants[key] = Variant(
            built, None, _error(ref, built, inputs), count_bn_ops(built, inputs)
        )
    return Row(name, count_bn_ops(model, inputs), scale, variants), inputs


def time_interleaved(
    row: Row, inputs: tuple[torch.Tensor, ...], rounds: int, clock: Callable[[], float]
) -> None:
    """Median-friendly samples: every round times each variant once, in rotating order."""
    runnable = [v for v in row.variants.values() if v.model is not None]
    with torch.no_grad():
        for v in runnable:
            for _ in range(3):
                v.model(*inputs)  # type: ignore[misc]
        probe = time.perf_counter()
        runnable[0].model(*inputs)  # type: ignore[misc]
        reps = max(1, int(0.01 / max(time.perf_counter() - probe, 1e-6)))
        for r in range(rounds):
            order = runnable[r % len(runnable) :] + runnable[: r % len(runnable)]
            for v in order:
                start = clock()
                for _ in range(reps):
                    v.model(*inputs)  # type: ignore[misc]
                v.times.append((clock() - start) / reps)


def _body(model: nn.Module | None) -> str | None:
    code = getattr(model, "code", None)
    return None if code is None else code.split(":", 2)[-1].split("\n", 1)[-1]


def _fmt_fold(row: Row, key: str) -> str:
    v = row.variants[key]
    if v.failure:
        return "trace failed" if key == "fx.fuse" else "FAILED"
    text = f"{row.folded(key)}/{row.executed}"
    return text + (" **wrong**" if row.wrong(key) else "")


def markdown(rows: list[Row]) -> str:
    head = (
        "| model | BN run | bnfold folded | fx.fuse folded | bnfold max err | fx.fuse max err "
        "| original ms | fx.fuse ms | bnfold ms | bnfold vs fx |\n"
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    )
    lines = [head]
    for row in rows:
        o, f, b = (row.variants[k] for k in ("original", "fx.fuse", "bnfold"))
        ratio = b.median_ms / f.median_ms if f.times and b.times else float("nan")
        lines.append(
            f"| {row.name} | {row.executed} | {_fmt_fold(row, 'bnfold')} | "
            f"{_fmt_fold(row, 'fx.fuse')} | {_err(b)} | {_err(f)} | {o.median_ms:.3f} | "
            f"{_ms(f)} | {_ms(b)} | {_ratio(ratio, row.same_graph)} |"
        )
    return "\n".join(lines)


def _ratio(ratio: float, same: bool) -> str:
    if ratio != ratio:
        return ""
    return f"{ratio:.3f}×" + (" (same graph)" if same else "")


def _err(v: Variant) -> str:
    return "—" if v.failure else f"{v.error:.1e}"


def _ms(v: Variant) -> str:
    return "—" if not v.times else f"{v.median_ms:.3f}"


def totals(rows: list[Row]) -> str:
    executed = sum(r.executed for r in rows)
    out = []
    for key in ("bnfold", "fx.fuse"):
        folded = sum(r.folded(key) for r in rows if not r.wrong(key))
        failed = [r.name for r in rows if r.variants[key].failure]
        wrong = [r.name for r in rows if r.wrong(key)]
        out.append(
            f"- {key}: {folded}/{executed} executed BN ops folded correctly "
            f"({100 * folded / max(executed, 1):.1f}%); failures: {', '.join(failed) or 'none'}; "
            f"wrong outputs: {', '.join(wrong) or 'none'}"
        )
    both = [r for r in rows if r.variants["fx.fuse"].times and r.variants["bnfold"].times]
    faster = [r for r in both if r.variants["bnfold"].median_ms <= r.variants["fx.fuse"].median_ms]
    slower = [r.name + (" (same graph)" if r.same_graph else "") for r in both if r not in faster]
    out.append(
        f"- latency: bnfold ≤ fx.fuse on {len(faster)}/{len(both)} models where both run"
        + (f" (slower: {', '.join(slower)})" if slower else "")
        + "; 'same graph' rows run identical code, so their gap is measurement noise"
    )
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(ZOO), help="comma-separated zoo names")
    parser.add_argument("--rounds", type=int, default=25, help="interleaved timing rounds")
    parser.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="wall: perf_counter; cpu: this thread's CPU time (robust on a loaded machine)",
    )
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--out", type=Path, help="also write the Markdown table here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    clock = time.perf_counter if args.clock == "wall" else time.thread_time
    logging.basicConfig(level=logging.WARNING)
    rows: list[Row] = []
    for name in args.models.split(","):
        row, inputs = build_row(name)
        time_interleaved(row, inputs, args.rounds, clock)
        rows.append(row)
        print(f"{name}: done", file=sys.stderr, flush=True)
    text = (
        f"torch {torch.__version__}, {args.threads} CPU thread(s), {args.rounds} interleaved "
        f"rounds, median latency ({args.clock} clock)\n\n{markdown(rows)}\n\n{totals(rows)}\n"
    )
    print(text)
    if args.out:
        args.out.write_text(text)
    return 0 if all(not r.variants["bnfold"].failure and not r.wrong("bnfold") for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
