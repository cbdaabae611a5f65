"""Random feeds for benchmarking, built from a session's declared inputs."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from bnfold.errors import InputError

_DTYPES = {
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
    "tensor(float16)": np.float16,
    "tensor(int8)": np.int8,
    "tensor(int16)": np.int16,
    "tensor(int32)": np.int32,
    "tensor(int64)": np.int64,
    "tensor(uint8)": np.uint8,
    "tensor(uint16)": np.uint16,
    "tensor(uint32)": np.uint32,
    "tensor(uint64)": np.uint64,
    "tensor(bool)": np.bool_,
}


def make_feeds(
    session: Any, shapes: Mapping[str, Sequence[int]] | None = None, seed: int = 0
) -> dict[str, np.ndarray]:
    """One random array per session input; symbolic dimensions become 1 unless ``shapes`` says.

    Floats are standard normal, integers are 0 or 1 (safe as indices), booleans random.
    """
    shapes = dict(shapes or {})
    unknown = set(shapes) - {arg.name for arg in session.get_inputs()}
    if unknown:
        raise InputError(f"shapes given for no model input: {', '.join(sorted(unknown))}")
    rng = np.random.default_rng(seed)
    feeds: dict[str, np.ndarray] = {}
    for arg in session.get_inputs():
        dtype = _DTYPES.get(arg.type)
        if dtype is None:
            raise InputError(f"cannot synthesise input {arg.name!r} of type {arg.type}")
        shape = tuple(shapes.get(arg.name, [_concrete(d) for d in arg.shape]))
        if np.issubdtype(dtype, np.floating):
            feeds[arg.name] = rng.standard_normal(shape).astype(dtype)
        elif dtype is np.bool_:
            feeds[arg.name] = rng.random(shape) < 0.5
        else:
            feeds[arg.name] = rng.integers(0, 2, size=shape).astype(dtype)
    return feeds


def _concrete(dim: Any) -> int:
    return dim if isinstance(dim, int) and dim > 0 else 1
