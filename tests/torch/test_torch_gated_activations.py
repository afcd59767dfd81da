"""Cross-layer scaling through x·g(x) activations in the PyTorch front end
(equalize_model(gated_activations=True)): nn.SiLU / nn.Hardswish / nn.GELU (and F.silu & co.
after prepare_model) become GatedActivation(x·g(s·x)) and the model's output is unchanged —
checked against the original model's own forward pass, in float64 where random deep networks
would otherwise drown the comparison in float32 noise."""

import copy

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from prequant.torch import prepare_model
from prequant.torch.activations import GatedActivation
from prequant.torch.cross_layer_equalization import equalize_model

from torch_cle_models import randomize_bn, rel_err


class Gated(nn.Module):
    """conv-BN-SiLU → conv-BN-Hardswish → depthwise-BN-GELU → conv-BN-GELU(tanh) → pool → linear."""

    def __init__(self):
        super().__init__()
        self.c1, self.b1, self.a1 = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.SiLU()
        self.c2, self.b2, self.a2 = nn.Conv2d(8, 12, 1), nn.BatchNorm2d(12), nn.Hardswish()
        self.dw, self.b3, self.a3 = nn.Conv2d(12, 12, 3, padding=1, groups=12), nn.BatchNorm2d(12), nn.GELU()
        self.c4, self.b4, self.a4 = nn.Conv2d(12, 6, 1), nn.BatchNorm2d(6), nn.GELU(approximate="tanh")
        self.fc = nn.Linear(6, 5)

    def forward(self, x):
        x = self.a1(self.b1(self.c1(x)))
        x = self.a2(self.b2(self.c2(x)))
        x = self.a3(self.b3(self.dw(x)))
        x = self.a4(self.b4(self.c4(x)))
        return self.fc(x.mean((2, 3)))


def _unbalance(model: nn.Module, seed: int = 0) -> None:
    """Per-channel factors 1e-2..1e2 on every BN's gamma/beta: channels CLS has work to do on."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            f = 10 ** (torch.rand(m.num_features, generator=g, dtype=torch.float64) * 4 - 2)
            with torch.no_grad():
                m.weight.mul_(f.to(m.weight.dtype))
                m.bias.mul_(f.to(m.bias.dtype))


def _model() -> nn.Module:
    torch.manual_seed(0)
    model = randomize_bn(Gated()).double().eval()
    _unbalance(model)
    return model


def test_scales_through_every_gate_exactly():
    model = _model()
    x = 3 * torch.randn(2, 3, 10, 10, dtype=torch.float64)  # HardSwish: reach both knees (±3)
    with torch.no_grad():
        ref = model(x)
    result = equalize_model(model, gated_activations=True)
    with torch.no_grad():
        assert rel_err(model(x), ref) < 1e-10
    gates = {name: m for name, m in model.named_modules() if isinstance(m, GatedActivation)}
    assert {n: m.gate for n, m in gates.items()} == {
        "a1": "sigmoid", "a2": "hard_sigmoid", "a3": "gelu_erf", "a4": "gelu_tanh"}
    edits = {e.node: e for e in result.cls.activation_edits if e.kind == "gate_scaled"}
    assert set(edits) == set(gates)
    for name, m in gates.items():
        assert torch.allclose(m.gate_scale, torch.as_tensor(edits[name].gate_scale), rtol=1e-12)
        assert m.gate_scale.dtype == torch.float64
    # The scaling did something: the unbalance is gone from the first pair.
    assert float(gates["a1"].gate_scale.log().abs().max()) > 1.0
    assert "gate scale" in result.explain()


def test_off_by_default_declines_naming_the_option():
    model = _model()
    before = copy.deepcopy(model.state_dict())
    result = equalize_model(model)
    assert not any(isinstance(m, GatedActivation) for m in model.modules())
    reasons = [d.reason for d in result.cls.declined]
    assert any("gated_activations=True" in r and "'a1'" in r for r in reasons), reasons
    # c1 → a1 → c2 declined: c1's folded weight is not rescaled (only BN folding touched it).
    assert not result.cls.sets or all("c1" not in s.layers for s in result.cls.sets)
    assert before.keys() - model.state_dict().keys()  # BNs folded away


class Functional(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1, self.c2, self.c3 = nn.Conv2d(3, 6, 3, padding=1), nn.Conv2d(6, 6, 1), nn.Conv2d(6, 4, 1)

    def forward(self, x):
        x = self.c2(F.silu(self.c1(x)))
        return self.c3(F.hardswish(x))


def test_functionals_after_prepare_model():
    torch.manual_seed(1)
    model = Functional().double().eval()
    with torch.no_grad():
        model.c1.weight.mul_(torch.logspace(-2, 2, 6, dtype=torch.float64).view(6, 1, 1, 1))
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        ref = model(x)
    prepared = prepare_model(model)
    result = equalize_model(prepared, gated_activations=True)
    assert len(result.cls.sets) == 2
    assert sum(isinstance(m, GatedActivation) for m in prepared.modules()) == 2
    with torch.no_grad():
        assert rel_err(prepared(x), ref) < 1e-10


class Shared(nn.Module):
    """One nn.SiLU called twice: each call would need its own gate scale."""

    def __init__(self):
        super().__init__()
        self.c1, self.c2, self.c3, self.act = nn.Conv2d(3, 4, 1), nn.Conv2d(4, 4, 1), nn.Conv2d(4, 2, 1), nn.SiLU()

    def forward(self, x):
        return self.c3(self.act(self.c2(self.act(self.c1(x)))))


def test_a_shared_activation_module_is_declined_with_the_fix():
    model = Shared().eval()
    result = equalize_model(model, gated_activations=True)
    assert not result.cls.sets
    assert any("called at 2 places" in d.reason and "prepare_model" in d.reason for d in result.cls.declined)
    assert isinstance(model.act, nn.SiLU)


@pytest.mark.parametrize("name", ["efficientnet_b0", "mobilenet_v3_small"])
def test_torchvision_models_keep_their_output(name):
    torch.manual_seed(0)
    model = getattr(torchvision.models, name)(weights=None).eval()
    randomize_bn(model)
    model = model.double()
    x = torch.randn(1, 3, 96, 96, dtype=torch.float64)
    with torch.no_grad():
        ref = model(x)
    chains = equalize_model(copy.deepcopy(model))
    result = equalize_model(model, gated_activations=True, regions=True)
    with torch.no_grad():
        assert rel_err(model(x), ref) < 1e-9
    scaled_before = {l for s in chains.cls.sets for l in s.layers}
    scaled = {l for s in result.cls.sets for l in s.layers}
    for r in result.regions.regions:
        scaled |= set(r.sources) | set(r.sinks)
    assert len(scaled) > len(scaled_before)
    assert any(isinstance(m, GatedActivation) for m in model.modules())


class Mlp(nn.Module):
    """A transformer MLP on (N, T, C): Linear → GELU → Linear, channels on the last axis."""

    def __init__(self):
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 4)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


def test_between_linears_on_a_rank3_tensor_the_gate_scale_follows_the_last_axis():
    torch.manual_seed(2)
    model = Mlp().double().eval()
    with torch.no_grad():
        model.fc1.weight.mul_(torch.logspace(-2, 2, 16, dtype=torch.float64)[:, None])
    x = torch.randn(2, 5, 8, dtype=torch.float64)
    with torch.no_grad():
        ref = model(x)
    result = equalize_model(model, gated_activations=True)
    assert len(result.cls.sets) == 1
    assert isinstance(model.act, GatedActivation) and model.act.channel_axis == -1
    with torch.no_grad():
        assert rel_err(model(x), ref) < 1e-10


class ClipAndGateInOneRegion(nn.Module):
    """relu6(c1(x)) + silu(c2(x)) → c3: one region holding a bounded ReLU6 and a gate. The ReLU6
    gauge (every bound ≤ 6) multiplies the whole region's scales by one factor: the gate's scale
    must follow it."""

    def __init__(self):
        super().__init__()
        self.c1, self.c2, self.c3 = nn.Conv2d(3, 8, 1), nn.Conv2d(3, 8, 1), nn.Conv2d(8, 4, 1)
        self.clip, self.act = nn.ReLU6(), nn.SiLU()

    def forward(self, x):
        return self.c3(self.clip(self.c1(x)) + self.act(self.c2(x)))


def test_the_relu6_gauge_carries_the_gate_scale_in_a_region():
    torch.manual_seed(3)
    model = ClipAndGateInOneRegion().double().eval()
    with torch.no_grad():  # large outputs: the bounds 6/s[c] exceed 6 before the gauge
        model.c1.weight.mul_(torch.logspace(-1, 1.5, 8, dtype=torch.float64)[:, None, None, None])
        model.c3.weight.mul_(torch.logspace(1, -1, 8, dtype=torch.float64)[None, :, None, None])
    x = torch.randn(2, 3, 5, 5, dtype=torch.float64) * 4
    with torch.no_grad():
        ref = model(x)
    result = equalize_model(model, gated_activations=True, regions=True)
    assert [sorted(r.sources) for r in result.regions.regions] == [["c1", "c2"]]
    assert isinstance(model.act, GatedActivation)
    assert float(model.clip.upper.max()) == pytest.approx(6.0)
    with torch.no_grad():
        assert rel_err(model(x), ref) < 1e-10
