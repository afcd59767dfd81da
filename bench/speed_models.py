"""Models for bench/bench_speed.py, built the same way in every process (main env and AIMET venv).

    resnet50 | mobilenet_v2 | efficientnet_b0   torchvision, random weights (seed 0), randomized
                                                BN statistics (var 10**U(-2, 1), mean, gamma, beta
                                                ~ N(0, 1)) so folding is not a no-op
    chain<N>                                    synthetic: (Conv2d 32->32 3x3 pad 1, BatchNorm2d,
                                                ReLU) x N, input 1x32x16x16; N-1 overlapping CLS pairs

Only torch and torchvision are imported, so the AIMET venv can use this file unchanged.
"""

from __future__ import annotations

import torch
import torchvision
from torch import nn

TORCHVISION_MODELS = ("resnet50", "mobilenet_v2", "efficientnet_b0")
CHAIN_CHANNELS = 32


def randomize_batch_norms(model: nn.Module, seed: int = 0) -> nn.Module:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                c = m.num_features
                m.running_var.copy_(10 ** (torch.rand(c, generator=gen) * 3 - 2))
                m.running_mean.copy_(torch.randn(c, generator=gen))
                m.weight.copy_(torch.randn(c, generator=gen))
                m.bias.copy_(torch.randn(c, generator=gen))
    return model


def build_chain(depth: int, channels: int = CHAIN_CHANNELS) -> nn.Module:
    layers: list[nn.Module] = []
    for _ in range(depth):
        layers += [nn.Conv2d(channels, channels, 3, padding=1), nn.BatchNorm2d(channels), nn.ReLU()]
    return nn.Sequential(*layers)


class _Warmup(nn.Module):
    """Two chain layers, then a functional flatten into a linear layer: warms up what a first
    call pays once per process (torch.fx's table of overridable torch functions, ~12 ms, is
    built on the first functional call it traces), for every tool alike."""

    def __init__(self) -> None:
        super().__init__()
        self.body = build_chain(2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(CHAIN_CHANNELS, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.flatten(self.pool(self.body(x)), 1))


def build_warmup() -> nn.Module:
    return _Warmup().eval()


def build_model(name: str) -> tuple[nn.Module, torch.Tensor]:
    """(eval-mode model, dummy input) for a benchmark model name."""
    torch.manual_seed(0)
    if name.startswith("chain"):
        model = build_chain(int(name[len("chain"):]))
        x = torch.rand(1, CHAIN_CHANNELS, 16, 16)
    elif name in TORCHVISION_MODELS:
        model = getattr(torchvision.models, name)(weights=None)
        x = torch.rand(1, 3, 224, 224)
    else:
        raise ValueError(f"unknown benchmark model {name!r}: use one of {TORCHVISION_MODELS} or chain<N>")
    return randomize_batch_norms(model.eval()), x


def count_layers(model: nn.Module) -> dict[str, int]:
    convs = sum(isinstance(m, (nn.Conv2d, nn.Linear)) for m in model.modules())
    bns = sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    values = sum(p.numel() for p in model.parameters()) + sum(b.numel() for b in model.buffers())
    return {"conv_linear": convs, "batch_norms": bns, "values": values}
