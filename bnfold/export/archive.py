"""``.pt2`` archives (``torch.export.save``): refuse ones that would be unpickled, load, save.

What torch 2.13's loader unpickles, and so what ``pickled_entries`` looks for before any
``torch.export.load``: weights and tensor constants whose config says ``use_pickle``
(``torch.load(weights_only=False)``), custom and opaque objects in ``data/constants/``
(``torch._C._pickle_load_obj`` / ``pickle.loads``), a legacy ``data/constants/<model>.pt``,
and sample inputs that the restricted ``weights_only=True`` unpickler rejects (the loader
then retries with full unpickling). Model JSON and raw weight bytes are read as data.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
import warnings
import zipfile
from pathlib import Path
from typing import Any

from bnfold.errors import InputError, OutputError

PICKLED_PREFIXES = ("custom_obj", "opaque_obj")


def pickled_entries(path: Path) -> list[str]:
    """Archive entries that loading would unpickle beyond plain tensors (empty when none)."""
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as err:
        raise InputError(f"{path}: not a torch.export archive ({err})") from err
    found: list[str] = []
    with archive:
        names = archive.namelist()
        for name in names:
            rel = name.split("/", 1)[1] if "/" in name else name
            if rel.startswith("data/weights/") and rel.endswith("weights_config.json"):
                found += _pickled_in_config(archive, name, "data/weights/")
            elif rel.startswith("data/constants/") and rel.endswith("constants_config.json"):
                found += _pickled_in_config(archive, name, "data/constants/")
            elif rel.startswith("data/constants/") and rel.endswith(".pt"):
                found.append(f"{rel} (legacy pickled constants)")
            elif rel.startswith("data/sample_inputs/") and not _loads_restricted(archive, name):
                found.append(f"{rel} (sample inputs beyond plain tensors)")
            elif rel.endswith(".pkl"):
                found.append(rel)
    return found


def _pickled_in_config(archive: zipfile.ZipFile, name: str, folder: str) -> list[str]:
    try:
        config = json.loads(archive.read(name)).get("config", {})
    except (ValueError, AttributeError):
        return [f"{name} (unreadable payload config)"]
    found = []
    for fqn, meta in config.items():
        path_name = str(meta.get("path_name", ""))
        if meta.get("use_pickle") or path_name.startswith(PICKLED_PREFIXES):
            found.append(f"{folder}{path_name} ({fqn})")
    return found


def _loads_restricted(archive: zipfile.ZipFile, name: str) -> bool:
    """True when torch's ``weights_only=True`` unpickler reads the entry (no code runs)."""
    import torch

    data = archive.read(name)
    if not data:
        return True
    try:
        torch.load(io.BytesIO(data), weights_only=True)
    except Exception:
        return False
    return True


def load_program(path: str | os.PathLike[str], *, trust_pickle: bool = False) -> Any:
    """``torch.export.load`` after checking that nothing would be unpickled (unless trusted)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    if not trust_pickle:
        entries = pickled_entries(path)
        if entries:
            more = f" and {len(entries) - 1} more" if len(entries) > 1 else ""
            raise InputError(
                f"{path}: loading would unpickle {entries[0]}{more}; "
                "rerun with --trust-pickle (trust_pickle=True) if you trust its source"
            )
    import torch

    try:
        with warnings.catch_warnings():  # torch's own pytree deprecation noise on load
            warnings.simplefilter("ignore", FutureWarning)
            return torch.export.load(path)
    except Exception as err:
        raise InputError(f"{path}: cannot load the exported program ({err})") from err


def save_program(ep: Any, path: Path) -> Path:
    """``torch.export.save`` through a temporary file in the same folder, then rename."""
    import torch

    folder = path.parent if str(path.parent) else Path(".")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".tmp.pt2", dir=folder)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())
    try:
        torch.export.save(ep, tmp)
        os.replace(tmp, path)
    except OSError as err:
        raise OutputError(f"{path}: cannot write ({err})") from err
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
