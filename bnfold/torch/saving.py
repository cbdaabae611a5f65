"""Save a folded module as safetensors and rebuild it from the user's own model class.

``result.save("folded.safetensors")`` writes the folded weights (``safetensors.torch.
save_model``: shared tensors stored once) and, in the file's metadata, a JSON manifest of how
the module tree changed: which submodules became fx graphs and which BN call sites were folded
in each, and which BN modules were replaced by what remains of them (an activation, or
nothing). No class is pickled. ``load_folded(MyNet, "folded.safetensors")`` builds a fresh
model (from a factory or an instance, which is not modified), replays exactly those folds
without checking anything numerically (the weights come from the file), and loads the weights
strictly: a model whose structure differs from the one saved is an error, not a silent guess.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import nn

from bnfold.errors import InputError

if TYPE_CHECKING:
    from bnfold.torch.api import TorchFoldResult

FORMAT = "bnfold.torch.folded/1"
METADATA_KEY = "bnfold"


def save_folded(result: TorchFoldResult, path: str | Path) -> Path:
    """Write ``result.model``'s weights and the fold manifest to one safetensors file."""
    from safetensors.torch import save_model

    path = Path(path)
    manifest = {"format": FORMAT, **result.manifest}
    save_model(result.model, str(path), metadata={METADATA_KEY: json.dumps(manifest)})
    return path


def read_manifest(path: str | Path) -> dict[str, Any]:
    """The manifest stored by :func:`save_folded` (InputError when there is none)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as exc:  # missing file, not safetensors
        raise InputError(f"cannot read {path}: {exc}") from exc
    if METADATA_KEY not in meta:
        raise InputError(f"{path} was not written by bnfold (no '{METADATA_KEY}' metadata)")
    manifest = json.loads(meta[METADATA_KEY])
    if manifest.get("format") != FORMAT:
        raise InputError(f"{path}: unsupported format {manifest.get('format')!r}")
    return manifest


def load_folded(
    model: nn.Module | Callable[[], nn.Module],
    path: str | Path,
    *,
    example_inputs: Any = None,
) -> nn.Module:
    """Rebuild a folded module saved by ``TorchFoldResult.save`` from the user's model class.

    ``model`` is an instance (left unmodified) or a zero-argument factory. ``example_inputs``
    are needed only when the saved folds were proven on recorded shapes that the traced graph
    alone does not prove (the error says so).
    """
    from safetensors.torch import load_model

    from bnfold.torch.api import replay_folds

    manifest = read_manifest(path)
    module = model if isinstance(model, nn.Module) else model()
    if not isinstance(module, nn.Module):
        raise InputError(f"the factory returned {type(module).__name__}, not an nn.Module")
    rebuilt = replay_folds(module, manifest, example_inputs)
    try:
        missing, unexpected = load_model(rebuilt, str(path), strict=False)
    except Exception as exc:  # shape mismatches
        raise InputError(f"{path} does not fit the rebuilt model: {exc}") from exc
    if missing or unexpected:
        hint = "" if example_inputs is not None else " (pass example_inputs=… as when folding)"
        raise InputError(
            f"{path} does not fit the rebuilt model{hint}: missing {sorted(missing)[:5]}, "
            f"unexpected {sorted(unexpected)[:5]}"
        )
    return rebuilt.eval()
