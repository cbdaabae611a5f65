"""Tiny nn.Modules for the torch.export tests, with random BN statistics and affine params."""

from __future__ import annotations

import torch
from torch import nn


def randomise_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random running mean/var, weight and bias in every BN (the defaults hide bugs)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=gen))
                m.running_var.copy_(torch.rand(n, generator=gen) * 2 + 0.25)
                if m.affine:
                    m.weight.copy_(torch.randn(n, generator=gen))
                    m.bias.copy_(torch.randn(n, generator=gen))
    return model


def export(model: nn.Module, *inputs: torch.Tensor, decompose: bool = False, dynamic=None):
    ep = torch.export.export(model, tuple(inputs), dynamic_shapes=dynamic)
    return ep.run_decompositions() if decompose else ep


class ConvBN(nn.Module):
    def __init__(self, dims: int = 2, bias: bool = True) -> None:
        super().__init__()
        conv = (nn.Conv1d, nn.Conv2d, nn.Conv3d)[dims - 1]
        bn = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)[dims - 1]
        self.conv = conv(3, 6, 3, padding=1, bias=bias)
        self.bn = bn(6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.bn(self.conv(x)))


class DeconvBN(nn.Module):
    def __init__(self, c_in: int, c_out: int, groups: int) -> None:
        super().__init__()
        self.deconv = nn.ConvTranspose2d(c_in, c_out, 3, stride=2, groups=groups)
        self.bn = nn.BatchNorm2d(c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.deconv(x))


class LinearBN(nn.Module):
    def __init__(self, bias: bool = True) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 5, bias=bias)
        self.bn = nn.BatchNorm1d(5)
        self.drop = nn.Dropout(0.3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.drop(self.fc(x)))


class SharedConv(nn.Module):
    """One conv called twice: once followed by BN, once not."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.bn(self.conv(x)), self.conv(x * 2)


class ConcatBN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 4, 1)
        self.b = nn.Conv2d(3, 2, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(torch.cat([self.a(x), self.b(x)], dim=1))


class TokenLinearBN(nn.Module):
    """LeViT's LinearNorm: Linear on (N, L, C) tokens, BN1d over the flattened tokens."""

    def __init__(self, bias: bool = True, transposed: bool = False) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 6, bias=bias)
        self.bn = nn.BatchNorm1d(6)
        self.transposed = transposed  # tokens arrive as (N, C, L), as in LeViT's attention

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.fc(x.transpose(1, 2) if self.transposed else x)
        return self.bn(y.flatten(0, 1)).reshape_as(y)


class PooledKeysBN(nn.Module):
    """NextViT's E_MHSA: BN'd tokens feed q (through a transpose) and an AvgPool1d → BN1d →
    transpose → k and v; neither BN has a layer before it, so both fold into their readers."""

    def __init__(self, channels: int = 8) -> None:
        super().__init__()
        self.norm = nn.BatchNorm1d(channels)
        self.q = nn.Linear(channels, channels)
        self.k = nn.Linear(channels, channels)
        self.v = nn.Linear(channels, channels)
        self.sr = nn.AvgPool1d(2, 2)
        self.sr_norm = nn.BatchNorm1d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.norm(x)
        q = self.q(t.transpose(1, 2))
        kv = self.sr_norm(self.sr(t)).transpose(1, 2)
        return q.sum(1) + self.k(kv).sum(1) * self.v(kv).mean(1)


class TokenLinearWrongAxis(nn.Module):
    """Linear on (N, C, L) with BN1d over axis 1: the features are the last axis, not BN's."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 6)
        self.bn = nn.BatchNorm1d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.fc(x))


class HeadBN(nn.Module):
    """A CNN tail: Conv → ReLU → BN → global average pool → flatten → Linear → BN1d."""

    def __init__(self, keepdim: bool) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3)
        self.bn = nn.BatchNorm2d(6)
        self.fc = nn.Linear(6, 4)
        self.bn1 = nn.BatchNorm1d(4)
        self.keepdim = keepdim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn(torch.relu(self.conv(x)))
        pool = nn.functional.adaptive_avg_pool2d
        y = pool(y, 1).flatten(1) if self.keepdim else y.mean((2, 3))
        return self.bn1(self.fc(y))


class GhostIdentity(nn.Module):
    """RepGhost's block: a depthwise conv → BN plus a BN of the same input, summed."""

    def __init__(self, stride: int = 1) -> None:
        super().__init__()
        self.pre = nn.Conv2d(3, 4, 1)
        self.pre_bn = nn.BatchNorm2d(4)
        self.cheap = nn.Conv2d(4, 4, 3, stride=stride, padding=1, groups=4, bias=False)
        self.cheap_bn = nn.BatchNorm2d(4)
        self.fusion_bn = nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1 = torch.relu(self.pre_bn(self.pre(x)))
        return self.cheap_bn(self.cheap(x1)) + self.fusion_bn(x1)


class BNThenConv(nn.Module):
    """SwiftFormer: a residual sum → BN → conv (the BN's input has other users)."""

    def __init__(self, padding: int = 0) -> None:
        super().__init__()
        self.pre = nn.Conv2d(3, 4, 1)
        self.bn = nn.BatchNorm2d(4)
        self.conv = nn.Conv2d(4, 6, 3 if padding else 1, padding=padding, groups=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.pre(x)
        y = y + torch.sigmoid(y)
        return self.conv(self.bn(y)) + y.sum(1, keepdim=True)


class TwoHeads(nn.Module):
    """EfficientFormerV2's distillation head: BN → mean → two Linear heads, averaged."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3)
        self.norm = nn.BatchNorm2d(6)
        self.head = nn.Linear(6, 4)
        self.head_dist = nn.Linear(6, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm(torch.relu(self.conv(x))).mean((2, 3))
        return (self.head(y) + self.head_dist(y)) / 2


class MobileOneBlock(nn.Module):
    """MobileOne: k×k conv → BN, 1×1 conv → BN and an identity BN of the same input, summed."""

    def __init__(self) -> None:
        super().__init__()
        self.conv_kxk = nn.Conv2d(4, 4, 3, padding=1, bias=False)
        self.bn_kxk = nn.BatchNorm2d(4)
        self.conv_scale = nn.Conv2d(4, 4, 1, bias=False)
        self.bn_scale = nn.BatchNorm2d(4)
        self.identity = nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn_kxk(self.conv_kxk(x)) + self.bn_scale(self.conv_scale(x))
        return torch.relu(out + self.identity(x))


class TimmZeroSum(nn.Module):
    """timm's MobileOneBlock forward: ``out = 0; out += identity(x); out += conv_bn(x)``."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1, groups=4, bias=False)
        self.bn = nn.BatchNorm2d(4)
        self.identity = nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = 0
        out += self.identity(x)
        out += self.bn(self.conv(x))
        return out


class SumBN(nn.Module):
    """Xception41p: BN after the sum of two convolutions of different inputs."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3, padding=1)
        self.b = nn.Conv2d(3, 4, 1, bias=False)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.a(x) + self.b(x * 2))
