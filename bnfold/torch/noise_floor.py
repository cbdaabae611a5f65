"""The ONNX side's noise-floor rule, for anything torch runs (modules and exported programs).

``floor`` is the largest change of the reference's own output when its float inputs move by
1–``INPUT_ULPS`` eps and its float parameters and buffers by one eps (relative), over two
perturbed runs per input set. The judgement itself is :mod:`bnfold.equivalence.compare`'s.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.utils._pytree import tree_flatten, tree_leaves, tree_unflatten

from bnfold.equivalence.compare import INPUT_ULPS, Floor, floor_contribution

Inputs = tuple[tuple[Any, ...], dict[str, Any]]


def run_raw(module: torch.nn.Module, inputs: Inputs) -> Any:
    """``module(*args, **kwargs)`` under no_grad, on fresh copies, with a fixed RNG seed.

    Copies: a model may modify its inputs in place. Seed: a model may draw random numbers
    (Monte-Carlo dropout); both runs then draw the same ones.
    """
    args, kwargs = inputs
    leaves, spec = tree_flatten((args, kwargs))
    fresh = [x.clone() if isinstance(x, torch.Tensor) else x for x in leaves]
    args, kwargs = tree_unflatten(fresh, spec)
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.no_grad(), torch.random.fork_rng(devices=devices):
        torch.manual_seed(0)
        return module(*args, **kwargs)


def arrays(result: Any) -> list[np.ndarray]:
    """Every tensor leaf of a result as a numpy array (bfloat16 read as float32)."""
    out = []
    for leaf in tree_leaves(result):
        if isinstance(leaf, torch.Tensor):
            t = leaf.detach().cpu()
            out.append((t.float() if t.dtype == torch.bfloat16 else t).numpy())
    return out


def run(module: torch.nn.Module, inputs: Inputs) -> list[np.ndarray]:
    """Every tensor output of one run as a numpy array."""
    return arrays(run_raw(module, inputs))


def nudged(inputs: Inputs, seed: int) -> Inputs:
    """Float inputs times 1 ± k·eps, k in 1…INPUT_ULPS."""
    gen = torch.Generator().manual_seed(seed)
    leaves, spec = tree_flatten(inputs)
    new = []
    for x in leaves:
        if isinstance(x, torch.Tensor) and x.dtype.is_floating_point:
            eps = torch.finfo(x.dtype).eps
            k = torch.randint(-INPUT_ULPS, INPUT_ULPS + 1, x.shape, generator=gen)
            x = (x.double() * (1 + k.double().to(x.device) * eps)).to(x.dtype)
        new.append(x)
    args, kwargs = tree_unflatten(new, spec)
    return tuple(args), dict(kwargs)


def jittered(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """A copy whose float parameters and buffers move by one eps (relative)."""
    copied = copy.deepcopy(module)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for t in [*copied.parameters(), *copied.buffers()]:
            if t.dtype.is_floating_point and t.numel():
                sign = torch.randint(0, 2, t.shape, generator=gen).to(torch.float64) * 2 - 1
                moved = t.double() * (1 + sign.to(t.device) * torch.finfo(t.dtype).eps)
                t.copy_(moved.to(t.dtype))
    return copied


def noise_floors(
    module: torch.nn.Module, sets: Sequence[Inputs], outputs: Sequence[Sequence[np.ndarray]]
) -> list[Floor]:
    """Per output: the floor pooled over two perturbed runs of every input set.

    A model that rejects moved inputs (integer masks, exact size checks) gets a weight-only
    floor; one that rejects moved weights gets an input-only one.
    """
    floors = [Floor() for _ in outputs[0]]
    for k in range(2):
        moved = jittered(module, seed=100 + k)
        for i, inputs in enumerate(sets):
            outs = _first_run(
                [
                    (moved, nudged(inputs, seed=10 * i + k)),
                    (moved, inputs),
                    (module, nudged(inputs, seed=10 * i + k)),
                ]
            )
            for j, (ref, got) in enumerate(zip(outputs[i], outs, strict=False)):
                floors[j] = floors[j].merge(floor_contribution(ref, got))
    return floors


def _first_run(attempts: list[tuple[torch.nn.Module, Inputs]]) -> list[np.ndarray]:
    for module, inputs in attempts:
        try:
            return run(module, inputs)
        except Exception:  # the model rejects these perturbed weights or inputs
            continue
    return []
