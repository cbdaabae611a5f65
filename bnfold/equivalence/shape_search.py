"""Find input sizes a model accepts when the default ones do not run.

Models with dynamic dims often run only at some sizes: a text recogniser trained at
height 48 fails in a ``Reshape`` at 224. When the reference fails at the defaults
(``inputs.default_dim``), the free dims (symbolic, not given by the user, not the batch)
are searched, in this order, until the reference runs:

1. sizes the model states in its metadata (``image_shape``, ``input_size``, …);
2. a ladder of square spatial sizes (224, 256, 320, 128, 64, 48, …), with the dims of
   sequences and volumes moving along their own ladders in step;
3. non-square pairs where one spatial dim is small (48×320, 32×320, …);
4. one free dim at a time, the others at their defaults.

The search is bounded (``MAX_ATTEMPTS`` runs and ``MAX_SECONDS``); when nothing runs it
raises one ``VerificationError`` naming the failing node and what to pass instead.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import re
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import onnx

from bnfold.equivalence import inputs as inp
from bnfold.equivalence.signature import TensorSpec
from bnfold.errors import VerificationError

logger = logging.getLogger(__name__)

SQUARE_LADDER = (224, 256, 320, 128, 64, 48, 32, 96, 160, 192, 384, 512, 640)
VOLUME_LADDER = (32, 16, 64, 8, 48, 96, 128, 24, 40, 80, 112, 160, 192)
OTHER_LADDER = (64, 128, 32, 256, 16, 100, 512, 8, 200, 48, 1000, 1, 4)
SMALL_FIRST_PAIRS = ((48, 320), (32, 320), (64, 256), (32, 128), (48, 160))
SQUARES_BEFORE_PAIRS = 6  # 224 … 48: the common sizes come first
MAX_ATTEMPTS = 15
MAX_SECONDS = 20.0
MIN_ATTEMPTS = 4  # tried whatever the clock says
_HINT_KEYS = re.compile(r"shape|size|resolution|dim", re.IGNORECASE)
_FAILED_NODE = re.compile(r"running (\w+) node\. Name:'([^']*)'")

Sizes = dict[str, int]
Shapes = dict[str, tuple[int, ...]]


@dataclasses.dataclass(frozen=True)
class FreeDim:
    """A dim the search may set: its key (see ``inputs.free_dim_key``), rank and axis."""

    key: str
    rank: int
    axis: int

    @property
    def spatial(self) -> bool:
        return self.rank in (4, 5) and self.axis >= 2


@dataclasses.dataclass
class Attempt:
    """One try: the shapes fed and, when the reference failed, why and where."""

    shapes: Shapes
    error: str | None = None
    node: str | None = None  # "Reshape 'p2o.Reshape.79'"

    @property
    def ran(self) -> bool:
        return self.error is None

    def to_dict(self) -> dict[str, Any]:
        return {
            "shapes": {k: "x".join(map(str, v)) for k, v in self.shapes.items()},
            "ran": self.ran,
            "node": self.node,
            "error": self.error,
        }


@dataclasses.dataclass
class ShapeSearch:
    """The sizes chosen for the free dims and every attempt that led there."""

    sizes: Sizes
    attempts: list[Attempt]

    @property
    def searched(self) -> bool:
        return len(self.attempts) > 1

    def note(self, name: str) -> str:
        """Why input ``name`` has its shape, e.g. ``searched; 224x224 failed in Reshape 'r'``."""
        first = self.attempts[0]
        shape = first.shapes.get(name)
        if not self.searched or shape is None:
            return ""
        where = f" in {first.node}" if first.node else ""
        return f"searched; {_spatial_text(shape)} failed{where}"

    def to_dict(self) -> dict[str, Any]:
        return {"sizes": self.sizes, "attempts": [a.to_dict() for a in self.attempts]}


def free_dims(specs: Sequence[TensorSpec], fixed: Mapping[str, Sequence[int]]) -> list[FreeDim]:
    """The dims a search may vary: symbolic, not fixed by the user, not the batch dim."""
    _, defaulted = inp.resolve_shapes(specs, fixed)
    found: dict[str, FreeDim] = {}
    for spec in specs:
        if spec.name in fixed or spec.shape is None:
            continue
        for axis, d in enumerate(spec.shape):
            key = inp.free_dim_key(spec.name, axis, d)
            if key in defaulted and key not in found and not isinstance(d, int):
                found[key] = FreeDim(key, len(spec.shape), axis)
    return [f for f in found.values() if f.axis != 0]


def candidate_sizes(free: Sequence[FreeDim], hints: Sequence[Sizes] = ()) -> Iterator[Sizes]:
    """Sizes to try after the defaults failed, most likely first, without repeats."""
    seen: set[tuple[tuple[str, int], ...]] = {tuple(sorted(_ladder_step(free, 0).items()))}
    for sizes in itertools.chain(hints, _ladders_and_pairs(free), _one_at_a_time(free)):
        full = {**_ladder_step(free, 0), **sizes}
        key = tuple(sorted(full.items()))
        if key not in seen:
            seen.add(key)
            yield full


def search(
    specs: Sequence[TensorSpec],
    fixed: Mapping[str, Sequence[int]],
    try_run: Callable[[Shapes], None],
    *,
    model: onnx.ModelProto | None = None,
    max_attempts: int = MAX_ATTEMPTS,
    max_seconds: float = MAX_SECONDS,
) -> ShapeSearch:
    """Run ``try_run`` at the default shapes, then at searched ones until one runs.

    ``try_run`` raises VerificationError when the reference fails at those shapes. Sizes the
    ``model``'s metadata states are tried first. Returns the sizes that ran; raises
    VerificationError (one line) when none did.
    """
    start = time.monotonic()
    attempts: list[Attempt] = []
    first = _attempt(specs, fixed, {}, try_run)
    attempts.append(first)
    if first.ran:
        return ShapeSearch({}, attempts)
    free = free_dims(specs, fixed)
    hints = metadata_hints(model, free) if model is not None else []
    for sizes in candidate_sizes(free, hints):
        out_of_time = time.monotonic() - start > max_seconds and len(attempts) >= MIN_ATTEMPTS
        if len(attempts) >= max_attempts or out_of_time:
            break
        attempt = _attempt(specs, fixed, sizes, try_run)
        attempts.append(attempt)
        if attempt.ran:
            logger.info("inputs run at %s after %d attempts", attempt.shapes, len(attempts))
            return ShapeSearch(sizes, attempts)
    raise VerificationError(_nothing_ran(specs, free, attempts))


def metadata_hints(model: onnx.ModelProto, free: Sequence[FreeDim]) -> list[Sizes]:
    """Sizes for the free spatial dims read from the model's metadata, if it states any.

    A value such as ``[3, 48, 320]`` under a key naming a shape or size gives its last
    numbers to the spatial dims, in order.
    """
    spatial = [f for f in free if f.spatial]
    if not spatial:
        return []
    hints = []
    for prop in model.metadata_props:
        if not _HINT_KEYS.search(prop.key):
            continue
        numbers = [int(n) for n in re.findall(r"\d+", prop.value)]
        if len(numbers) >= len(spatial) and all(0 < n <= 4096 for n in numbers):
            tail = numbers[-len(spatial) :]
            hints.append({f.key: n for f, n in zip(spatial, tail, strict=True)})
    return hints


def failing_node(message: str) -> str | None:
    """``"Reshape 'p2o.Reshape.79'"`` from an onnxruntime run error, when it names one."""
    match = _FAILED_NODE.search(message)
    return f"{match.group(1)} '{match.group(2)}'" if match else None


def _attempt(
    specs: Sequence[TensorSpec],
    fixed: Mapping[str, Sequence[int]],
    sizes: Sizes,
    try_run: Callable[[Shapes], None],
) -> Attempt:
    shapes, _ = inp.resolve_shapes(specs, fixed, sizes)
    try:
        try_run(shapes)
    except VerificationError as err:
        return Attempt(shapes, str(err), failing_node(str(err)))
    return Attempt(shapes)


def _ladder_step(free: Sequence[FreeDim], i: int) -> Sizes:
    """Step ``i`` of every dim's ladder at once (step 0 is the default size)."""
    sizes = {}
    for f in free:
        if f.spatial and f.rank == 4:
            ladder = SQUARE_LADDER
        elif f.spatial:
            ladder = VOLUME_LADDER
        else:
            ladder = OTHER_LADDER
        sizes[f.key] = ladder[i % len(ladder)] if i else inp.default_dim(f.rank, f.axis)
    return sizes


def _ladders_and_pairs(free: Sequence[FreeDim]) -> Iterator[Sizes]:
    steps = range(1, len(SQUARE_LADDER))
    for i in steps[: SQUARES_BEFORE_PAIRS - 1]:
        yield _ladder_step(free, i)
    yield from _small_first_pairs(free)
    for i in steps[SQUARES_BEFORE_PAIRS - 1 :]:
        yield _ladder_step(free, i)


def _small_first_pairs(free: Sequence[FreeDim]) -> Iterator[Sizes]:
    """(H, W) pairs with a small height — text lines, spectrogram strips — for 4-D inputs."""
    image = [f for f in free if f.spatial and f.rank == 4]
    heights = [f for f in image if f.axis == 2]
    widths = [f for f in image if f.axis == 3]
    if not heights and not widths:
        return
    for h, w in SMALL_FIRST_PAIRS:
        yield {**{f.key: h for f in heights}, **{f.key: w for f in widths}}


def _one_at_a_time(free: Sequence[FreeDim]) -> Iterator[Sizes]:
    if len(free) < 2:
        return
    for i in range(1, len(SQUARE_LADDER)):
        for f in free:
            yield {f.key: _ladder_step([f], i)[f.key]}


def _spatial_text(shape: tuple[int, ...]) -> str:
    """``224x224`` for an image, the whole shape otherwise."""
    dims = shape[2:] if len(shape) in (4, 5) else shape
    return "x".join(map(str, dims)) or "scalar"


def _nothing_ran(specs: Sequence[TensorSpec], free: Sequence[FreeDim], tried: list[Attempt]) -> str:
    first, last = tried[0], tried[-1]
    what = f"{_shapes_text(first.shapes)} failed " + (
        f"in {first.node}" if first.node else f"({first.error})"
    )
    if len(tried) > 1:
        what = f"{len(tried)} input shapes tried; {what}; last {_shapes_text(last.shapes)}"
        what += f" in {last.node}" if last.node else ""
    hint = _shape_hint(specs) or "--shape NAME:DIMS"
    return (
        f"onnxruntime cannot run the original model ({what}): give sizes it accepts with "
        f"{hint}, real data with --inputs data.npz, or skip verification with --no-verify"
    )


def _shape_hint(specs: Sequence[TensorSpec]) -> str:
    """``--shape x:1x3xHxW`` for each input with symbolic dims besides the batch."""
    letters = {(4, 2): "H", (4, 3): "W", (5, 2): "D", (5, 3): "H", (5, 4): "W"}
    parts = []
    for spec in specs:
        if spec.shape is None:
            continue
        rank = len(spec.shape)
        dims = [
            str(d) if isinstance(d, int) else "1" if axis == 0 else letters.get((rank, axis), "L")
            for axis, d in enumerate(spec.shape)
        ]
        if any(not isinstance(d, int) for d in spec.shape[1:]):
            parts.append(f"--shape {spec.name}:{'x'.join(dims)}")
    return " ".join(parts)


def _shapes_text(shapes: Shapes) -> str:
    return ", ".join(f"{k} {'x'.join(map(str, v))}" for k, v in shapes.items())
