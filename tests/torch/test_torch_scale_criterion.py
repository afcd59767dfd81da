"""equalize_model(scale_criterion=...) in the PyTorch front end: the option reaches the engine,
the FP32 output is unchanged, and the scales move the way the criterion says — for
'activations', each ReLU6's activation range (from the BN's own β ± 3|γ|, computed here) divided
by s[c] equals the next layer's column range as the weights are after, up to one factor; with the
default 'weights' it does not."""

import copy

import pytest
import torch
from torch import nn

import prequant
from prequant.torch.cross_layer_equalization import equalize_model

from torch_cle_models import randomize_bn


class Net(nn.Module):
    """conv-BN-ReLU6 → conv-BN-ReLU6 → conv."""

    def __init__(self):
        super().__init__()
        self.c1, self.b1, self.a1 = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU6()
        self.c2, self.b2, self.a2 = nn.Conv2d(8, 12, 1), nn.BatchNorm2d(12), nn.ReLU6()
        self.c3 = nn.Conv2d(12, 5, 1)

    def forward(self, x):
        return self.c3(self.a2(self.b2(self.c2(self.a1(self.b1(self.c1(x)))))))


def _model() -> nn.Module:
    torch.manual_seed(0)
    return randomize_bn(Net()).double().eval()


def _act_range(bn: nn.BatchNorm2d) -> torch.Tensor:
    g, b = bn.weight.detach().abs(), bn.bias.detach()
    return torch.maximum((b - 3 * g).clamp(0, 6).abs(), (b + 3 * g).clamp(0, 6).abs())


def _balance(model, original, result, layer1, bn, layer2) -> float:
    """max/min over channels of (act[c]/s[c]) / (column range of layer2 now)."""
    pair = next(p for s in result.cls.sets for p in s.pairs if p.layer1 == layer1)
    act = _act_range(getattr(original, bn)) / torch.as_tensor(pair.scale, dtype=torch.float64)
    cols = getattr(model, layer2).weight.detach().abs().amax(dim=(0, 2, 3))
    r = (act / cols)[act > 0]  # a channel always clipped to 0 keeps the weight criterion
    return float(r.max() / r.min())


@pytest.mark.parametrize("criterion", ["weights", "weights_and_activations", "activations"])
def test_keeps_the_output(criterion):
    original = _model()
    model = copy.deepcopy(original)
    x = torch.randn(4, 3, 8, 8, dtype=torch.float64) * 2
    result = equalize_model(model, scale_criterion=criterion)
    assert len(result.cls.sets) == 2
    assert all(p.criterion_fallback == "" for s in result.cls.sets for p in s.pairs)
    with torch.no_grad():
        torch.testing.assert_close(model(x), original(x), rtol=1e-9, atol=1e-9)


def test_activations_balances_activation_against_next_columns():
    original = _model()
    act_model, dfq_model = copy.deepcopy(original), copy.deepcopy(original)
    act = equalize_model(act_model, scale_criterion="activations")
    dfq = equalize_model(dfq_model)
    for layer1, bn, layer2 in (("c1", "b1", "c2"), ("c2", "b2", "c3")):
        assert _balance(act_model, original, act, layer1, bn, layer2) == pytest.approx(1.0, abs=1e-6)
        assert _balance(dfq_model, original, dfq, layer1, bn, layer2) > 1.5
    assert not torch.equal(act_model.c1.weight, dfq_model.c1.weight)


def test_unknown_criterion_is_refused_and_leaves_the_model():
    model = _model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(prequant.InvalidRequestError, match="weights_and_activations"):
        equalize_model(model, scale_criterion="activation")
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_without_statistics_the_result_is_dfq_on_lite0_stress_case():
    """BNs folded before the call (no statistics), then channels rescaled by decades (the demo's
    stress case on the pretrained EfficientNet-Lite0, dead channels included): every link falls
    back to the weight criterion, and the weights must be DFQ's. Stepping each conv → depthwise →
    conv triple link by link stalled there (per-tensor weight SQNR −0.1 dB against 15.8 dB)."""
    from prequant.demo._stress import rescale_randomly
    from prequant.demo.efficientnet_lite import efficientnet_lite0
    from prequant.torch import prepare_model
    from prequant.torch.batch_norm_fold import fold_all_batch_norms
    from prequant.torch.cross_layer_equalization import replace_relu6_with_relu

    base = prepare_model(efficientnet_lite0())
    replace_relu6_with_relu(base)
    fold_all_batch_norms(base)
    rescale_randomly(base, seed=0)
    by_weights, by_both = copy.deepcopy(base), copy.deepcopy(base)
    equalize_model(by_weights, scale_criterion="weights")
    result = equalize_model(by_both, scale_criterion="weights_and_activations")
    assert all(p.criterion_fallback for s in result.cls.sets for p in s.pairs)
    for (name, a), (_, b) in zip(by_weights.named_parameters(), by_both.named_parameters()):
        torch.testing.assert_close(b, a, rtol=1e-3, atol=1e-6 * float(a.abs().max()), msg=name)
