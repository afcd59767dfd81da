"""PyTorch CLE API: numerics against the model's own forward pass, on randomized BN statistics."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from prequant import _core
from prequant.torch.activations import BoundedReLU
from prequant.torch.batch_norm_fold import fold_all_batch_norms, fold_given_batch_norms
from torch_cle_models import absorb_high_bias_by_hand, in_ranges, make_block, out_ranges, randomize_bn, rel_err
from prequant.torch.cross_layer_equalization import (
    ClsSetInfo,
    CrossLayerScaling,
    HighBiasFold,
    equalize_model,
    replace_relu6_with_relu,
)

torch.manual_seed(0)


def test_fold_all_batch_norms_matches_forward():
    model = make_block()
    x = torch.randn(2, 3, 16, 16)
    ref = model(x)
    pairs = fold_all_batch_norms(model)
    assert [(type(a).__name__, type(b).__name__) for a, b in pairs] == [("Conv2d", "BatchNorm2d")] * 4
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert all(m.bias is not None for m in (model.conv1, model.dw, model.pw))
    assert rel_err(model(x), ref) < 1e-5


def test_fold_bn_before_conv_and_declined_reasons():
    class BnFirst(nn.Module):
        def __init__(self):
            super().__init__()
            self.bn = nn.BatchNorm1d(6)
            self.fc = nn.Linear(6, 4)
            self.bn_pad = nn.BatchNorm2d(3)
            self.conv = nn.Conv2d(3, 4, 3, padding=1)

        def forward(self, x, y):
            return self.fc(self.bn(x)), self.conv(self.bn_pad(y))

    model = randomize_bn(BnFirst()).eval()
    x, y = torch.randn(5, 6), torch.randn(2, 3, 8, 8)
    ref = model(x, y)
    # x is a graph input: its rank (2, so BN1d's channels are the Linear's last axis) comes
    # from dummy_input; without it the pair is declined (test_torch_no_silent_change.py)
    pairs, result = fold_all_batch_norms(model, dummy_input=(x, y), return_result=True)
    assert [(a, b) for a, b in pairs] == [(model.fc, pairs[0][1])]
    assert isinstance(model.bn, nn.Identity) and isinstance(model.bn_pad, nn.BatchNorm2d)
    assert "pads its input" in result.explain()
    for got, want in zip(model(x, y), ref):
        assert rel_err(got, want) < 1e-5


def test_fold_given_batch_norms_and_invalid_pair_changes_nothing():
    model = make_block()
    x = torch.randn(1, 3, 12, 12)
    ref = model(x)
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(_core.InvalidRequestError, match="does not read the output"):
        fold_given_batch_norms(model, [(model.conv1, model.bn1, True), (model.conv1, model.bn2, True)])
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert isinstance(model.bn1, nn.BatchNorm2d)
    fold_given_batch_norms(model, [(model.conv1, model.bn1, True)])
    assert isinstance(model.bn1, nn.Identity)
    assert rel_err(model(x), ref) < 1e-5


@pytest.mark.parametrize("relu6", ["bound", "replace", "skip"])
def test_equalize_model_policies(relu6):
    model = make_block()
    relu_block = copy.deepcopy(model)
    x = torch.randn(2, 3, 16, 16)
    ref = model(x)
    result = equalize_model(model, relu6=relu6, absorb_high_bias=False)
    out = model(x)
    if relu6 == "replace":
        assert isinstance(model.act1, nn.ReLU) and isinstance(model.act2, nn.ReLU)
        # The same block with those two ReLU6s written as ReLU: what 'replace' must compute.
        relu_block.act1, relu_block.act2 = nn.ReLU(), nn.ReLU()
        assert rel_err(out, relu_block(x)) < 1e-4
    elif relu6 == "bound":
        assert isinstance(model.act1, BoundedReLU) and isinstance(model.act2, BoundedReLU)
        assert rel_err(out, ref) < 1e-4
    else:
        assert isinstance(model.act1, nn.ReLU6)
        assert rel_err(out, ref) < 1e-4
        assert "skip" in result.explain()
    layers = [s.layers for s in result.cls.sets]
    if relu6 != "skip":
        assert ["conv1", "dw", "pw"] in layers
    assert ["pw", "conv4"] in layers


def test_equalized_ranges_are_equal():
    model = make_block()
    result = equalize_model(model, absorb_high_bias=False, scale_criterion="weights")  # DFQ's balance
    for s in result.cls.sets:
        mods = [dict(model.named_modules())[n] for n in s.layers]
        # Each link balanced up to one factor: the gauge that puts every ReLU6 bound at <= 6
        # multiplies whole tensors (the triple's links, and so pw's output) by one number, which
        # changes no ratio within a tensor and so no weight quantization error.
        if len(mods) == 2:
            links = [(out_ranges(mods[0]), in_ranges(mods[1]))]
        else:
            r1, r2, r3 = out_ranges(mods[0]), out_ranges(mods[1]), in_ranges(mods[2])
            links = [(r1, r2), (r2, r3)]
        for a, b in links:
            np.testing.assert_allclose(a / b, np.full_like(a, a[0] / b[0]), rtol=1e-4)
    for act in (model.act1, model.act2):
        assert isinstance(act, BoundedReLU) and float(act.upper.max()) <= 6.0 * (1 + 1e-6)


def test_high_bias_absorption_applied_and_close():
    """equalize_model(absorb_high_bias=True) against the same equalization without absorption,
    followed by the 3σ rule computed by hand (torch_cle_models.absorb_high_bias_by_hand)."""
    original = make_block().double()
    with torch.no_grad():
        original.bn2.bias.add_(3.0)  # β well above 3|γ| in places: the ReLU pair moves something too
    model, expected = copy.deepcopy(original), copy.deepcopy(original)
    x = torch.randn(4, 3, 16, 16, dtype=torch.float64)
    ref = model(x)
    result = equalize_model(model, absorb_high_bias=True)
    assert result.high_bias.absorbed, result.explain()
    equalize_model(expected, absorb_high_bias=False)
    scaled = {(p.layer1, p.layer2): p for s in result.cls.sets for p in s.pairs}
    bn_after = {"conv1": original.bn1, "dw": original.bn2, "pw": original.bn3, "conv4": original.bn4}
    between = {("dw", "pw"): expected.act2}
    for a in result.high_bias.absorbed:
        p = scaled[(a.layer1, a.layer2)]
        bn = bn_after[a.layer1]
        c = absorb_high_bias_by_hand(getattr(expected, a.layer1), getattr(expected, a.layer2),
                                     bn.weight.detach().numpy(), bn.bias.detach().numpy(), p.scale,
                                     p.relu_between, between.get((a.layer1, a.layer2)))
        np.testing.assert_allclose(a.amount, c, rtol=1e-9, atol=1e-12)
    assert {(a.layer1, a.layer2) for a in result.high_bias.absorbed} == {("dw", "pw"), ("pw", "conv4"), ("conv4", "fc")}
    assert rel_err(model(x), expected(x)) < 1e-9
    assert rel_err(model(x), ref) > 1e-3  # absorption did change the function (the 3σ rule's price)
    # Off by default.
    default = equalize_model(make_block())
    assert not default.high_bias.absorbed and not default.high_bias.declined


def test_stepwise_api_like_aimet():
    model = make_block()
    x = torch.randn(2, 3, 16, 16)
    ref = model(x)
    replace_relu6_with_relu(model)
    assert isinstance(model.act1, nn.ReLU)
    relu_ref = model(x)
    pairs = fold_all_batch_norms(model)
    bn_dict = {layer: bn for layer, bn in pairs}
    infos = CrossLayerScaling.scale_model(model)
    assert infos and all(isinstance(i, ClsSetInfo) for i in infos)
    assert rel_err(model(x), relu_ref) < 1e-4
    expected = copy.deepcopy(model)
    HighBiasFold.bias_fold(infos, bn_dict)
    assert HighBiasFold.last_result.absorbed
    del ref
    # Against the 3σ rule computed by hand on a copy (ReLU between the ReLU6-replaced pairs).
    pairs_by_name = {(a.layer1, a.layer2): a for a in HighBiasFold.last_result.absorbed}
    names = {id(m): n for n, m in model.named_modules()}
    checked = 0
    for info in infos:
        for p in info.cls_pair_info_list:
            a = pairs_by_name.get((names[id(p.layer1)], names[id(p.layer2)]))
            if a is None:
                continue
            bn = bn_dict[p.layer1]
            c = absorb_high_bias_by_hand(getattr(expected, a.layer1), getattr(expected, a.layer2),
                                         bn.weight.detach().numpy(), bn.bias.detach().numpy(), p.scale_factor,
                                         p.relu_activation_between_layers)
            np.testing.assert_allclose(a.amount, c, rtol=1e-6, atol=1e-6)
            checked += 1
    assert checked == len(pairs_by_name) > 0
    assert rel_err(model(x), expected(x)) < 1e-5


def test_manual_sets_bias_fold_matches_the_3_sigma_rule():
    """AIMET's manual path (no model): scale_cls_sets on given sets, create_cls_set_info_list,
    bias_fold with the folded BNs — against the 3σ rule computed by hand; the pair into the padded
    depthwise is declined (its border taps would miss the shift)."""
    model = make_block().double()
    with torch.no_grad():
        model.bn3.bias.add_(2.0)
    replace_relu6_with_relu(model)
    bn_dict = {layer: bn for layer, bn in fold_all_batch_norms(model)}
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    sets = [(model.conv1, model.dw, model.pw), (model.pw, model.conv4)]
    scales = CrossLayerScaling.scale_cls_sets(sets)
    infos = CrossLayerScaling.create_cls_set_info_list(sets, scales, [(True, True), False])
    expected = copy.deepcopy(model)
    HighBiasFold.bias_fold(infos, bn_dict)
    result = HighBiasFold.last_result
    assert any("border" in d.reason for d in result.declined), result.declined  # conv1 -> dw (padded)
    assert len(result.absorbed) == 2  # dw -> pw (ReLU between), pw -> conv4 (nothing between)
    by_pair = {(id(p.layer1), id(p.layer2)): p for i in infos for p in i.cls_pair_info_list}
    names = {n: getattr(model, n) for n in ("conv1", "dw", "pw", "conv4")}
    engine_names = {}  # the chain graph names layers layer0, layer1, ... in first-seen order
    for m in (model.conv1, model.dw, model.pw, model.conv4):
        engine_names.setdefault(id(m), f"layer{len(engine_names)}")
    by_engine = {engine_names[id(m)]: n for n, m in names.items()}
    for a in result.absorbed:
        n1, n2 = by_engine[a.layer1], by_engine[a.layer2]
        p = by_pair[(id(names[n1]), id(names[n2]))]
        bn = bn_dict[names[n1]]
        c = absorb_high_bias_by_hand(getattr(expected, n1), getattr(expected, n2), bn.weight.detach().numpy(),
                                     bn.bias.detach().numpy(), p.scale_factor, p.relu_activation_between_layers)
        np.testing.assert_allclose(a.amount, c, rtol=1e-9, atol=1e-12)
    assert rel_err(model(x), expected(x)) < 1e-9


def test_manual_scale_cls_sets_and_info_list():
    model = make_block()
    fold_all_batch_norms(model)
    replace_relu6_with_relu(model)
    x = torch.randn(2, 3, 16, 16)
    ref = model(x)
    sets = [(model.conv1, model.dw, model.pw), (model.pw, model.conv4)]
    scales = CrossLayerScaling.scale_cls_sets(sets)
    assert isinstance(scales[0], tuple) and len(scales[0]) == 2 and scales[1].shape == (16,)
    assert rel_err(model(x), ref) < 1e-4
    infos = CrossLayerScaling.create_cls_set_info_list(sets, scales, [(True, True), False])
    assert len(infos[0].cls_pair_info_list) == 2 and len(infos[1].cls_pair_info_list) == 1


def test_manual_sets_that_no_chain_can_hold_are_refused_unchanged():
    """Without a model the given sets are connected by the engine (connect_layer_chains): a layer
    feeding two different layers, or a cycle, is refused before any weight changes."""
    model = make_block()
    fold_all_batch_norms(model)
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(_core.InvalidRequestError, match="Conv2d 'layer1' feeds two different layers"):
        CrossLayerScaling.scale_cls_sets([(model.conv1, model.dw), (model.dw, model.pw), (model.dw, model.conv4)])
    with pytest.raises(_core.InvalidRequestError, match="in a cycle"):
        CrossLayerScaling.scale_cls_sets([(model.pw, model.conv4), (model.conv4, model.pw)])
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_manual_scale_checks_against_model():
    model = make_block()
    fold_all_batch_norms(model)
    with pytest.raises(_core.InvalidRequestError, match="not adjacent|cannot scale"):
        CrossLayerScaling.scale_cls_sets([(model.conv1, model.pw)], model=model)
    with pytest.raises(_core.InvalidRequestError):
        CrossLayerScaling.scale_cls_sets([(model.conv1, model.conv4)])  # 8 vs 16 channels


@pytest.mark.parametrize("dims", [1, 3])
def test_conv1d_conv3d_and_transposed(dims):
    Conv = {1: nn.Conv1d, 3: nn.Conv3d}[dims]
    ConvT = {1: nn.ConvTranspose1d, 3: nn.ConvTranspose3d}[dims]
    BN = {1: nn.BatchNorm1d, 3: nn.BatchNorm3d}[dims]
    model = randomize_bn(nn.Sequential(
        Conv(3, 6, 3), BN(6), nn.LeakyReLU(0.1), ConvT(6, 4, 3, stride=2, groups=2), BN(4), nn.PReLU(4),
        Conv(4, 5, 1), BN(5),
    )).eval()
    x = torch.randn(2, 3, *([6] * dims))
    ref = model(x)
    result = equalize_model(model, absorb_high_bias=False)
    assert len(result.fold.folded) == 3
    assert len(result.cls.sets) == 2
    assert rel_err(model(x), ref) < 1e-4


def test_bad_inputs_are_refused_clearly():
    model = make_block().train()
    with pytest.raises(_core.UnsupportedError, match="training mode"):
        equalize_model(model)
    half = make_block().half()
    with pytest.raises(_core.UnsupportedError, match="float16"):
        equalize_model(half)
    nan = make_block()
    with torch.no_grad():
        nan.conv4.weight[0, 0, 0, 0] = float("nan")
    before = copy.deepcopy(nan.state_dict())
    with pytest.raises(_core.InvalidParameterError, match="conv4"):
        equalize_model(nan)
    for k, v in nan.state_dict().items():
        assert torch.equal(v, before[k]) or (torch.isnan(v).any() and torch.equal(v.isnan(), before[k].isnan())), k
    assert isinstance(nan.bn1, nn.BatchNorm2d)


def test_random_rescaling_is_undone():
    """GUIDE's stress case: a function-preserving random per-channel rescaling (1e-2..1e2)
    wrecks per-channel ranges; CLS brings paired ranges back to equal."""
    model = make_block()
    fold_all_batch_norms(model)
    replace_relu6_with_relu(model)
    g = torch.Generator().manual_seed(1)
    s = 10 ** (torch.rand(16, generator=g) * 4 - 2)
    with torch.no_grad():
        model.pw.weight.mul_(s.view(-1, 1, 1, 1))
        model.pw.bias.mul_(s)
        model.conv4.weight.div_(s.view(1, -1, 1, 1))
    x = torch.randn(2, 3, 16, 16)
    ref = model(x)
    CrossLayerScaling.scale_model(model)
    np.testing.assert_allclose(out_ranges(model.pw), in_ranges(model.conv4), rtol=1e-4)
    assert rel_err(model(x), ref) < 1e-4


def test_stepwise_bound_policy_keeps_bounds_exact_through_bias_fold():
    """scale_model with the 'bound' policy, then bias_fold: the BoundedReLU bounds drop with the
    bias, so outputs stay equal on inputs where pre-activations stay above the absorbed amount.
    The pair into the padded depthwise is declined (its border would miss the shift)."""
    model = make_block()
    with torch.no_grad():
        model.bn2.bias.fill_(4.0)  # β well above 3|γ| somewhere: something to absorb
    pairs = fold_all_batch_norms(model)
    infos = CrossLayerScaling.scale_model(model)
    assert isinstance(model.act2, BoundedReLU)
    upper_before = model.act2.upper.clone()
    HighBiasFold.bias_fold(infos, {layer: bn for layer, bn in pairs})
    absorbed = {(a.layer1, a.layer2): a.amount for a in HighBiasFold.last_result.absorbed}
    assert ("conv1", "dw") not in absorbed
    assert any("border" in d.reason for d in HighBiasFold.last_result.declined)
    c = torch.as_tensor(absorbed[("dw", "pw")], dtype=torch.float32)
    assert c.max() > 0
    assert torch.allclose(model.act2.upper, upper_before - c, atol=1e-5)


def test_one_channel_layers_and_nothing_to_do():
    model = randomize_bn(nn.Sequential(nn.Conv2d(3, 1, 3), nn.BatchNorm2d(1), nn.ReLU(), nn.Conv2d(1, 4, 1),
                                       nn.BatchNorm2d(4))).eval()
    x = torch.randn(2, 3, 8, 8)
    ref = model(x)
    result = equalize_model(model, absorb_high_bias=False)
    assert len(result.fold.folded) == 2 and len(result.cls.sets) == 1
    assert rel_err(model(x), ref) < 1e-5
    plain = nn.Sequential(nn.Flatten(), nn.Linear(12, 3)).eval()
    result = equalize_model(plain)
    assert not result.fold.folded and not result.cls.sets
    assert "graph output" in result.explain()
