"""equalize_model(bias_correction=True) through the PyTorch front end, judged by PyTorch itself.

The model's input is standard normal and conv1 has no padding, so conv1's output is exactly
Gaussian per channel; its BN is given those exact statistics (mean b1[c], var Σ w1[c]²), so the
BN's output is N(β, |γ|) as the engine assumes. Then, with only conv2's weight fake-quantized by
torch's own quantizer, the corrected model's mean output must equal the original FP32 model's
(the shift weight quantization causes is cancelled), while the uncorrected one's is off.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from prequant.torch.cross_layer_equalization import equalize_model

pytestmark = pytest.mark.usefixtures("single_thread_torch")


class Net(nn.Module):
    def __init__(self, act: nn.Module, depthwise: bool):
        super().__init__()
        self.conv1 = nn.Conv2d(4, 6, 3)
        self.bn = nn.BatchNorm2d(6)
        self.act = act
        self.conv2 = nn.Conv2d(6, 6, 3, groups=6, bias=False) if depthwise else nn.Conv2d(6, 5, 3, bias=False)

    def forward(self, x):
        return self.conv2(self.act(self.bn(self.conv1(x))))


def _model(act: nn.Module, depthwise: bool) -> Net:
    torch.manual_seed(0)
    m = Net(act, depthwise).eval()
    with torch.no_grad():
        m.conv1.bias.copy_(torch.randn(6))
        m.bn.running_mean.copy_(m.conv1.bias)
        m.bn.running_var.copy_(m.conv1.weight.pow(2).sum((1, 2, 3)))
        m.bn.weight.copy_(torch.tensor([-1.5, 0.4, 2.0, -0.3, 1.0, 0.7]))  # negative γ included
        m.bn.bias.copy_(torch.tensor([0.5, -0.8, 1.5, 0.2, -0.1, 3.0]))
    return m


def _fake_quantize(w: torch.Tensor, bits: int, per_channel: bool) -> torch.Tensor:
    q = 2 ** (bits - 1) - 1
    if per_channel:
        scale = w.abs().flatten(1).amax(1) / q
        return torch.fake_quantize_per_channel_affine(w, scale, torch.zeros_like(scale, dtype=torch.int32), 0, -q, q)
    return torch.fake_quantize_per_tensor_affine(w, float(w.abs().max() / q), 0, -q, q)


def _mean_shift(model: nn.Module, reference: nn.Module, x: torch.Tensor, bits: int, per_channel: bool):
    """Per output channel: mean and standard error of (model with conv2 quantized) − reference."""
    q = copy.deepcopy(model)
    with torch.no_grad():
        q.conv2.weight.copy_(_fake_quantize(q.conv2.weight, bits, per_channel))
        d = (q(x) - reference(x)).double().transpose(0, 1).flatten(1)
    return d.mean(1), d.std(1) / d.shape[1] ** 0.5


@pytest.mark.parametrize("act,depthwise,per_channel", [
    (nn.ReLU(), False, False), (nn.ReLU6(), True, False), (nn.ReLU6(), False, True), (nn.Identity(), False, False),
])
def test_corrected_model_keeps_the_mean_under_weight_quantization(act, depthwise, per_channel):
    bits = 4  # a large shift against the sampling noise
    original = _model(act, depthwise)
    x = torch.randn(20000, 4, 5, 5, generator=torch.Generator().manual_seed(1))  # one output pixel each

    plain = copy.deepcopy(original)
    equalize_model(plain)
    corrected = copy.deepcopy(original)
    result = equalize_model(corrected, bias_correction=True, bias_correction_bits=bits,
                            bias_correction_per_channel=per_channel)

    bc = result.bias_correction
    assert bc.changes_fp32_output
    assert [c.layer for c in bc.corrected] == ["conv2"]
    assert bc.corrected[0].bias_added and corrected.conv2.bias is not None
    assert [d.nodes for d in bc.declined] == [["conv1"]]
    assert "graph input" in bc.declined[0].reason
    assert "Bias correction: 1 layer corrected" in result.explain()

    before, se_before = _mean_shift(plain, original, x, bits, per_channel)
    after, se_after = _mean_shift(corrected, original, x, bits, per_channel)
    assert (before.abs() > 5 * se_before).any(), "the uncorrected shift should be measurable"
    assert (after.abs() <= 5 * se_after + 1e-6).all(), (after, se_after)
    # The FP32 output moved by exactly −correction per channel.
    with torch.no_grad():
        moved = (corrected(x[:8]) - plain(x[:8])).transpose(0, 1).flatten(1)
    expected = -torch.as_tensor(bc.corrected[0].correction, dtype=moved.dtype)
    torch.testing.assert_close(moved, expected[:, None].expand_as(moved), rtol=1e-4, atol=1e-5)


def test_default_is_off_and_function_preserved():
    original = _model(nn.ReLU6(), False)
    model = copy.deepcopy(original)
    result = equalize_model(model)
    assert not result.bias_correction.corrected and not result.bias_correction.changes_fp32_output
    x = torch.randn(4, 4, 5, 5)
    torch.testing.assert_close(model(x), original(x), rtol=1e-4, atol=1e-5)


def _randomize_batch_norms(model: nn.Module, seed: int = 0) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                c = m.num_features
                m.running_mean.copy_(torch.randn(c, generator=g))
                m.running_var.copy_(torch.empty(c).uniform_(1e-2, 10, generator=g))
                m.weight.copy_(torch.randn(c, generator=g))  # negative γ included
                m.bias.copy_(torch.randn(c, generator=g))
    return model


def test_mobilenet_v2_convs_after_residual_adds_are_corrected():
    """torchvision's MobileNetV2: the expand conv of each block after a residual Add reads the sum
    of two BN outputs (E[a + b] = E[a] + E[b]); the classifier reads ReLU6 → global average pool →
    flatten. All are corrected now; only the stem (graph input) is declined."""
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    original = _randomize_batch_norms(torchvision.models.mobilenet_v2(weights=None, num_classes=10).eval())
    plain = copy.deepcopy(original)
    equalize_model(plain)
    model = copy.deepcopy(original)
    result = equalize_model(model, bias_correction=True)
    bc = result.bias_correction
    corrected = {c.layer: c for c in bc.corrected}
    assert [d.nodes for d in bc.declined] == [["features.0.0"]], [(d.nodes, d.reason) for d in bc.declined]
    assert "graph input" in bc.declined[0].reason
    # Blocks 3, 5, 6, 8, 9, 10, 12, 13, 15, 16 end in a residual Add; the next block's expand conv reads it.
    for block in (4, 6, 7, 9, 10, 11, 13, 14, 16, 17):
        c = corrected[f"features.{block}.conv.0.0"]
        assert len(c.statistics_from.split(", ")) >= 2, c.statistics_from  # the Add's two sources
    assert "classifier.1" in corrected
    assert len(corrected) == sum(isinstance(m, (nn.Conv2d, nn.Linear)) for m in original.modules()) - 1
    modules, plain_modules = dict(model.named_modules()), dict(plain.named_modules())
    for name, c in corrected.items():
        before = plain_modules[name].bias.detach().double()
        after = modules[name].bias.detach().double()
        torch.testing.assert_close(after, before - torch.as_tensor(c.correction, dtype=torch.float64),
                                   rtol=1e-5, atol=1e-6)
