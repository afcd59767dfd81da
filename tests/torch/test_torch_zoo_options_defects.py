"""Defects found by bench/zoo_sweep_options.py (the opt-in options swept over a model zoo),
each reproduced on a minimal module."""

import copy

import pytest

import torch
from torch import nn
from torchvision.ops import StochasticDepth

from prequant.torch import prepare_model
from prequant.torch.cross_layer_equalization import equalize_model


def _equalize_regions_keeping_output(model: nn.Module):
    """prepare_model + equalize_model(regions=True) on a copy; the float64 output must not move."""
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        ref = model(x)
        prepared = prepare_model(copy.deepcopy(model))
        result = equalize_model(prepared, regions=True)
        out = prepared(x)
    assert float((out - ref).abs().max() / ref.abs().max()) < 1e-9
    return result


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
    result = _equalize_regions_keeping_output(model)
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


class SplitBranches(nn.Module):
    """timm MixedConv2d's shape: stem → torch.split(x, [3, 5], 1) → conv_a, conv_b → cat → head."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), _bn(8, 3), nn.ReLU())
        self.conv_a = nn.Conv2d(3, 6, 1)
        self.conv_b = nn.Conv2d(5, 6, 1)
        self.head = nn.Conv2d(12, 4, 1)

    def forward(self, x):
        a, b = torch.split(self.stem(x), [3, 5], 1)
        return self.head(torch.relu(torch.cat([self.conv_a(a), self.conv_b(b)], 1)))


def test_split_after_prepare_model_joins_a_region():
    """prepare_model turns torch.split into prequant's Split module; the engine graph read only the
    function, so every split (MixNet, CSPNet) was opaque after prepare_model."""
    model = SplitBranches().eval().double()
    result = _equalize_regions_keeping_output(model)
    declined = [d.reason for d in result.regions.declined + result.cls.declined]
    assert not any("Split" in r for r in declined), declined
    stem_region = [r for r in result.regions.regions if "stem.0" in r.sources]
    assert stem_region and {"conv_a", "conv_b"} <= set(stem_region[0].sinks), declined


class ContiguousResidual(nn.Module):
    """timm CSPNet's stage tail: (block(y)).contiguous() joins y. Tensor.contiguous() is the identity."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), _bn(8, 4))
        self.block = nn.Sequential(nn.Conv2d(8, 8, 1), _bn(8, 5))
        self.head = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        y = self.stem(x)
        return self.head(self.block(y).contiguous() + y)


def test_contiguous_joins_a_region():
    model = ContiguousResidual().eval().double()
    result = _equalize_regions_keeping_output(model)
    declined = [d.reason for d in result.regions.declined]
    assert not any("contiguous" in r for r in declined), declined
    assert any({"stem.0", "block.0"} <= set(r.sources) for r in result.regions.regions), declined


class BatchNormActAfterConcat(nn.Module):
    """timm DenseNet's layer: cat(a, b) → BatchNormAct2d (BN + ReLU) → conv. The BN cannot fold
    (a concat is before it) but gives the conv's input statistics, as the ONNX CLI uses it."""

    def __init__(self):
        super().__init__()
        from timm.layers import BatchNormAct2d

        self.conv_a = nn.Conv2d(3, 4, 3, padding=1)
        self.conv_b = nn.Conv2d(3, 4, 3, padding=1)
        self.norm = BatchNormAct2d(8)
        with torch.no_grad():
            ref = _bn(8, 6)
            for k in ("weight", "bias", "running_mean", "running_var"):
                getattr(self.norm, k).copy_(getattr(ref, k))
        self.conv = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        return self.conv(self.norm(torch.cat([self.conv_a(x), self.conv_b(x)], 1)))


class ModuleBatchNormAfterConcat(BatchNormActAfterConcat):
    """The same function with a plain nn.BatchNorm2d + nn.ReLU: the module path bias correction
    already handles, the twin the functional BN must match."""

    def __init__(self):
        super().__init__()
        norm = self.norm
        self.norm = nn.Sequential(nn.BatchNorm2d(8), nn.ReLU())
        with torch.no_grad():
            for k in ("weight", "bias", "running_mean", "running_var"):
                getattr(self.norm[0], k).copy_(getattr(norm, k))


class FunctionalBatchNormAfterCat(nn.Module):
    """F.batch_norm of torch.cat(pool(conv), conv) written in forward (no timm; timm's DenseNet
    joins its stem's max pool)."""

    def __init__(self):
        super().__init__()
        self.conv_a = nn.Conv2d(3, 4, 3, padding=1)
        self.conv_b = nn.Conv2d(3, 4, 3, padding=1)
        ref = _bn(8, 7)
        self.weight, self.bias = nn.Parameter(ref.weight.detach().clone()), nn.Parameter(ref.bias.detach().clone())
        self.register_buffer("mean", ref.running_mean.clone())
        self.register_buffer("var", ref.running_var.clone())
        self.pool = nn.MaxPool2d(3, 1, 1)
        self.conv = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        y = torch.cat([self.pool(self.conv_a(x)), self.conv_b(x)], 1)
        y = torch.nn.functional.batch_norm(y, self.mean, self.var, self.weight, self.bias, False, 0.1, 1e-5)
        return self.conv(torch.relu(y))


def test_functional_batch_norm_after_a_cat_becomes_a_module_keeping_the_output():
    # prepare_model finds the rank through the cat (every joined tensor has the output's rank)
    # and the pool (which keeps its input's rank).
    for model in (BatchNormActAfterConcat(), FunctionalBatchNormAfterCat()):
        model = model.eval().double()
        x = torch.randn(2, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
        prepared = prepare_model(copy.deepcopy(model))
        assert any(type(m) is nn.BatchNorm2d for m in prepared.modules()), prepared.code
        with torch.no_grad():
            assert torch.equal(prepared(x), model(x))


def test_bias_correction_reads_statistics_from_a_functional_batch_norm():
    torch.manual_seed(0)
    functional = BatchNormActAfterConcat().eval().double()
    twin = ModuleBatchNormAfterConcat().eval().double()
    twin.load_state_dict({k: v for k, v in functional.state_dict().items() if not k.startswith("norm.")},
                         strict=False)
    prepared = prepare_model(functional)
    bias_before = prepared.conv.bias.detach().clone()
    result = equalize_model(prepared, bias_correction=True)
    assert "conv" in [c.layer for c in result.bias_correction.corrected], \
        [d.reason for d in result.bias_correction.declined]
    # The correction must be the one the module BN's statistics give (E[relu(N(beta, |gamma|))]).
    twin_result = equalize_model(twin, bias_correction=True)
    assert "conv" in [c.layer for c in twin_result.bias_correction.corrected]
    assert not torch.equal(prepared.conv.bias, bias_before)
    torch.testing.assert_close(prepared.conv.bias, twin.conv.bias, rtol=0, atol=1e-12)
