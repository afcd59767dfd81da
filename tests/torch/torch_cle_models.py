"""Models and measurements shared by the PyTorch CLE tests."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


def randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Realistic BN statistics: var in [1e-2, 10], non-zero mean, some negative gamma."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            c = m.num_features
            with torch.no_grad():
                m.running_var.copy_(10 ** (torch.rand(c, generator=g) * 3 - 2))
                m.running_mean.copy_(torch.randn(c, generator=g))
                if m.affine:
                    m.weight.copy_(torch.randn(c, generator=g))
                    m.bias.copy_(torch.randn(c, generator=g))
    return model


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


def out_ranges(m: nn.Module) -> np.ndarray:
    w = m.weight.detach().double()
    axis = 1 if isinstance(m, nn.modules.conv._ConvTransposeNd) else 0
    return w.abs().transpose(0, axis).flatten(1).max(1).values.numpy()


def in_ranges(m: nn.Module) -> np.ndarray:
    w = m.weight.detach().double()
    if isinstance(m, nn.modules.conv._ConvTransposeNd):
        return w.abs().flatten(1).max(1).values.numpy()
    groups = getattr(m, "groups", 1)
    if groups > 1:  # out channel o of group g reads in channels g·I/g ... (g+1)·I/g − 1
        o, i_per_group = w.shape[0], w.shape[1]
        per = w.abs().flatten(2).max(2).values  # (O, I/g)
        ranges = torch.zeros(groups * i_per_group, dtype=w.dtype)
        for g in range(groups):
            block = per[g * (o // groups):(g + 1) * (o // groups)].max(0).values
            ranges[g * i_per_group:(g + 1) * i_per_group] = block
        return ranges.numpy()
    return w.abs().transpose(0, 1).flatten(1).max(1).values.numpy()


class MobileBlock(nn.Module):
    """conv → BN → ReLU6 → depthwise → BN → ReLU6 → conv → BN → conv → BN → ReLU → linear."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.act1 = nn.ReLU6()
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False)
        self.bn2 = nn.BatchNorm2d(8)
        self.act2 = nn.ReLU6()
        self.pw = nn.Conv2d(8, 16, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(16)
        self.conv4 = nn.Conv2d(16, 12, 3)
        self.bn4 = nn.BatchNorm2d(12)
        self.act4 = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(12, 5)

    def forward(self, x):
        x = self.act1(self.bn1(self.conv1(x)))
        x = self.act2(self.bn2(self.dw(x)))
        x = self.bn3(self.pw(x))
        x = self.act4(self.bn4(self.conv4(x)))
        return self.fc(self.flatten(self.pool(x)))


def make_block() -> nn.Module:
    return randomize_bn(MobileBlock()).eval()


def absorb_high_bias_by_hand(l1: nn.Module, l2: nn.Module, gamma, beta, scale, relu_between: bool,
                             bounded=None, sigmas: float = 3.0) -> np.ndarray:
    """High-bias absorption computed independently of the engine (DFQ's 3σ rule, as the GUIDE
    states it), applied in place to a non-grouped, non-transposed `l2`; returns the amount c.

    γ' = γ/s, β' = β/s; c = max(0, β' − 3|γ'|) with a ReLU between, else β'; a per-channel bound
    between (BoundedReLU) caps c and is lowered by it; b1 −= c, b2 += (Σ_k W2[:, :, k])·c."""
    gamma = np.asarray(gamma, "float64") / np.asarray(scale, "float64")
    beta = np.asarray(beta, "float64") / np.asarray(scale, "float64")
    c = np.maximum(0.0, beta - sigmas * np.abs(gamma)) if relu_between else beta
    if bounded is not None:
        c = np.minimum(c, bounded.upper.double().numpy())
    ct = torch.from_numpy(c)
    with torch.no_grad():
        l1.bias.sub_(ct.to(l1.bias.dtype))
        w2 = l2.weight.detach().double().flatten(2).sum(2) if l2.weight.dim() > 2 else l2.weight.detach().double()
        l2.bias.add_((w2 @ ct).to(l2.bias.dtype))
        if bounded is not None:
            bounded.upper.sub_(ct.to(bounded.upper.dtype))
    return c
