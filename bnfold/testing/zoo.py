"""A zoo of small plain-torch architectures with BatchNorm and Dropout, for tests and benchmarks.

Every entry of :data:`ZOO` is a zero-argument constructor returning ``(model, inputs)``: an
eval-mode ``nn.Module`` whose BatchNorm statistics and affine parameters are randomised (the
defaults μ=0, σ²=1, γ=1, β=0 hide folding bugs) and a tuple of small example inputs. Construction
is deterministic and leaves the global RNG untouched. Importing this module has no side effects
and needs only torch (``import bnfold`` and ``import bnfold.testing`` never import it)::

    from bnfold.testing.zoo import ZOO, export_onnx, randomize_bn
    model, inputs = ZOO["resnet_basic"]()
    export_onnx(model, inputs, "resnet.onnx", exporter="dynamo")   # BN left unfolded

The blocks imitate the structure (not the size) of common families: ResNet, pre-activation
ResNet, MobileNetV2/V3, EfficientNet, DenseNet, LeViT, MixNet, Inception, RepVGG, ShuffleNetV2,
GhostNet, RegNet/ResNeXt, UNet, 1-D audio and 3-D video nets, MLPs, timm-style BN+activation
modules, FrozenBatchNorm2d, SyncBatchNorm, lazy BN, and the traps: a Conv called twice, a Conv
whose output is also used elsewhere, data-dependent Python control flow, untracked BN statistics.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

Example = tuple[nn.Module, tuple[torch.Tensor, ...]]
IMG = (1, 3, 64, 64)


class ZooExportError(RuntimeError):
    """torch.onnx.export failed for a zoo model."""


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------
def is_bn_like(module: nn.Module) -> bool:
    """True for torch BatchNorm modules and buffer-only FrozenBatchNorm-style modules."""
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return True
    name = type(module).__name__.lower()
    return "batchnorm" in name and isinstance(getattr(module, "running_var", None), torch.Tensor)


def randomize_bn(module: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BN-like module random running stats and affine parameters (in place).

    γ has random sign and magnitude in [0.5, 1.5], β ~ N(0, 0.3²), μ ~ N(0, 0.5²),
    σ² ~ U(0.25, 1.75). Returns ``module`` for chaining.
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if not is_bn_like(m):
                continue
            for attr, draw in _BN_DRAWS.items():
                tensor = getattr(m, attr, None)
                if isinstance(tensor, torch.Tensor) and tensor.numel() > 0:
                    if isinstance(tensor, nn.parameter.UninitializedTensorMixin):
                        continue
                    tensor.copy_(draw(tensor.shape[0], gen).to(tensor.dtype))
    return module


def _gamma(n: int, gen: torch.Generator) -> torch.Tensor:
    sign = torch.where(torch.rand(n, generator=gen) < 0.15, -1.0, 1.0)
    return sign * (torch.rand(n, generator=gen) + 0.5)


_BN_DRAWS: dict[str, Callable[[int, torch.Generator], torch.Tensor]] = {
    "weight": _gamma,
    "bias": lambda n, g: torch.randn(n, generator=g) * 0.3,
    "running_mean": lambda n, g: torch.randn(n, generator=g) * 0.5,
    "running_var": lambda n, g: torch.rand(n, generator=g) * 1.5 + 0.25,
}


def _build(
    factory: Callable[[], nn.Module], *shapes: tuple[int, ...], seed: int = 0
) -> Callable[[], Example]:
    def make() -> Example:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = factory()
            model.eval()
            inputs = tuple(torch.randn(*s) for s in shapes)
            with torch.no_grad():
                model(*inputs)  # materialise lazy modules
            randomize_bn(model, seed)
        return model.eval(), inputs

    make.__doc__ = factory.__doc__
    return make


def conv_bn(
    cin: int, cout: int, k: int = 3, s: int = 1, g: int = 1, act: type[nn.Module] | None = nn.ReLU
) -> nn.Sequential:
    """Conv2d → BatchNorm2d → activation, as torchvision's ``Conv2dNormActivation``."""
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, k, s, k // 2, groups=g, bias=False),
        nn.BatchNorm2d(cout),
    ]
    if act is not None:
        layers.append(act())
    return nn.Sequential(*layers)


# ---------------------------------------------------------------------------------------------
# BN variants used by the zoo
# ---------------------------------------------------------------------------------------------
class BatchNormAct2d(nn.BatchNorm2d):
    """timm-style BatchNorm2d that also applies dropout and an activation."""

    def __init__(self, num_features: int, act: type[nn.Module] = nn.ReLU) -> None:
        super().__init__(num_features)
        self.drop = nn.Identity()
        self.act = act()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.batch_norm(
            x,
            self.running_mean,
            self.running_var,
            self.weight,
            self.bias,
            self.training,
            self.momentum or 0.0,
            self.eps,
        )
        return self.act(self.drop(x))


class FrozenBatchNorm2d(nn.Module):
    """torchvision-style BatchNorm2d with fixed statistics and affine parameters (buffers only)."""

    def __init__(self, num_features: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        bias = self.bias - self.running_mean * scale
        return x * scale.reshape(1, -1, 1, 1) + bias.reshape(1, -1, 1, 1)


# ---------------------------------------------------------------------------------------------
# blocks
# ---------------------------------------------------------------------------------------------
class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    def __init__(self, cin: int, mid: int, stride: int = 1, groups: int = 1) -> None:
        super().__init__()
        cout = mid * 4
        self.conv1 = nn.Conv2d(cin, mid, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, mid, 3, stride, 1, groups=groups, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(mid, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class PreActBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.shortcut = None
        if stride != 1 or cin != cout:
            self.shortcut = nn.Conv2d(cin, cout, 1, stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(x))
        shortcut = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + shortcut


class SqueezeExcite(nn.Module):
    def __init__(self, c: int, r: int = 4, gate: type[nn.Module] = nn.Sigmoid) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(c, max(8, c // r), 1)
        self.fc2 = nn.Conv2d(max(8, c // r), c, 1)
        self.gate = gate()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean((2, 3), keepdim=True)
        return x * self.gate(self.fc2(F.relu(self.fc1(s))))


class InvertedResidual(nn.Module):
    """MobileNetV2/V3 and EfficientNet MBConv block."""

    def __init__(
        self,
        cin: int,
        cout: int,
        expand: int,
        stride: int,
        k: int = 3,
        act: type[nn.Module] = nn.ReLU6,
        se: bool = False,
        drop: float = 0.0,
    ) -> None:
        super().__init__()
        mid = cin * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers.append(conv_bn(cin, mid, 1, act=act))
        layers.append(conv_bn(mid, mid, k, stride, g=mid, act=act))
        if se:
            layers.append(
                SqueezeExcite(mid, gate=nn.Hardsigmoid if act is nn.Hardswish else nn.Sigmoid)
            )
        layers.append(conv_bn(mid, cout, 1, act=None))
        self.block = nn.Sequential(*layers)
        self.use_res = stride == 1 and cin == cout
        self.drop = nn.Dropout(drop) if drop else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        return x + self.drop(out) if self.use_res else out


class DenseLayer(nn.Module):
    def __init__(self, cin: int, growth: int) -> None:
        super().__init__()
        self.norm1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, 4 * growth, 1, bias=False)
        self.norm2 = nn.BatchNorm2d(4 * growth)
        self.conv2 = nn.Conv2d(4 * growth, growth, 3, 1, 1, bias=False)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        x = torch.cat(features, 1)
        x = self.conv1(F.relu(self.norm1(x)))
        return self.conv2(F.relu(self.norm2(x)))


class DenseBlock(nn.Module):
    def __init__(self, cin: int, layers: int, growth: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(DenseLayer(cin + i * growth, growth) for i in range(layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = [x]
        for layer in self.layers:
            features.append(layer(features))
        return torch.cat(features, 1)


class LinearBN(nn.Module):
    """LeViT's ``Linear_BN``: Linear then BatchNorm1d over all tokens."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.c = nn.Linear(cin, cout, bias=False)
        self.bn = nn.BatchNorm1d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.c(x)
        return self.bn(x.flatten(0, 1)).reshape_as(x)


class LeViTAttention(nn.Module):
    def __init__(self, dim: int, heads: int = 2, key_dim: int = 8) -> None:
        super().__init__()
        self.heads, self.key_dim = heads, key_dim
        self.d = 2 * key_dim
        self.qkv = LinearBN(dim, heads * (2 * key_dim + self.d))
        self.proj = nn.Sequential(nn.Hardswish(), LinearBN(heads * self.d, dim))
        self.scale = key_dim**-0.5

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        qkv = self.qkv(x).view(b, n, self.heads, -1)
        q, k, v = qkv.split([self.key_dim, self.key_dim, self.d], dim=3)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        attn = (q @ k.transpose(-2, -1) * self.scale).softmax(-1)
        out = (attn @ v).transpose(1, 2).reshape(b, n, self.heads * self.d)
        return self.proj(out)


class LeViTMlp(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.ln1 = LinearBN(dim, dim * 2)
        self.act = nn.Hardswish()
        self.ln2 = LinearBN(dim * 2, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ln2(self.act(self.ln1(x)))


class MixedConv(nn.Module):
    """MixNet's mixed-kernel depthwise conv: split channels, conv each with its kernel, concat."""

    def __init__(self, c: int, kernels: tuple[int, ...] = (3, 5, 7)) -> None:
        super().__init__()
        splits = [c // len(kernels)] * len(kernels)
        splits[0] += c - sum(splits)
        self.splits = splits
        self.convs = nn.ModuleList(
            nn.Conv2d(s, s, k, 1, k // 2, groups=s, bias=False)
            for s, k in zip(splits, kernels, strict=True)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = torch.split(x, self.splits, 1)
        return torch.cat([conv(p) for conv, p in zip(self.convs, parts, strict=True)], 1)


class MixBlock(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.pw = conv_bn(c, c * 3, 1, act=nn.SiLU)
        self.dw = MixedConv(c * 3)
        self.bn = nn.BatchNorm2d(c * 3)
        self.act = nn.SiLU()
        self.pwl = conv_bn(c * 3, c, 1, act=None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.pwl(self.act(self.bn(self.dw(self.pw(x)))))


class InceptionBlock(nn.Module):
    def __init__(self, cin: int) -> None:
        super().__init__()
        self.b1 = conv_bn(cin, 16, 1)
        self.b3 = nn.Sequential(conv_bn(cin, 12, 1), conv_bn(12, 16, 3))
        self.b5 = nn.Sequential(conv_bn(cin, 8, 1), conv_bn(8, 12, 3), conv_bn(12, 12, 3))
        self.pool = nn.Sequential(nn.AvgPool2d(3, 1, 1), conv_bn(cin, 8, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.b1(x), self.b3(x), self.b5(x), self.pool(x)], 1)


class RepVGGBlock(nn.Module):
    """RepVGG training-time block: 3×3 conv-BN + 1×1 conv-BN + identity BN, summed."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.rbr_dense = conv_bn(cin, cout, 3, stride, act=None)
        self.rbr_1x1 = nn.Sequential(
            nn.Conv2d(cin, cout, 1, stride, 0, bias=False), nn.BatchNorm2d(cout)
        )
        self.rbr_identity = nn.BatchNorm2d(cin) if cin == cout and stride == 1 else None
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.rbr_dense(x) + self.rbr_1x1(x)
        if self.rbr_identity is not None:
            out = out + self.rbr_identity(x)
        return self.act(out)


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    b, c, h, w = x.shape
    return x.view(b, groups, c // groups, h, w).transpose(1, 2).reshape(b, c, h, w)


class ShuffleUnit(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        half = c // 2
        self.branch = nn.Sequential(
            conv_bn(half, half, 1), conv_bn(half, half, 3, g=half, act=None), conv_bn(half, half, 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = x.chunk(2, dim=1)
        return channel_shuffle(torch.cat((a, self.branch(b)), 1), 2)


class GhostModule(nn.Module):
    def __init__(self, cin: int, cout: int, relu: bool = True) -> None:
        super().__init__()
        init = cout // 2
        act = nn.ReLU if relu else None
        self.primary = conv_bn(cin, init, 1, act=act)
        self.cheap = conv_bn(init, cout - init, 3, g=init, act=act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.primary(x)
        return torch.cat([y, self.cheap(y)], 1)


class GhostBottleneck(nn.Module):
    def __init__(self, c: int, mid: int) -> None:
        super().__init__()
        self.ghost1 = GhostModule(c, mid)
        self.ghost2 = GhostModule(mid, c, relu=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.ghost2(self.ghost1(x))


class UpBlock(nn.Module):
    """UNet decoder step: grouped ConvTranspose2d (C_in ≠ C_out) → BN → ReLU, skip concat."""

    def __init__(self, cin: int, cout: int, groups: int) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(cin, cout, 2, 2, groups=groups, bias=groups > 1)
        self.bn = nn.BatchNorm2d(cout)
        self.conv = conv_bn(cout * 2, cout, 3)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn(self.up(x)))
        return self.conv(torch.cat([x, skip], 1))


class UNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.enc1 = nn.Sequential(conv_bn(3, 16), conv_bn(16, 16))
        self.enc2 = nn.Sequential(nn.MaxPool2d(2), conv_bn(16, 32), conv_bn(32, 32))
        self.enc3 = nn.Sequential(nn.MaxPool2d(2), conv_bn(32, 64))
        self.up2 = UpBlock(64, 32, groups=2)
        self.up1 = UpBlock(32, 16, groups=1)
        self.dw_up = nn.ConvTranspose2d(16, 16, 3, 1, 1, groups=16, bias=False)
        self.dw_bn = nn.BatchNorm2d(16)
        self.head = nn.Conv2d(16, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e1 = self.enc1(x)
        e2 = self.enc2(e1)
        e3 = self.enc3(e2)
        d = self.up1(self.up2(e3, e2), e1)
        return self.head(F.relu(self.dw_bn(self.dw_up(d))))


class TwiceConv(nn.Module):
    """One Conv module called at two sites, each followed by its own BN (fx.fuse corrupts it)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = conv_bn(3, 16, 3, 2)
        self.shared = nn.Conv2d(16, 16, 3, 1, 1, bias=False)
        self.bn_a = nn.BatchNorm2d(16)
        self.bn_b = nn.BatchNorm2d(16)
        self.head = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        a = F.relu(self.bn_a(self.shared(x)))
        b = F.relu(self.bn_b(self.shared(a)))
        return self.head(b.mean((2, 3)))


class ConvTap(nn.Module):
    """A Conv whose raw output is also used elsewhere (feature tap): its BN must stay."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = conv_bn(3, 16, 3, 2)
        self.conv = nn.Conv2d(16, 16, 3, 1, 1, bias=False)
        self.bn = nn.BatchNorm2d(16)
        self.tail = conv_bn(16, 16, 3)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y = self.conv(self.stem(x))
        z = self.tail(F.relu(self.bn(y)) + 0.5 * y)
        return z, y


class DynamicBlock(nn.Module):
    """Data-dependent Python control flow around direct Conv/BN children (no fx trace)."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn1(self.conv1(x))
        y = F.relu(y) if y.shape[-1] > 4 else torch.tanh(y)
        y = self.bn2(self.conv2(y))
        return F.relu(x + y)


class DataDependentNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = conv_bn(3, 16, 3, 2)
        self.pos = nn.Sequential(BasicBlock(16, 16), BasicBlock(16, 32, 2))
        self.neg = nn.Sequential(BasicBlock(16, 32, 2))
        self.dyn = DynamicBlock(32)
        self.conv = nn.Conv2d(32, 32, 1, bias=False)
        self.bn = nn.BatchNorm2d(32)
        self.fc = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = self.pos(x) if float(x.mean()) > -1e9 else self.neg(x)
        x = self.dyn(x)
        for _ in range(int(x.shape[0])):
            x = F.relu(self.bn(self.conv(x)))
        return self.fc(x.mean((2, 3)))


class DropoutZoo(nn.Module):
    """Every Dropout module variant plus functional dropout, around Conv/Linear-BN."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = conv_bn(3, 16, 3, 2)
        self.d2 = nn.Dropout2d(0.2)
        self.c3 = nn.Conv2d(16, 16, 3, 2, 1, bias=False)
        self.d = nn.Dropout(0.1)
        self.bn3 = nn.BatchNorm2d(16)
        self.d3 = nn.Dropout3d(0.1)
        self.ad = nn.AlphaDropout(0.1)
        self.fad = nn.FeatureAlphaDropout(0.1)
        self.c1 = nn.Conv1d(16, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm1d(16)
        self.d1 = nn.Dropout1d(0.1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.d2(self.stem(x))
        x = self.bn3(self.d(self.c3(x)))
        x = self.fad(self.d3(x.unsqueeze(2)).squeeze(2))
        x = F.dropout(x, 0.1, training=self.training)
        y = self.d1(F.relu(self.bn1(self.c1(x.flatten(2)))))
        return self.fc(self.ad(y.mean(2)))


# ---------------------------------------------------------------------------------------------
# models
# ---------------------------------------------------------------------------------------------
def _stem(c: int = 16, s: int = 2) -> nn.Sequential:
    return conv_bn(3, c, 3, s)


def _head(c: int, n: int = 10) -> nn.Sequential:
    return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, n))


def resnet_basic() -> nn.Module:
    """ResNet-18-like: basic blocks with projection shortcuts."""
    return nn.Sequential(
        _stem(16),
        nn.MaxPool2d(3, 2, 1),
        BasicBlock(16, 16),
        BasicBlock(16, 32, 2),
        BasicBlock(32, 64, 2),
        _head(64),
    )


def resnet_bottleneck() -> nn.Module:
    """ResNet-50-like bottleneck blocks."""
    return nn.Sequential(
        _stem(16), Bottleneck(16, 8), Bottleneck(32, 16, 2), Bottleneck(64, 16, 2), _head(64)
    )


def resnext() -> nn.Module:
    """ResNeXt/RegNet-like grouped-conv bottlenecks."""
    return nn.Sequential(
        _stem(32), Bottleneck(32, 16, 2, groups=4), Bottleneck(64, 16, 1, 8), _head(64)
    )


def preact_resnet() -> nn.Module:
    """Pre-activation ResNet: BN → ReLU → Conv (most BN follow an Add)."""
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, 2, 1, bias=False),
        PreActBlock(16, 16),
        PreActBlock(16, 32, 2),
        nn.BatchNorm2d(32),
        nn.ReLU(),
        _head(32),
    )


def mobilenet_v2() -> nn.Module:
    """MobileNetV2 inverted residuals with ReLU6."""
    return nn.Sequential(
        conv_bn(3, 16, 3, 2, act=nn.ReLU6),
        InvertedResidual(16, 16, 1, 1),
        InvertedResidual(16, 24, 4, 2),
        InvertedResidual(24, 24, 4, 1),
        InvertedResidual(24, 32, 4, 2),
        conv_bn(32, 64, 1, act=nn.ReLU6),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Dropout(0.2),
        nn.Linear(64, 10),
    )


def mobilenet_v3() -> nn.Module:
    """MobileNetV3-like: hardswish, SE with hardsigmoid, Linear → Hardswish → Dropout head."""
    return nn.Sequential(
        conv_bn(3, 16, 3, 2, act=nn.Hardswish),
        InvertedResidual(16, 16, 1, 2, act=nn.ReLU, se=True),
        InvertedResidual(16, 24, 4, 2, act=nn.ReLU),
        InvertedResidual(24, 24, 3, 1, k=5, act=nn.Hardswish, se=True),
        conv_bn(24, 96, 1, act=nn.Hardswish),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(96, 128),
        nn.Hardswish(),
        nn.Dropout(0.2),
        nn.Linear(128, 10),
    )


def efficientnet() -> nn.Module:
    """EfficientNet-like MBConv with SiLU, SE and stochastic-depth-style Dropout."""
    return nn.Sequential(
        conv_bn(3, 16, 3, 2, act=nn.SiLU),
        InvertedResidual(16, 16, 1, 1, act=nn.SiLU, se=True, drop=0.1),
        InvertedResidual(16, 24, 6, 2, act=nn.SiLU, se=True),
        InvertedResidual(24, 24, 6, 1, k=5, act=nn.SiLU, se=True, drop=0.1),
        conv_bn(24, 64, 1, act=nn.SiLU),
        _head(64),
    )


def densenet() -> nn.Module:
    """DenseNet-like: pre-activation dense layers over channel concatenations, transition."""
    return nn.Sequential(
        conv_bn(3, 16, 3, 2),
        DenseBlock(16, 3, 8),
        nn.BatchNorm2d(40),
        nn.ReLU(),
        nn.Conv2d(40, 24, 1, bias=False),
        nn.AvgPool2d(2),
        DenseBlock(24, 2, 8),
        nn.BatchNorm2d(40),
        nn.ReLU(),
        _head(40),
    )


class LeViT(nn.Module):
    """LeViT-like: Conv-BN stem, attention and MLP on tokens with Linear → BatchNorm1d."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            conv_bn(3, 16, 3, 2, act=nn.Hardswish), conv_bn(16, 32, 3, 2, act=None)
        )
        self.blocks = nn.ModuleList([LeViTAttention(32), LeViTMlp(32), LeViTAttention(32)])
        self.head_bn = nn.BatchNorm1d(32)
        self.head = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x).flatten(2).transpose(1, 2)
        for blk in self.blocks:
            x = x + blk(x)
        return self.head(self.head_bn(x.mean(1)))


def levit() -> nn.Module:
    return LeViT()


def mixnet() -> nn.Module:
    """MixNet-like: mixed-kernel depthwise conv (split/concat) followed by one BN."""
    return nn.Sequential(conv_bn(3, 16, 3, 2, act=nn.SiLU), MixBlock(16), MixBlock(16), _head(16))


def inception() -> nn.Module:
    """Inception-like parallel branches concatenated on channels."""
    return nn.Sequential(conv_bn(3, 24, 3, 2), InceptionBlock(24), InceptionBlock(52), _head(52))


def repvgg() -> nn.Module:
    """RepVGG training-time blocks (re-parameterisable multi-branch)."""
    return nn.Sequential(
        RepVGGBlock(3, 16, 2),
        RepVGGBlock(16, 16),
        RepVGGBlock(16, 32, 2),
        RepVGGBlock(32, 32),
        _head(32),
    )


def shufflenet() -> nn.Module:
    """ShuffleNetV2-like units: chunk, branch, concat, channel shuffle."""
    return nn.Sequential(conv_bn(3, 32, 3, 2), ShuffleUnit(32), ShuffleUnit(32), _head(32))


def ghostnet() -> nn.Module:
    """GhostNet-like: a cheap depthwise conv on the primary conv's output, concatenated."""
    return nn.Sequential(
        conv_bn(3, 16, 3, 2), GhostBottleneck(16, 32), GhostBottleneck(16, 32), _head(16)
    )


def vgg() -> nn.Module:
    """VGG-like plain Conv-BN-ReLU stack with a Linear → BN1d → ReLU → Dropout classifier."""
    return nn.Sequential(
        conv_bn(3, 16),
        nn.MaxPool2d(2),
        conv_bn(16, 32),
        nn.MaxPool2d(2),
        conv_bn(32, 32),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(128, 64),
        nn.BatchNorm1d(64),
        nn.ReLU(),
        nn.Dropout(0.5),
        nn.Linear(64, 10),
    )


def unet() -> nn.Module:
    """UNet-like encoder/decoder with grouped and depthwise ConvTranspose2d → BN."""
    return UNet()


def audio_1d() -> nn.Module:
    """1-D conv audio net (Conv1d → BN1d, biased conv, grouped conv)."""
    return nn.Sequential(
        nn.Conv1d(1, 16, 9, 4, 4),
        nn.BatchNorm1d(16),
        nn.ReLU(),
        nn.Conv1d(16, 32, 5, 2, 2, groups=4, bias=False),
        nn.BatchNorm1d(32),
        nn.ReLU(),
        nn.ConvTranspose1d(32, 16, 4, 2, 1, bias=False),
        nn.BatchNorm1d(16),
        nn.ReLU(),
        nn.AdaptiveAvgPool1d(1),
        nn.Flatten(),
        nn.Linear(16, 10),
    )


def video_3d() -> nn.Module:
    """3-D conv video net (Conv3d → BN3d, depthwise, ConvTranspose3d)."""
    return nn.Sequential(
        nn.Conv3d(3, 8, 3, (1, 2, 2), 1, bias=False),
        nn.BatchNorm3d(8),
        nn.ReLU(),
        nn.Conv3d(8, 8, 3, 1, 1, groups=8, bias=False),
        nn.BatchNorm3d(8),
        nn.ReLU(),
        nn.ConvTranspose3d(8, 4, (1, 2, 2), (1, 2, 2), groups=2),
        nn.BatchNorm3d(4),
        nn.AdaptiveAvgPool3d(1),
        nn.Flatten(),
        nn.Linear(4, 10),
    )


def mlp() -> nn.Module:
    """Tabular MLP: Linear → BatchNorm1d → ReLU → Dropout."""
    return nn.Sequential(
        nn.Linear(32, 64),
        nn.BatchNorm1d(64),
        nn.ReLU(),
        nn.Dropout(0.3),
        nn.Linear(64, 64, bias=False),
        nn.BatchNorm1d(64),
        nn.ReLU(),
        nn.AlphaDropout(0.1),
        nn.Linear(64, 10),
    )


def bn_act() -> nn.Module:
    """timm-style ``BatchNormAct2d`` modules (BN subclass that also applies an activation)."""
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, 2, 1, bias=False),
        BatchNormAct2d(16),
        nn.Conv2d(16, 32, 3, 2, 1, bias=False),
        BatchNormAct2d(32, nn.SiLU),
        nn.Conv2d(32, 32, 3, 1, 1, groups=32, bias=False),
        BatchNormAct2d(32, nn.Hardswish),
        _head(32),
    )


def frozen_bn() -> nn.Module:
    """Detection-backbone style with FrozenBatchNorm2d (buffers only)."""
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, 2, 1, bias=False),
        FrozenBatchNorm2d(16),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, 2, 1, bias=False),
        FrozenBatchNorm2d(32),
        nn.ReLU(),
        _head(32),
    )


def sync_bn() -> nn.Module:
    """SyncBatchNorm (as converted for distributed training), evaluated on one process."""
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, 2, 1, bias=False),
        nn.SyncBatchNorm(16),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, 2, 1, bias=False),
        nn.SyncBatchNorm(32),
        nn.ReLU(),
        _head(32),
    )


def lazy_bn() -> nn.Module:
    """Lazy Conv/BN modules, initialised by a first forward pass."""
    return nn.Sequential(
        nn.LazyConv2d(16, 3, 2, 1, bias=False),
        nn.LazyBatchNorm2d(),
        nn.ReLU(),
        nn.LazyConv2d(32, 3, 2, 1),
        nn.LazyBatchNorm2d(),
        nn.ReLU(),
        _head(32),
    )


def untracked_bn() -> nn.Module:
    """BN with ``track_running_stats=False`` (batch statistics in eval: never foldable)."""
    return nn.Sequential(
        conv_bn(3, 16, 3, 2),
        nn.Conv2d(16, 16, 3, 1, 1, bias=False),
        nn.BatchNorm2d(16, track_running_stats=False),
        nn.ReLU(),
        conv_bn(16, 32, 3, 2),
        _head(32),
    )


def twice_conv() -> nn.Module:
    return TwiceConv()


def conv_tap() -> nn.Module:
    return ConvTap()


def data_dependent() -> nn.Module:
    """Python control flow on tensor values and shapes: torch.fx cannot trace the whole."""
    return DataDependentNet()


def dropout_zoo() -> nn.Module:
    return DropoutZoo()


ZOO: dict[str, Callable[[], Example]] = {
    "resnet_basic": _build(resnet_basic, IMG),
    "resnet_bottleneck": _build(resnet_bottleneck, IMG),
    "resnext": _build(resnext, IMG),
    "preact_resnet": _build(preact_resnet, IMG),
    "mobilenet_v2": _build(mobilenet_v2, IMG),
    "mobilenet_v3": _build(mobilenet_v3, IMG),
    "efficientnet": _build(efficientnet, IMG),
    "densenet": _build(densenet, IMG),
    "levit": _build(levit, IMG),
    "mixnet": _build(mixnet, IMG),
    "inception": _build(inception, IMG),
    "repvgg": _build(repvgg, IMG),
    "shufflenet": _build(shufflenet, IMG),
    "ghostnet": _build(ghostnet, IMG),
    "vgg": _build(vgg, (2, 3, 32, 32)),
    "unet": _build(unet, IMG),
    "audio_1d": _build(audio_1d, (2, 1, 1600)),
    "video_3d": _build(video_3d, (1, 3, 4, 32, 32)),
    "mlp": _build(mlp, (8, 32)),
    "bn_act": _build(bn_act, IMG),
    "frozen_bn": _build(frozen_bn, IMG),
    "sync_bn": _build(sync_bn, IMG),
    "lazy_bn": _build(lazy_bn, IMG),
    "untracked_bn": _build(untracked_bn, (2, 3, 32, 32)),
    "twice_conv": _build(twice_conv, IMG),
    "conv_tap": _build(conv_tap, IMG),
    "data_dependent": _build(data_dependent, IMG),
    "dropout_zoo": _build(dropout_zoo, IMG),
}


def export_onnx(
    model: nn.Module,
    inputs: tuple[torch.Tensor, ...],
    path: str | Path,
    exporter: Literal["dynamo", "legacy"] = "dynamo",
    opset: int = 18,
) -> Path:
    """Export ``model`` to ONNX with BatchNorm left unfolded; raise ZooExportError on failure.

    dynamo: ``torch.onnx.export(..., dynamo=True, optimize=False)``; legacy:
    ``dynamo=False, do_constant_folding=False``. Returns the written path.
    """
    from bnfold.errors import BnfoldError
    from bnfold.torch.export import export_unfolded

    if exporter not in ("dynamo", "legacy"):
        raise ValueError(f"unknown exporter {exporter!r} (use 'dynamo' or 'legacy')")
    path = Path(path)
    names = [f"input_{i}" for i in range(len(inputs))]
    try:
        export_unfolded(model, inputs, path, exporter=exporter, opset=opset, names=names)
    except BnfoldError as exc:
        raise ZooExportError(f"{exporter} export of {type(model).__name__} failed: {exc}") from exc
    if not path.exists():
        raise ZooExportError(f"{exporter} export did not write {path}")
    return path
