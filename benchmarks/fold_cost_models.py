"""The ≥ 10 MB models of ``fold_cost.py``: torchvision/timm builds, exported once and cached.

Each model gets random BN statistics and affine parameters (``zoo.randomize_bn``) and is
exported with BN left unfolded by both exporters (``dynamo=True, optimize=False`` and
``dynamo=False, do_constant_folding=False``). Exports live outside the repository
(``~/.cache/bnfold-foldcost`` unless told otherwise) and are reused when present.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

logger = logging.getLogger("fold_cost")

CACHE = Path.home() / ".cache" / "bnfold-foldcost"
EXPORTERS = ("dynamo", "legacy")


def _torchvision(name: str) -> Callable[[], Any]:
    def build() -> Any:
        import torchvision

        return torchvision.models.get_model(name, weights=None)

    return build


def _timm(name: str) -> Callable[[], Any]:
    def build() -> Any:
        import timm

        return timm.create_model(name, pretrained=False)

    return build


# name → (builder, input side in pixels); ordered largest first.
MODELS: dict[str, tuple[Callable[[], Any], int]] = {
    "resnet50": (_torchvision("resnet50"), 224),
    "resnet18": (_torchvision("resnet18"), 224),
    "densenet121": (_torchvision("densenet121"), 224),
    "mobilenetv3_large_100": (_timm("mobilenetv3_large_100"), 224),
    "efficientnet_b0": (_timm("efficientnet_b0"), 224),
}


def export_path(cache: Path, name: str, exporter: str) -> Path:
    return cache / name / f"{exporter}.onnx"


def ensure_export(cache: Path, name: str, exporter: str) -> Path:
    """The cached export of ``name`` by ``exporter``, exporting it first when missing."""
    path = export_path(cache, name, exporter)
    if path.exists():
        return path
    import torch

    from bnfold.testing.zoo import export_onnx, randomize_bn

    logging.getLogger("torch").setLevel(logging.ERROR)
    build, side = MODELS[name]
    model = randomize_bn(build().eval())
    logger.info("exporting %s (%s exporter)", name, exporter)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.onnx")
    export_onnx(model, (torch.randn(1, 3, side, side),), tmp, exporter=exporter)  # type: ignore[arg-type]
    tmp.replace(path)
    return path
