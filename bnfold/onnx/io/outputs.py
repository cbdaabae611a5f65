"""Helpers for writing outputs safely: data-file names, atomic renames, OS errors."""

from __future__ import annotations

import contextlib
import errno
import itertools
import logging
import os
import re
from collections.abc import Iterable
from pathlib import Path

import onnx
import onnx_ir as ir

from bnfold.onnx.io import mapped

logger = logging.getLogger(__name__)

_OS_REASONS = {
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EFBIG: "file too large for this file system",
    errno.ENOTDIR: "a path component is not a folder",
}


def os_reason(err: OSError) -> str:
    """A short, lower-case reason for an OS error ("no space left on device")."""
    reason = _OS_REASONS.get(err.errno or -1)
    if reason is None:
        reason = (err.strerror or str(err) or type(err).__name__).strip()
        if reason[1:2].islower():  # "No space…" → "no space…", but keep "I/O error"
            reason = reason[:1].lower() + reason[1:]
    return reason


def source_data_files(model: ir.Model) -> set[Path]:
    """Resolved paths of every external data file the in-memory model still reads from."""
    paths: set[Path] = set()
    for graph in model.graphs():
        for value in graph.initializers.values():
            tensor = value.const_value
            if isinstance(tensor, ir.ExternalTensor):
                with contextlib.suppress(OSError, ValueError):
                    paths.add(Path(tensor.path).resolve())
    return paths


_SMALL_MODEL_FILE = 64 * 1024**2


def referenced_data_files(model_file: Path) -> set[Path]:
    """External data files an existing model file refers to (empty when unreadable)."""
    if not model_file.is_file():
        return set()
    if model_file.stat().st_size > _SMALL_MODEL_FILE:
        return set()  # weights are inline: parsing it would cost a full load for nothing
    try:
        read = mapped.read_mapped(model_file)  # large inline weights are skipped, not copied
        proto = read.proto if read else onnx.load(str(model_file), load_external_data=False)
    except Exception:  # not a model (or garbage): it owns nothing
        return set()
    found: set[Path] = set()
    for tensor in onnx.external_data_helper._get_all_tensors(proto):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        for entry in tensor.external_data:
            if entry.key == "location" and entry.value and not os.path.isabs(entry.value):
                found.add((model_file.parent / entry.value).resolve())
    return found


def data_file_name(out: Path, avoid: Iterable[Path]) -> str:
    """``<out>.data``, or ``<out>.<n>.data`` when that name is still read by a source.

    Writing weights over a file that the input model (or the file being replaced) still
    reads would corrupt it if the run stopped between the two renames of a commit.
    """
    taken = set(avoid)
    for n in itertools.count():
        name = f"{out.name}.{n}.data" if n else f"{out.name}.data"
        if (out.parent / name).resolve() not in taken:
            return name
    raise AssertionError("unreachable")


def owned_data_files(out: Path, referenced: Iterable[Path]) -> list[Path]:
    """Of the files ``out`` referenced, those bnfold named as ``out``'s own data."""
    pattern = re.compile(re.escape(out.name) + r"(\.\d+)?\.data")
    folder = out.parent.resolve()
    return sorted(p for p in referenced if p.parent == folder and pattern.fullmatch(p.name))


def remove_quietly(paths: Iterable[Path]) -> None:
    """Delete files, logging (not raising) on failure."""
    for path in paths:
        try:
            path.unlink()
        except FileNotFoundError:
            pass
        except OSError as err:
            logger.warning("could not remove stale data file %s: %s", path, err)
