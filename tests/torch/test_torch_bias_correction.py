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
