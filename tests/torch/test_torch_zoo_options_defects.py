"""Defects found by bench/zoo_sweep_options.py (the opt-in options swept over a model zoo),
each reproduced on a minimal module."""

import copy

import torch
from torch import nn
from torchvision.ops import StochasticDepth

from prequant.torch import prepare_model
from prequant.torch.cross_layer_equalization import equalize_model


def _bn(c: int, seed: int) -> nn.BatchNorm2d:
    gen = torch.Generator().manual_seed(seed)
    bn = nn.BatchNorm2d(c)
    with torch.no_grad():
        bn.weight.copy_(torch.where(torch.rand(c, generator=gen) < 0.25, -1.0, 1.0) * (0.5 + torch.rand(c, generator=gen)))
        bn.bias.copy_(0.5 * torch.randn(c, generator=gen))
        bn.running_mean.copy_(0.5 * torch.randn(c, generator=gen))
        bn.running_var.copy_(torch.exp(torch.empty(c).uniform_(-4.6, 2.3, generator=gen)))
    return bn


class StochasticDepthResidual(nn.Module):
    """torchvision's MBConv tail: stem → (block → StochasticDepth) + skip → head. In eval mode
    StochasticDepth is the identity, so the Add's region (stem, block → head) can be scaled."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), _bn(8, 1))
        self.block = nn.Sequential(nn.Conv2d(8, 8, 1), _bn(8, 2))
        self.stochastic_depth = StochasticDepth(0.2, "row")
        self.head = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        y = self.stem(x)
        return self.head(self.stochastic_depth(self.block(y)) + y)


def test_stochastic_depth_module_in_eval_joins_a_region():
    torch.manual_seed(0)
    model = StochasticDepthResidual().eval().double()
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        ref = model(x)
        prepared = prepare_model(copy.deepcopy(model))
        result = equalize_model(prepared, regions=True)
        out = prepared(x)
    assert float((out - ref).abs().max() / ref.abs().max()) < 1e-9
    declined = [d.reason for d in result.regions.declined]
    assert not any("StochasticDepth" in r for r in declined), declined
    assert result.regions.regions, declined
    assert {"stem.0", "block.0"} <= set(result.regions.regions[0].sources)


def test_stochastic_depth_module_in_training_stays_declined():
    prepared = prepare_model(StochasticDepthResidual().eval().double())
    for m in prepared.modules():
        if isinstance(m, StochasticDepth):
            m.train()  # drops rows at random: not per-channel linear
    result = equalize_model(prepared, regions=True)
    assert not result.regions.regions
    assert any("StochasticDepth" in d.reason for d in result.regions.declined)
