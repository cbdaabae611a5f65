"""Look-alikes of real blocks (timm RepVGG, MobileOne, RepViT, LeViT) for the torch tests."""

from __future__ import annotations

import torch
from torch import nn


def conv_bn(c_in: int, c_out: int, k: int, stride: int = 1, groups: int = 1) -> nn.Sequential:
    """timm's ConvNormAct without the activation: Conv (no bias) then BN."""
    conv = nn.Conv2d(c_in, c_out, k, stride, padding=k // 2, groups=groups, bias=False)
    return nn.Sequential(conv, nn.BatchNorm2d(c_out))


class RepVggBlock(nn.Module):
    """timm byobnet.RepVggBlock: ``conv_1x1(x) + conv_kxk(x)``, plus ``identity(x)`` (a BN)."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1, groups: int = 1) -> None:
        super().__init__()
        self.identity = nn.BatchNorm2d(c_out) if c_in == c_out and stride == 1 else None
        self.conv_kxk = conv_bn(c_in, c_out, 3, stride, groups)
        self.conv_1x1 = conv_bn(c_in, c_out, 1, stride, groups)
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.identity is None:
            x = self.conv_1x1(x) + self.conv_kxk(x)
        else:
            identity = self.identity(x)
            x = self.conv_1x1(x) + self.conv_kxk(x)
            x += identity
        return self.act(x)


class MobileOneBlock(nn.Module):
    """timm byobnet.MobileOneBlock: a sum started at ``0``, grown with ``+=`` over branches."""

    def __init__(self, c: int, branches: int = 2, groups: int = 1, k: int = 3) -> None:
        super().__init__()
        self.identity = nn.BatchNorm2d(c)
        self.conv_scale = conv_bn(c, c, 1, groups=groups) if k > 1 else None
        self.conv_kxk = nn.ModuleList(conv_bn(c, c, k, groups=groups) for _ in range(branches))
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity_out = 0
        if self.identity is not None:
            identity_out = self.identity(x)
        scale_out = 0
        if self.conv_scale is not None:
            scale_out = self.conv_scale(x)
        out = scale_out
        for ck in self.conv_kxk:
            out += ck(x)
        out += identity_out
        return self.act(out)


class RepVitMixer(nn.Module):
    """RepViT's RepVggDw: ``bn(conv(x) + conv1(x) + x)`` (a BN after a sum with an identity)."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv = conv_bn(c, c, 3, groups=c)
        self.conv1 = nn.Conv2d(c, c, 1, groups=c)
        self.bn = nn.BatchNorm2d(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x) + self.conv1(x) + x)


class LinearNorm(nn.Module):
    """LeViT's LinearNorm: ``bn(linear(x).flatten(0, 1)).reshape_as(…)`` over (B, N, C)."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.linear = nn.Linear(c_in, c_out, bias=False)
        self.bn = nn.BatchNorm1d(c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.linear(x)
        return self.bn(x.flatten(0, 1)).reshape_as(x)


class TinyLevit(nn.Module):
    """Conv stem → tokens → attention-like reshapes → LinearNorm MLP → BN1d head → Linear."""

    def __init__(self, c: int = 8, heads: int = 2) -> None:
        super().__init__()
        self.stem = nn.Sequential(conv_bn(3, c, 3, 2), nn.Hardswish())
        self.heads = heads
        self.qkv = LinearNorm(c, 3 * c)
        self.proj = LinearNorm(c, c)
        self.mlp = nn.Sequential(LinearNorm(c, 2 * c), nn.Hardswish(), LinearNorm(2 * c, c))
        self.head_bn = nn.BatchNorm1d(c)
        self.head = nn.Linear(c, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x).flatten(2).transpose(1, 2)
        b, n, c = x.shape
        q, k, v = self.qkv(x).view(b, n, self.heads, -1).split([c // 2, c // 2, c // 2], dim=3)
        q, k, v = q.permute(0, 2, 1, 3), k.permute(0, 2, 1, 3), v.permute(0, 2, 1, 3)
        attn = (q @ k.transpose(-2, -1)).softmax(dim=-1)
        x = x + self.proj((attn @ v).transpose(1, 2).reshape(b, n, c))
        x = x + self.mlp(x)
        return self.head(self.head_bn(x.mean(1)))
