"""Input sets for a comparison: the user's arrays, completed by synthesised ones.

``FirstRun`` is the reference run that probes input shapes during the shape search; its
outputs are reused for the first input set when the feeds are the same.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from bnfold.equivalence import inputs as inp
from bnfold.equivalence import shape_search
from bnfold.equivalence.session import ModelRunner
from bnfold.equivalence.signature import TensorSpec
from bnfold.errors import InputError

InputSets = Any  # path to .npz | Mapping[str, array] | Sequence of those


class Feeder:
    """Input sets: the user's arrays, completed by synthesised ones at resolved shapes."""

    def __init__(
        self,
        specs: Sequence[TensorSpec],
        shapes: Mapping[str, Sequence[int]],
        bounds: Mapping[str, int],
    ) -> None:
        self.specs = specs
        self.shapes = {k: tuple(v) for k, v in shapes.items()}
        self.bounds = bounds

    def fixed(self, partial: Mapping[str, np.ndarray]) -> dict[str, tuple[int, ...]]:
        """Shapes decided by the user: given arrays, then explicit shapes."""
        return {**{k: tuple(v.shape) for k, v in partial.items()}, **self.shapes}

    def feeds(
        self,
        partial: Mapping[str, np.ndarray],
        resolved: Mapping[str, tuple[int, ...]],
        rng: np.random.Generator,
    ) -> dict[str, np.ndarray]:
        """One complete input set: ``partial`` plus synthesised arrays at ``resolved``."""
        missing = [s for s in self.specs if s.name not in partial]
        feeds = {**inp.synthesize(missing, resolved, rng, self.bounds), **partial}
        return {s.name: feeds[s.name] for s in self.specs}


class FirstRun:
    """The reference run that probes input shapes, kept for the first input set's reuse."""

    def __init__(
        self, ref: ModelRunner, feeder: Feeder, partial: Mapping[str, np.ndarray], seed: int
    ) -> None:
        self.ref, self.feeder, self.partial, self.seed = ref, feeder, partial, seed
        self.last: tuple[dict[str, np.ndarray], dict[str, np.ndarray]] | None = None

    def try_shapes(self, resolved: Mapping[str, tuple[int, ...]]) -> None:
        """Run the reference at these shapes; VerificationError when it fails."""
        feeds = self.feeder.feeds(self.partial, resolved, np.random.default_rng(self.seed))
        self.last = (feeds, self.ref.run(feeds))

    def reuse(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray] | None:
        """The reference outputs for ``feeds`` if the probing run used exactly these."""
        if self.last is None:
            return None
        probed, outputs = self.last
        self.last = None  # one reuse only
        same = probed.keys() == feeds.keys() and all(
            probed[k].shape == v.shape and np.array_equal(probed[k], v) for k, v in feeds.items()
        )
        return outputs if same else None


def seed_list(seeds: int | Sequence[int]) -> list[int]:
    """``3`` → ``[0, 1, 2]``; explicit seeds as given (at least one)."""
    if isinstance(seeds, (int, np.integer)):
        if seeds < 1:
            raise InputError(f"seeds must be at least 1, got {seeds}")
        return list(range(int(seeds)))
    out = [int(s) for s in seeds]
    if not out:
        raise InputError("seeds must not be empty")
    return out


def given_sets(
    inputs: InputSets | None, specs: Sequence[TensorSpec]
) -> list[dict[str, np.ndarray]]:
    """The user's input sets (``.npz`` paths or dicts), coerced to the inputs' dtypes."""
    if inputs is None:
        return []
    items = [inputs] if isinstance(inputs, (str, os.PathLike, Mapping)) else list(inputs)
    sets = []
    for item in items:
        data = inp.load_npz(item) if isinstance(item, (str, os.PathLike)) else item
        if not isinstance(data, Mapping):
            raise InputError("inputs must be an .npz path, a dict of arrays, or a list of those")
        sets.append(inp.coerce_feeds(specs, data))
    if not sets:
        raise InputError("inputs is empty")
    return sets


def describe_inputs(
    specs: Sequence[TensorSpec],
    resolved: Mapping[str, tuple[int, ...]],
    given: Mapping[str, np.ndarray],
    found: shape_search.ShapeSearch,
) -> dict[str, str]:
    """name -> ``"float32 1x3x224x224 (synthesised)"`` (or given, or found by search)."""
    out = {}
    for s in specs:
        shape = "x".join(map(str, resolved[s.name])) or "scalar"
        origin = "given" if s.name in given else found.note(s.name) or "synthesised"
        out[s.name] = f"{s.dtype} {shape} ({origin})"
    return out
