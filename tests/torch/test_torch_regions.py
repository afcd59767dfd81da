"""Equalization regions through the PyTorch front end: torchvision resnet18 and squeezenet (random
weights, randomized batch-norm statistics) keep their output under equalize_model(regions=True)
and scale more layers than chains alone; the functional forms the front end translates (x + y,
torch.cat, torch.split, x.mean((2, 3)), F.interpolate, flatten of a global pool) join regions."""

import copy

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from prequant.torch.cross_layer_equalization import equalize_model


def randomize_batch_norms(model: nn.Module, seed: int = 0) -> None:
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            c = m.num_features
            with torch.no_grad():
                m.weight.copy_(torch.where(torch.rand(c, generator=gen) < 0.25, -1.0, 1.0)
                               * (0.5 + torch.rand(c, generator=gen)))
                m.bias.copy_(0.5 * torch.randn(c, generator=gen))
                m.running_mean.copy_(0.5 * torch.randn(c, generator=gen))
                m.running_var.copy_(torch.exp(torch.empty(c).uniform_(-4.6, 2.3, generator=gen)))


def scaled_layers(result) -> set:
    layers = {l for s in result.cls.sets for l in s.layers}
    for r in result.regions.regions:
        layers |= set(r.sources) | set(r.sinks)
    return layers


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / a.abs().max())


@pytest.mark.parametrize("name", ["resnet18", "squeezenet1_0"])
def test_torchvision_regions(name):
    torch.manual_seed(0)
    model = getattr(torchvision.models, name)(weights=None).eval()
    randomize_batch_norms(model)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref = model(x)
    chains = copy.deepcopy(model)
    chains_result = equalize_model(chains)
    result = equalize_model(model, regions=True)
    with torch.no_grad():
        assert rel_err(ref, model(x)) < 1e-5
    assert result.regions.regions
    assert len(scaled_layers(result)) > len(scaled_layers(chains_result))
    assert len(result.regions.declined) + len(result.cls.declined) < len(chains_result.cls.declined)


class Functional(nn.Module):
    """conv → split → (conv, relu → conv) → cat → + skip → interpolate → conv → mean → linear."""

    def __init__(self):
        super().__init__()
        self.c0 = nn.Conv2d(3, 8, 3, padding=1)
        self.ca = nn.Conv2d(3, 4, 3, padding=1)
        self.cb = nn.Conv2d(5, 4, 1)
        self.skip = nn.Conv2d(3, 8, 1)
        self.c1 = nn.Conv2d(8, 6, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(6, 5)
        self.fc2 = nn.Linear(6, 5)

    def forward(self, x):
        a, b = torch.split(self.c0(x), [3, 5], dim=1)
        y = torch.cat([self.ca(a), self.cb(F.relu(b))], dim=1) + self.skip(x)
        y = self.c1(F.interpolate(y, scale_factor=2, mode="nearest"))
        return self.fc(y.mean((2, 3))) + self.fc2(torch.flatten(self.pool(y), 1))


def test_functional_forms_join_regions():
    torch.manual_seed(1)
    model = Functional().eval()
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        ref = model(x)
    result = equalize_model(model, regions=True)
    with torch.no_grad():
        assert rel_err(ref, model(x)) < 1e-5
    regions = sorted((sorted(r.sources), sorted(r.sinks)) for r in result.regions.regions)
    assert regions == [(["c0"], ["ca", "cb"]), (["c1"], ["fc", "fc2"]), (["ca", "cb", "skip"], ["c1"])], \
        (regions, [d.reason for d in result.regions.declined])


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.c0 = nn.Conv2d(3, 6, 3, padding=1)
        self.ca = nn.Conv2d(6, 6, 3, padding=1)
        self.c1 = nn.Conv2d(12, 4, 1)

    def forward(self, x):
        s = self.c0(x)
        s = s + self.ca(F.relu(s))
        return self.c1(torch.cat([s, F.interpolate(s, scale_factor=1.0)], dim=1)).mean((2, 3))


def test_prepare_model_modules_join_regions():
    """prepare_model turns +, torch.cat, F.interpolate and .mean into modules; they still join regions."""
    from prequant.torch import prepare_model

    torch.manual_seed(2)
    model = prepare_model(Residual().eval())
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        ref = model(x)
    result = equalize_model(model, regions=True)
    with torch.no_grad():
        assert rel_err(ref, model(x)) < 1e-5
    regions = sorted((sorted(r.sources), sorted(r.sinks)) for r in result.regions.regions)
    assert regions == [(["c0", "ca"], ["c1", "ca"])], (regions, [d.reason for d in result.regions.declined])
