"""Issue 11, engine side, through the PyTorch front end: no silent change of the function.

Before: small models with random BN statistics (var in [1e-2, 10], non-zero mean, negative γ).
After:  padding is known to the engine whichever way the graph was built (manual bias_fold
        declines a padded layer2); an average pool counting its padding blocks high-bias
        absorption, max pools and plain averages do not (and stay exact); a pair given twice is
        rejected; options are validated; relu6='replace' leaves clips outside scaled pairs;
        high-bias absorption matches an independent computation of the 3σ rule.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

import prequant
from prequant import _core
from prequant.torch.activations import BoundedReLU
from prequant.torch.batch_norm_fold import fold_all_batch_norms
from prequant.torch.cross_layer_equalization import (
    DEFAULT_MAX_ITERATIONS,
    CrossLayerScaling,
    HighBiasFold,
    equalize_model,
)
from prequant.torch._engine_graph import build_engine_graph
from torch_cle_models import make_block, randomize_bn, rel_err


class Pair(nn.Module):
    """conv1 → BN → [act] → [mid] → conv2 (kernel k2, padding p2)."""

    def __init__(self, act=None, mid=None, k2=1, p2=0):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 1)
        self.bn = nn.BatchNorm2d(6)
        self.act = act or nn.Identity()
        self.mid = mid or nn.Identity()
        self.conv2 = nn.Conv2d(6, 4, k2, padding=p2)

    def forward(self, x):
        return self.conv2(self.mid(self.act(self.bn(self.conv1(x)))))


def pair(**kw) -> nn.Module:
    torch.manual_seed(1)
    return randomize_bn(Pair(**kw), seed=3).eval().double()


def manual_bias_fold(model):
    """AIMET's manual path: fold, scale the given pair without a model, absorb without a model."""
    bn_pairs = fold_all_batch_norms(model)
    sets = [(model.conv1, model.conv2)]
    scales = CrossLayerScaling.scale_cls_sets(sets)
    infos = CrossLayerScaling.create_cls_set_info_list(sets, scales, [isinstance(model.act, nn.ReLU)])
    HighBiasFold.bias_fold(infos, {layer: bn for layer, bn in bn_pairs})
    return HighBiasFold.last_result


def test_manual_bias_fold_declines_a_padded_layer2():
    result = manual_bias_fold(pair(k2=3, p2=1))
    assert not result.absorbed
    (declined,) = result.declined
    assert "pads its input" in declined.reason


def test_manual_bias_fold_still_absorbs_into_an_unpadded_layer2():  # must not fire
    model = pair(k2=3, p2=0)
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    ref = model(x)
    result = manual_bias_fold(model)
    assert len(result.absorbed) == 1 and np.abs(result.absorbed[0].amount).max() > 0
    assert rel_err(model(x), ref) < 1e-9  # nothing between: c = β' moves exactly


@pytest.mark.parametrize("pool, absorbed", [
    (nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=True), False),
    (nn.AvgPool2d(3, stride=1, padding=1, divisor_override=4), False),
    (nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False), True),
    (nn.AvgPool2d(2), True),
    (nn.MaxPool2d(3, stride=1, padding=1), True),
])
def test_high_bias_through_pools(pool, absorbed):
    model = pair(mid=pool)
    x = torch.randn(2, 3, 7, 7, dtype=torch.float64)
    ref = model(x)
    result = equalize_model(model, absorb_high_bias=True)
    if absorbed:
        assert len(result.high_bias.absorbed) == 1, result.explain()
        assert rel_err(model(x), ref) < 1e-9  # exact: max(x − c) = max(x) − c, mean likewise
    else:
        assert not result.high_bias.absorbed
        assert any("counts its padded zeros" in d.reason for d in result.high_bias.declined), result.explain()
        assert rel_err(model(x), ref) < 1e-9  # CLS alone is exact through the pool


def test_a_pair_given_twice_is_rejected_and_nothing_changes():
    model = pair(act=nn.ReLU6())
    fold_all_batch_norms(model)
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(prequant.InvalidRequestError, match="'conv1' → 'conv2' is in CLS set 1 and again in set 2"):
        CrossLayerScaling.scale_cls_sets([(model.conv1, model.conv2)] * 2, model=model)
    with pytest.raises(prequant.InvalidRequestError, match="again in set 2"):
        CrossLayerScaling.scale_cls_sets([(model.conv1, model.conv2)] * 2)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


@pytest.mark.parametrize("kwargs, match", [
    (dict(max_iterations=0), "max_iterations"),
    (dict(min_scale=0.0), "min_scale"),
    (dict(min_scale=1.0, max_scale=0.5), "max_scale"),
    (dict(max_scale=float("nan")), "max_scale"),
    (dict(tolerance=-1.0), "tolerance"),
    (dict(high_bias_sigmas=-3.0), "high_bias_sigmas"),
])
def test_invalid_options_raise_typed_errors(kwargs, match):
    model = pair(act=nn.ReLU())
    eg = build_engine_graph(model)
    with pytest.raises(prequant.InvalidRequestError, match=match):
        _core.equalize_model(eg.graph, **kwargs)
    if "high_bias_sigmas" not in kwargs:
        with pytest.raises(prequant.InvalidRequestError, match=match):
            _core.scale_model(eg.graph, **kwargs)


def test_one_default_for_iterations():
    assert _core.DEFAULT_MAX_ITERATIONS == DEFAULT_MAX_ITERATIONS == 100


class Clamped(nn.Module):
    """conv0 → BN → ReLU6 → conv1 → BN → ReLU6 → tanh → conv2 → ReLU6 (output clamp)."""

    def __init__(self):
        super().__init__()
        self.conv0, self.bn0, self.a0 = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU6()
        self.conv1, self.bn1, self.a1 = nn.Conv2d(8, 8, 1), nn.BatchNorm2d(8), nn.ReLU6()
        self.conv2, self.a2 = nn.Conv2d(8, 4, 1), nn.ReLU6()

    def forward(self, x):
        x = self.a1(self.bn1(self.conv1(self.a0(self.bn0(self.conv0(x))))))
        return self.a2(self.conv2(torch.tanh(x)) * 8)


def test_replace_policy_leaves_clips_outside_scaled_pairs():
    torch.manual_seed(5)
    model = randomize_bn(Clamped(), seed=5).eval().double()
    for bn in (model.bn0, model.bn1):  # large activations so every ReLU6 clips
        bn.weight.data *= 6
    x = torch.randn(4, 3, 6, 6, dtype=torch.float64)
    expected = copy.deepcopy(model)
    expected.a0 = nn.ReLU()
    all_relu = copy.deepcopy(expected)
    all_relu.a1, all_relu.a2 = nn.ReLU(), nn.ReLU()
    with torch.no_grad():
        want = expected(x)
        assert rel_err(all_relu(x), want) > 1e-3  # a1 and a2 clip on these inputs
        result = equalize_model(model, relu6="replace")
        assert [[p.layer1 for p in s.pairs] for s in result.cls.sets] == [["conv0"]]
        assert isinstance(model.a0, nn.ReLU) and not isinstance(model.a0, nn.ReLU6)
        assert isinstance(model.a1, nn.ReLU6) and isinstance(model.a2, nn.ReLU6)
        assert rel_err(model(x), want) < 1e-9


# ---- high-bias absorption against an independent computation of the 3σ rule ------------------

def _summed_weight(conv: nn.Module) -> np.ndarray:
    """Σ over the kernel of W2[:, i, k] as an (O, C) matrix; a depthwise conv is diagonal."""
    w = conv.weight.detach().double().numpy()
    s = w.reshape(w.shape[0], w.shape[1], -1).sum(2)
    if getattr(conv, "groups", 1) == 1:
        return s
    return np.diag(s[:, 0])


def test_high_bias_absorption_matches_the_3_sigma_rule():
    """make_block: (dw → ReLU6 → pw) absorbs the 3σ excess, capped by the per-channel bound;
    (pw → conv4) with nothing between absorbs all of β'; (conv4 → ReLU → global pool → flatten →
    fc) the 3σ excess (the pool is an unpadded average, the flatten of a (N, C, 1, 1) tensor
    keeps channels); (conv1 → dw) is declined (dw pads)."""
    model = make_block().double()
    bn_after = {"conv1": model.bn1, "dw": model.bn2, "pw": model.bn3, "conv4": model.bn4}
    stats = {k: (bn.weight.detach().double().numpy().copy(), bn.bias.detach().double().numpy().copy())
             for k, bn in bn_after.items()}
    without = copy.deepcopy(model)
    equalize_model(without, absorb_high_bias=False)
    result = equalize_model(model, absorb_high_bias=True)
    modules = dict(model.named_modules())
    ref_modules = dict(without.named_modules())
    for name in ("conv1", "dw", "pw", "conv4", "fc"):  # weights are untouched by absorption
        assert torch.equal(modules[name].weight, ref_modules[name].weight), name
    scale = {(p.layer1, p.layer2): np.asarray(p.scale) for s in result.cls.sets for p in s.pairs}
    absorbed = {(a.layer1, a.layer2) for a in result.high_bias.absorbed}
    assert absorbed == {("dw", "pw"), ("pw", "conv4"), ("conv4", "fc")}, result.explain()
    assert any(list(d.nodes) == ["conv1", "dw"] and "pads" in d.reason for d in result.high_bias.declined)
    bias = {n: ref_modules[n].bias.detach().double().numpy().copy() for n in ("dw", "pw", "conv4", "fc")}
    for l1, l2 in (("dw", "pw"), ("pw", "conv4"), ("conv4", "fc")):
        gamma, beta = stats[l1]
        s = scale[(l1, l2)]
        relu = l1 in ("dw", "conv4")
        c = np.maximum(0.0, beta / s - 3 * np.abs(gamma / s)) if relu else beta / s
        if l1 == "dw":  # the 'bound' ReLU6 between caps c and is lowered by it
            upper = ref_modules["act2"].upper.detach().double().numpy()
            c = np.minimum(c, upper)
            np.testing.assert_allclose(model.act2.upper.detach().double().numpy(), upper - c, rtol=1e-6)  # float32 bounds
        assert np.abs(c).max() > 1e-3, (l1, l2)
        bias[l1] = bias[l1] - c
        bias[l2] = bias[l2] + _summed_weight(ref_modules[l2]) @ c
    for n, want in bias.items():
        np.testing.assert_allclose(modules[n].bias.detach().double().numpy(), want, rtol=1e-9, atol=1e-12,
                                   err_msg=n)
    assert isinstance(model.act2, BoundedReLU)
