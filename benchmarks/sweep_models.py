"""The sweep's models: one small timm architecture per family, torchvision models, exports.

timm families are the modules that define the models (``timm.models._registry``). The
catalogue instantiates every timm name on the meta device (no weights, ~7 min once, cached)
to learn its parameter count and whether it holds any ``nn.BatchNorm*`` / ``BatchNormAct2d``.
Pass 1 takes the smallest BN model of every family; pass 2 the smallest of every further
architecture (name stem) inside a family, smallest first. ``export_entry`` runs in a
:class:`sweep_worker.Worker` child: it builds the model (random BN statistics), picks the
smallest input size the model accepts, and exports one variant.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
PASS2_MAX_PARAMS = 30_000_000
TIMM_LIMIT = 150
PROBE_SIZES = (64, 96, 128, 160, 192)
BASE_VARIANTS = ("dynamo", "legacy")
FORMAT_VARIANTS = ("fp16", "opset11", "opset13", "extdata", "training")
# The subset that also gets the format variants (picked when present in the selection).
VARIANT_MODELS = (
    "resnet10t",
    "mobilenetv3_small_050",
    "regnetx_002",
    "densenet121",
    "levit_128s",
    "ghostnet_050",
    "repvit_m1",
    "dla46x_c",
    "mobilevit_xxs",
    "tv_resnet18",
    "tv_lraspp_mobilenet_v3_large",
)


@dataclass(frozen=True)
class Model:
    """A model to export: its name, where it comes from and its family."""

    name: str
    source: str  # "timm" | "torchvision" | "paddle" | "extra"
    family: str
    params: int = 0
    path: str | None = None  # ready-made ONNX file (paddle, extra)


# ---- timm catalogue and selection -----------------------------------------------------


def build_catalogue(out: str) -> int:
    """Instantiate every timm model on the meta device; write {name: [module, params, bn]}."""
    import warnings

    import timm
    import torch
    from timm.layers import BatchNormAct2d
    from timm.models import _registry

    warnings.filterwarnings("ignore")
    bn_types = (torch.nn.modules.batchnorm._BatchNorm, BatchNormAct2d)
    catalogue: dict[str, list[Any]] = {}
    for name in timm.list_models():
        module = _registry._model_to_module[name]
        try:
            with torch.device("meta"):
                net = timm.create_model(name, pretrained=False)
            params = sum(p.numel() for p in net.parameters())
            bn = sum(isinstance(m, bn_types) for m in net.modules())
            catalogue[name] = [module, params, bn]
        except Exception as err:
            catalogue[name] = [module, None, None, f"{type(err).__name__}"]
    Path(out).write_text(json.dumps(catalogue))
    return len(catalogue)


def stem(name: str) -> str:
    """Architecture stem of a timm name: ``resnet10t`` → resnet, ``tf_mixnet_s`` → tf_mixnet."""
    parts = name.split("_")
    head = parts[0]
    if head in ("tf", "legacy", "gluon") and len(parts) > 1:
        head = f"{head}_{parts[1]}"
    return re.sub(r"(?<!v)\d+[a-z]?$", "", head)


def select_timm(catalogue: dict[str, list[Any]], limit: int = TIMM_LIMIT) -> list[Model]:
    """Pass 1: smallest BN model per family; pass 2: smallest per further stem."""
    bn = {
        name: (entry[0], entry[1])
        for name, entry in catalogue.items()
        if entry[1] is not None and entry[2] and not name.startswith("test_")
    }
    ordered = sorted(bn.items(), key=lambda kv: (kv[1][1], kv[0]))
    first: dict[str, Model] = {}
    for name, (family, params) in ordered:
        first.setdefault(family, Model(name, "timm", family, params))
    seen = {(m.family, stem(m.name)) for m in first.values()}
    second: list[Model] = []
    for name, (family, params) in ordered:
        key = (family, stem(name))
        if key not in seen and params <= PASS2_MAX_PARAMS:
            seen.add(key)
            second.append(Model(name, "timm", family, params))
    picks = sorted(first.values(), key=lambda m: m.family) + second
    return picks[:limit]


# ---- torchvision ----------------------------------------------------------------------

TORCHVISION: dict[str, tuple[str, str, tuple[int, ...]]] = {
    # name: (kind, builder, input shape)
    "tv_resnet18": ("classification", "resnet18", (1, 3, 64, 64)),
    "tv_mobilenet_v3_small": ("classification", "mobilenet_v3_small", (1, 3, 64, 64)),
    "tv_shufflenet_v2_x0_5": ("classification", "shufflenet_v2_x0_5", (1, 3, 64, 64)),
    "tv_mnasnet0_5": ("classification", "mnasnet0_5", (1, 3, 64, 64)),
    "tv_efficientnet_b0": ("classification", "efficientnet_b0", (1, 3, 64, 64)),
    "tv_regnet_x_400mf": ("classification", "regnet_x_400mf", (1, 3, 64, 64)),
    "tv_densenet121": ("classification", "densenet121", (1, 3, 64, 64)),
    "tv_googlenet": ("classification", "googlenet", (1, 3, 64, 64)),
    "tv_inception_v3": ("classification", "inception_v3", (1, 3, 128, 128)),
    "tv_r3d_18": ("video", "r3d_18", (1, 3, 8, 64, 64)),
    "tv_fasterrcnn_mobilenet_v3_large_320_fpn": (
        "detection",
        "fasterrcnn_mobilenet_v3_large_320_fpn",
        (1, 3, 128, 128),
    ),
    "tv_ssdlite320_mobilenet_v3_large": (
        "detection",
        "ssdlite320_mobilenet_v3_large",
        (1, 3, 160, 160),
    ),
    "tv_retinanet_resnet50_fpn": ("detection", "retinanet_resnet50_fpn", (1, 3, 128, 128)),
    "tv_lraspp_mobilenet_v3_large": (
        "segmentation",
        "lraspp_mobilenet_v3_large",
        (1, 3, 96, 96),
    ),
    "tv_deeplabv3_mobilenet_v3_large": (
        "segmentation",
        "deeplabv3_mobilenet_v3_large",
        (1, 3, 96, 96),
    ),
    "tv_fcn_resnet50": ("segmentation", "fcn_resnet50", (1, 3, 96, 96)),
}


def torchvision_models() -> list[Model]:
    return [
        Model(name, "torchvision", f"torchvision.{kind}")
        for name, (kind, _, _) in TORCHVISION.items()
    ]


def _torchvision(name: str) -> tuple[Any, tuple[Any, ...]]:
    import torch
    import torchvision

    kind, builder, shape = TORCHVISION[name]
    namespace = {
        "classification": torchvision.models,
        "video": torchvision.models.video,
        "detection": torchvision.models.detection,
        "segmentation": torchvision.models.segmentation,
    }[kind]
    kwargs: dict[str, Any] = {"weights": None}
    if kind in ("detection", "segmentation"):
        kwargs["weights_backbone"] = None
    if kind == "detection" and "ssd" not in builder:
        kwargs.update(min_size=shape[-1], max_size=shape[-1])
    if builder in ("googlenet", "inception_v3"):
        kwargs["init_weights"] = False
    model = getattr(namespace, builder)(**kwargs)
    if kind == "detection":
        model = _detection(model)
    elif kind == "segmentation":
        model = _segmentation(model)
    return model, (torch.randn(*shape),)


def _wrappers() -> tuple[type, type]:
    from torch import nn

    class Detection(nn.Module):
        """Backbone (+ FPN) and heads up to their raw outputs, without the post-processing.

        The box decoding and NMS need torchvision's compiled ops, which do not load beside
        the CPU torch wheel here; BN lives in the backbone and heads.
        """

        def __init__(self, model: nn.Module) -> None:
            super().__init__()
            self.model = model

        def forward(self, images: Any) -> Any:
            features = list(self.model.backbone(images).values())
            if hasattr(self.model, "rpn"):  # Faster R-CNN: the region proposal head
                objectness, deltas = self.model.rpn.head(features)
                return (*objectness, *deltas)
            out = self.model.head(features)
            return out["cls_logits"], out["bbox_regression"]

    class Segmentation(nn.Module):
        """The ``out`` map only."""

        def __init__(self, model: nn.Module) -> None:
            super().__init__()
            self.model = model

        def forward(self, images: Any) -> Any:
            return self.model(images)["out"]

    return Detection, Segmentation


def _detection(model: Any) -> Any:
    return _wrappers()[0](model)


def _segmentation(model: Any) -> Any:
    return _wrappers()[1](model)


# ---- building and exporting (run in the worker child) --------------------------------

_BUILT: dict[str, tuple[Any, tuple[Any, ...]]] = {}


def _timm(name: str) -> tuple[Any, tuple[Any, ...]]:
    import timm
    import torch

    model = timm.create_model(name, pretrained=False).eval()
    cfg = model.pretrained_cfg or {}
    channels, height, width = cfg.get("input_size", (3, 224, 224))
    sizes = (
        [] if cfg.get("fixed_input_size") else [s for s in PROBE_SIZES if s < min(height, width)]
    )
    for size in sizes:
        x = torch.randn(1, channels, size, size)
        try:
            with torch.no_grad():
                model(x)
            return model, (x,)
        except Exception:
            continue
    return model, (torch.randn(1, channels, height, width),)


def build(model: Model) -> tuple[Any, tuple[Any, ...]]:
    """The eval-mode module with random BN statistics and its example inputs (cached)."""
    if model.name not in _BUILT:
        import torch

        from bnfold.testing.zoo import randomize_bn

        _BUILT.clear()
        torch.manual_seed(0)
        net, inputs = _timm(model.name) if model.source == "timm" else _torchvision(model.name)
        with torch.no_grad():
            net.eval()(*inputs)  # materialise lazy modules
        randomize_bn(net, seed=0)
        _BUILT[model.name] = (net.eval(), inputs)
    return _BUILT[model.name]


def export_entry(model: Model, variant: str, path: str) -> dict[str, Any]:
    """Export one variant of ``model`` to ``path``; returns the input shape used."""
    import time

    start = time.perf_counter()
    net, inputs = build(model)
    _EXPORTS[variant](net, inputs, Path(path))
    return {
        "input_shape": "x".join(str(d) for d in inputs[0].shape),
        "seconds": round(time.perf_counter() - start, 1),
    }


def _names(net: Any, count: int) -> list[str]:
    from bnfold.torch.export import input_names

    return input_names(net, count)


def _unfolded(exporter: str) -> Callable[[Any, tuple[Any, ...], Path], None]:
    def run(net: Any, inputs: tuple[Any, ...], path: Path) -> None:
        from bnfold.torch.export import export_unfolded

        export_unfolded(net, inputs, path, exporter=exporter, names=_names(net, len(inputs)))  # type: ignore[arg-type]

    return run


def _legacy(net: Any, inputs: tuple[Any, ...], path: Path, **options: Any) -> None:
    import torch

    options.setdefault("opset_version", 17)
    torch.onnx.export(
        net,
        inputs,
        str(path),
        dynamo=False,
        do_constant_folding=False,
        input_names=_names(net, len(inputs)),
        **options,
    )


def _fp16(net: Any, inputs: tuple[Any, ...], path: Path) -> None:
    import onnx
    from onnxconverter_common import float16

    _legacy(net, inputs, path)
    onnx.save(float16.convert_float_to_float16(onnx.load(str(path)), keep_io_types=True), str(path))


def _extdata(net: Any, inputs: tuple[Any, ...], path: Path) -> None:
    import onnx

    _legacy(net, inputs, path)
    proto = onnx.load(str(path))
    onnx.save(
        proto,
        str(path),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location=path.name + ".data",
        size_threshold=1024,
    )


def _training(net: Any, inputs: tuple[Any, ...], path: Path) -> None:
    import torch

    # batch 2: BatchNorm1d on (1, C) refuses to run in training mode
    batch = tuple(torch.randn(2, *x.shape[1:]) for x in inputs)
    try:
        _legacy(net, batch, path, training=torch.onnx.TrainingMode.TRAINING)
    finally:
        net.eval()


_EXPORTS: dict[str, Callable[[Any, tuple[Any, ...], Path], None]] = {
    "dynamo": _unfolded("dynamo"),
    "legacy": _unfolded("legacy"),
    "fp16": _fp16,
    "opset11": lambda n, i, p: _legacy(n, i, p, opset_version=11),
    "opset13": lambda n, i, p: _legacy(n, i, p, opset_version=13),
    "extdata": _extdata,
    "training": _training,
}
