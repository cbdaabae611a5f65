"""Small realistic CNNs in plain torch, exported to ONNX with BatchNorm kept.

BN running statistics are calibrated on random data (so activations stay in a realistic
range through deep stacks), then jittered, and γ/β randomised.
"""

from __future__ import annotations

import io

import onnx
import torch
from torch import nn


def _cbr(c_in: int, c_out: int, k: int = 3, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, k, stride, k // 2, groups=groups, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(),
    )


class ResBlock(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.a = _cbr(c, c)
        self.b = nn.Sequential(nn.Conv2d(c, c, 3, 1, 1, bias=False), nn.BatchNorm2d(c))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x + self.b(self.a(x)))


class ResNetish(nn.Module):
    """Stem, four residual blocks over two stages, pooled linear head."""

    def __init__(self, width: int = 16, classes: int = 10) -> None:
        super().__init__()
        self.stem = _cbr(3, width, stride=2)
        self.s1 = nn.Sequential(ResBlock(width), ResBlock(width))
        self.down = _cbr(width, 2 * width, stride=2)
        self.s2 = nn.Sequential(ResBlock(2 * width), ResBlock(2 * width))
        self.fc = nn.Linear(2 * width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.s2(self.down(self.s1(self.stem(x))))
        return self.fc(x.mean(dim=(2, 3)))


class MobileBlock(nn.Module):
    """Inverted residual: expand 1×1, depthwise 3×3, squeeze-excite, project 1×1."""

    def __init__(self, c: int, expand: int = 4) -> None:
        super().__init__()
        h = c * expand
        self.expand = _cbr(c, h, k=1)
        self.dw = _cbr(h, h, groups=h)
        self.se = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Conv2d(h, 8, 1), nn.ReLU(), nn.Conv2d(8, h, 1), nn.Sigmoid()
        )
        self.project = nn.Sequential(nn.Conv2d(h, c, 1, bias=False), nn.BatchNorm2d(c))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.dw(self.expand(x))
        return x + self.project(h * self.se(h))


class MobileNetish(nn.Module):
    def __init__(self, width: int = 16) -> None:
        super().__init__()
        self.stem = _cbr(3, width, stride=2)
        self.blocks = nn.Sequential(MobileBlock(width), MobileBlock(width), MobileBlock(width))
        self.head = nn.Sequential(nn.Conv2d(width, 10, 1), nn.BatchNorm2d(10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x))).mean(dim=(2, 3))


class Decoder(nn.Module):
    """Encoder, then grouped ConvTranspose upsampling (C_in ≠ C_out) and a sigmoid map."""

    def __init__(self, head_bias: float = 0.0) -> None:
        super().__init__()
        self.enc = nn.Sequential(_cbr(3, 16, stride=2), _cbr(16, 32, stride=2))
        self.up1 = nn.Sequential(
            nn.ConvTranspose2d(32, 24, 2, 2, groups=2), nn.BatchNorm2d(24), nn.ReLU()
        )
        self.up2 = nn.Sequential(
            nn.ConvTranspose2d(24, 12, 2, 2, groups=4), nn.BatchNorm2d(12), nn.ReLU()
        )
        self.head = nn.Sequential(nn.Conv2d(12, 2, 3, 1, 1), nn.BatchNorm2d(2))
        self.head_bias = head_bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.head(self.up2(self.up1(self.enc(x)))) + self.head_bias)


def randomise_bn(model: nn.Module, seed: int, shape: tuple[int, ...]) -> nn.Module:
    """Calibrate running stats on random data, jitter them, randomise γ and β; eval mode."""
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = None  # cumulative average
            m.reset_running_stats()
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(shape, generator=gen))
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                c = m.num_features
                m.weight.copy_(torch.empty(c).uniform_(0.5, 1.5, generator=gen))
                m.bias.copy_(torch.randn(c, generator=gen) * 0.3)
                m.running_mean.mul_(torch.empty(c).uniform_(0.8, 1.2, generator=gen))
                m.running_var.mul_(torch.empty(c).uniform_(0.7, 1.4, generator=gen))
    return model.eval()


def export(
    model: nn.Module, shape: tuple[int, ...], fold_in_exporter: bool = False
) -> onnx.ModelProto:
    """Legacy export; BN stays unless ``fold_in_exporter`` (torch's own fp32 folding)."""
    buf = io.BytesIO()
    torch.onnx.export(
        model,
        (torch.randn(shape),),
        buf,
        dynamo=False,
        do_constant_folding=fold_in_exporter,
        input_names=["x"],
        output_names=["y"],
        dynamic_axes={"x": {0: "N"}, "y": {0: "N"}},
    )
    return onnx.load_from_string(buf.getvalue())


class TextDetector(nn.Module):
    """DBNet-like: backbone, FPN with nearest upsampling, probability map head.

    ``head_bias`` −10 gives sigmoid outputs near 5e-5; ``amplify`` scales the features
    entering the head (large activations cancelling to a small logit: ill-conditioned).
    """

    def __init__(self, head_bias: float = -10.0, amplify: float = 1.0) -> None:
        super().__init__()
        self.c1 = _cbr(3, 16, stride=2)
        self.c2 = _cbr(16, 32, stride=2)
        self.c3 = _cbr(32, 64, stride=2)
        self.l3 = nn.Conv2d(64, 32, 1)
        self.l2 = nn.Conv2d(32, 32, 1)
        self.head = nn.Sequential(
            _cbr(32, 16),
            nn.ConvTranspose2d(16, 16, 2, 2),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.ConvTranspose2d(16, 1, 2, 2),
        )
        self.head_bias = head_bias
        self.amplify = amplify

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f2 = self.c2(self.c1(x))
        f3 = self.c3(f2)
        p = self.l2(f2) + nn.functional.interpolate(self.l3(f3), scale_factor=2.0)
        logit = self.head(p * self.amplify)
        return torch.sigmoid(logit + self.head_bias)
