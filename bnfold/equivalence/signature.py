"""Model signatures: input/output names, dtypes and shapes, and checking two agree."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

from bnfold.errors import VerificationError

Dim = int | str | None

_ORT_TYPES: dict[str, str] = {
    "float": "float32",
    "float16": "float16",
    "double": "float64",
    "int8": "int8",
    "int16": "int16",
    "int32": "int32",
    "int64": "int64",
    "uint8": "uint8",
    "uint16": "uint16",
    "uint32": "uint32",
    "uint64": "uint64",
    "bool": "bool",
}


@dataclasses.dataclass(frozen=True)
class TensorSpec:
    """One graph input or output: name, numpy dtype and (possibly symbolic) shape."""

    name: str
    dtype: np.dtype
    shape: tuple[Dim, ...] | None  # None: rank unknown

    @property
    def is_float(self) -> bool:
        return np.issubdtype(self.dtype, np.floating)

    def shape_text(self) -> str:
        if self.shape is None:
            return "?"
        return "x".join("?" if d is None else str(d) for d in self.shape) or "scalar"


def spec_from_node_arg(arg: Any, role: str) -> TensorSpec:
    """Build a TensorSpec from an onnxruntime ``NodeArg``; non-tensor types are refused."""
    type_str: str = arg.type
    if not (type_str.startswith("tensor(") and type_str.endswith(")")):
        raise VerificationError(
            f"{role} {arg.name!r} has type {type_str}; only tensors are supported"
        )
    elem = type_str[len("tensor(") : -1]
    if elem not in _ORT_TYPES:
        raise VerificationError(f"{role} {arg.name!r} has unsupported element type {elem}")
    shape = None if arg.shape is None else tuple(_dim(d) for d in arg.shape)
    return TensorSpec(arg.name, np.dtype(_ORT_TYPES[elem]), shape)


def _dim(d: Any) -> Dim:
    if isinstance(d, int) and d >= 0:
        return d
    if isinstance(d, str) and d and d != "?":  # onnxruntime writes "?" for an unnamed dim
        return d
    return None


def check_same_signature(
    reference: Sequence[TensorSpec], candidate: Sequence[TensorSpec], role: str
) -> None:
    """Raise VerificationError unless both models agree on names, dtypes, ranks, static dims."""
    ref = {s.name: s for s in reference}
    cand = {s.name: s for s in candidate}
    if set(ref) != set(cand):
        only_ref = sorted(set(ref) - set(cand))
        only_cand = sorted(set(cand) - set(ref))
        raise VerificationError(
            f"the models' {role} names differ: only in reference {only_ref}, "
            f"only in candidate {only_cand}"
        )
    for name, r in ref.items():
        c = cand[name]
        if r.dtype != c.dtype:
            raise VerificationError(
                f"{role} {name!r} is {r.dtype} in the reference but {c.dtype} in the candidate"
            )
        if r.shape is None or c.shape is None:
            continue
        if len(r.shape) != len(c.shape):
            raise VerificationError(
                f"{role} {name!r} has rank {len(r.shape)} in the reference but "
                f"{len(c.shape)} in the candidate"
            )
        for rd, cd in zip(r.shape, c.shape, strict=True):
            if isinstance(rd, int) and isinstance(cd, int) and rd != cd:
                raise VerificationError(
                    f"{role} {name!r} has shape {r.shape_text()} in the reference but "
                    f"{c.shape_text()} in the candidate"
                )


def merge_input_specs(
    reference: Sequence[TensorSpec], candidate: Sequence[TensorSpec]
) -> list[TensorSpec]:
    """Reference specs, with dims the candidate knows statically filled in."""
    cand = {s.name: s for s in candidate}
    merged = []
    for r in reference:
        c = cand[r.name]
        if r.shape is None:
            merged.append(dataclasses.replace(r, shape=c.shape))
            continue
        if c.shape is None:
            merged.append(r)
            continue
        dims = tuple(
            rd if isinstance(rd, int) else cd if isinstance(cd, int) else rd
            for rd, cd in zip(r.shape, c.shape, strict=False)
        )
        merged.append(dataclasses.replace(r, shape=dims))
    return merged
