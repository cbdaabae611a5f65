"""Verification inputs: concrete shapes for symbolic dims, synthesis per dtype, npz files.

Defaults (overridable per input with ``shapes={"name": (1, 3, 224, 224)}``):
the first dim of every input is the batch and becomes 1; a symbolic dim shared by
name with an input whose shape is known takes that size; other symbolic dims become
224 for the spatial dims of 4-D inputs (images), 32 for 5-D (volumes), 64 elsewhere.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import numpy as np
import onnx

from bnfold.equivalence.signature import TensorSpec
from bnfold.errors import InputError

DEFAULT_INDEX_BOUND = 16  # ints are drawn from [0, bound): valid ids, indices, classes
BATCH_DIM = 1
IMAGE_DIM = 224
VOLUME_DIM = 32
OTHER_DIM = 64
Feeds = dict[str, np.ndarray]


def default_dim(rank: int, axis: int) -> int:
    """The size a symbolic dim gets when nothing else decides it."""
    if axis == 0:
        return BATCH_DIM
    if rank == 4 and axis >= 2:
        return IMAGE_DIM
    if rank == 5 and axis >= 2:
        return VOLUME_DIM
    return OTHER_DIM


def resolve_shapes(
    specs: Sequence[TensorSpec],
    fixed: Mapping[str, Sequence[int]],
    sizes: Mapping[str, int] | None = None,
) -> tuple[dict[str, tuple[int, ...]], dict[str, int]]:
    """Concrete shapes for every input, and the symbolic dims that fell back to defaults.

    ``fixed`` holds shapes the user gave (or arrays they supplied); they must agree with
    the model's static dims, and their sizes bind symbolic dim names shared with other inputs.
    ``sizes`` replaces the default of a free dim, keyed as in the returned ``defaulted``
    (the symbolic name, or ``input[axis]`` for an unnamed dim); see ``shape_search``.
    """
    sizes = sizes or {}
    by_name = {s.name: s for s in specs}
    unknown = sorted(set(fixed) - set(by_name))
    if unknown:
        raise InputError(
            f"unknown input name(s) {unknown}; the model's inputs are {sorted(by_name)}"
        )
    bound: dict[str, int] = {}
    shapes: dict[str, tuple[int, ...]] = {}
    for name, shape in fixed.items():
        spec = by_name[name]
        shape = tuple(int(d) for d in shape)
        _check_shape(spec, shape)
        shapes[name] = shape
        for d, size in zip(spec.shape or (), shape, strict=False):
            if isinstance(d, str):
                bound.setdefault(d, size)
    defaulted: dict[str, int] = {}
    for spec in specs:
        if spec.name in shapes:
            continue
        if spec.shape is None:
            raise InputError(f"input {spec.name!r} has unknown rank: give its shape explicitly")
        dims = []
        for axis, d in enumerate(spec.shape):
            if isinstance(d, int):
                dims.append(d)
            elif isinstance(d, str) and d in bound:
                dims.append(bound[d])
            else:
                key = free_dim_key(spec.name, axis, d)
                size = sizes.get(key, default_dim(len(spec.shape), axis))
                if isinstance(d, str):
                    bound[d] = size
                defaulted[key] = size
                dims.append(size)
        shapes[spec.name] = tuple(dims)
    return shapes, defaulted


def free_dim_key(input_name: str, axis: int, dim: str | None) -> str:
    """How a symbolic dim is named in ``defaulted`` and ``sizes``: its symbol or ``x[2]``."""
    return dim if isinstance(dim, str) else f"{input_name}[{axis}]"


def _check_shape(spec: TensorSpec, shape: tuple[int, ...]) -> None:
    if spec.shape is None:
        return
    if len(shape) != len(spec.shape) or any(
        isinstance(d, int) and d != s for d, s in zip(spec.shape, shape, strict=False)
    ):
        raise InputError(
            f"shape {'x'.join(map(str, shape)) or 'scalar'} does not fit input {spec.name!r} "
            f"({spec.shape_text()})"
        )


def synthesize(
    specs: Sequence[TensorSpec],
    shapes: Mapping[str, tuple[int, ...]],
    rng: np.random.Generator,
    index_bounds: Mapping[str, int] | None = None,
) -> Feeds:
    """Random inputs per dtype: floats ~ N(0, 1), ints in [0, bound), uint8 in [0, 256), bools."""
    index_bounds = index_bounds or {}
    feeds: Feeds = {}
    for spec in specs:
        shape = shapes[spec.name]
        dtype = spec.dtype
        if spec.is_float:
            feeds[spec.name] = rng.standard_normal(shape).astype(dtype)
        elif dtype == np.bool_:
            feeds[spec.name] = rng.random(shape) < 0.5
        elif dtype == np.uint8:
            feeds[spec.name] = rng.integers(0, 256, shape).astype(dtype)
        else:
            high = max(1, index_bounds.get(spec.name, DEFAULT_INDEX_BOUND))
            feeds[spec.name] = rng.integers(0, high, shape).astype(dtype)
    return feeds


def perturb(feeds: Mapping[str, np.ndarray], rng: np.random.Generator, ulps: int) -> Feeds | None:
    """Move every float element by ±1…``ulps`` ulps (relative), or None without float inputs."""
    out: Feeds = {}
    touched = False
    for name, value in feeds.items():
        if np.issubdtype(value.dtype, np.floating):
            eps = np.finfo(value.dtype).eps
            steps = rng.integers(1, ulps + 1, value.shape) * rng.choice((-1, 1), value.shape)
            out[name] = (value.astype(np.float64) * (1.0 + steps * eps)).astype(value.dtype)
            touched = True
        else:
            out[name] = value
    return out if touched else None


def load_npz(path: str | os.PathLike) -> Feeds:
    """Arrays of an ``.npz`` file keyed by input name."""
    try:
        with np.load(path, allow_pickle=False) as data:
            return {name: np.asarray(data[name]) for name in data.files}
    except (OSError, ValueError) as err:
        raise InputError(f"cannot read inputs from {path}: {err}") from err


def coerce_feeds(specs: Sequence[TensorSpec], given: Mapping[str, object]) -> Feeds:
    """Check user arrays against the model's inputs and cast within the same kind."""
    by_name = {s.name: s for s in specs}
    unknown = sorted(set(given) - set(by_name))
    if unknown:
        raise InputError(
            f"unknown input name(s) {unknown}; the model's inputs are {sorted(by_name)}"
        )
    feeds: Feeds = {}
    for name, value in given.items():
        spec = by_name[name]
        arr = np.asarray(value)
        if arr.dtype != spec.dtype:
            if arr.dtype.kind != spec.dtype.kind and not (
                arr.dtype.kind in "iu" and spec.dtype.kind in "iu"
            ):
                raise InputError(f"input {name!r} is {arr.dtype}, the model expects {spec.dtype}")
            arr = arr.astype(spec.dtype)
        _check_shape(spec, tuple(arr.shape))
        feeds[name] = arr
    return feeds


def index_bounds(model: onnx.ModelProto, input_names: Sequence[str]) -> dict[str, int]:
    """For int inputs used as Gather indices into a constant table, the table's size."""
    wanted = set(input_names)
    sizes = {t.name: list(t.dims) for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            sizes[node.output[0]] = list(node.attribute[0].t.dims)
    alias = {n: n for n in wanted}  # values that are an input, possibly through Cast
    bounds: dict[str, int] = {}
    for node in model.graph.node:
        if node.op_type == "Cast" and node.input and node.input[0] in alias:
            alias[node.output[0]] = alias[node.input[0]]
        if node.op_type != "Gather" or len(node.input) < 2 or node.input[1] not in alias:
            continue
        dims = sizes.get(node.input[0])
        axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
        if dims and -len(dims) <= axis < len(dims):
            name = alias[node.input[1]]
            bounds[name] = min(bounds.get(name, dims[axis]), dims[axis])
    return bounds
