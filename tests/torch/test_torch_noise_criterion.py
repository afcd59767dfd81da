"""equalize_model(scale_criterion='quantization_noise', weight_quantization=...) in the PyTorch front
end: the options reach the engine (a bad name is refused, the model left as it was), and the FP32
output of torchvision's MobileNetV2 with perturbed batch norms is unchanged in float64 for both
weight quantizers, while the two targets choose different scales."""

import copy

import pytest
import torch

import prequant
from prequant.torch.cross_layer_equalization import equalize_model

from torch_cle_models import randomize_bn

torchvision = pytest.importorskip("torchvision")


def _mobilenet_v2():
    torch.manual_seed(0)
    return randomize_bn(torchvision.models.mobilenet_v2(weights=None)).double().eval()


def test_mobilenet_v2_keeps_the_fp32_output_for_both_targets():
    original = _mobilenet_v2()
    x = torch.randn(2, 3, 96, 96, dtype=torch.float64)
    with torch.no_grad():
        expected = original(x)
    weights = {}
    for target in ("per_tensor", "per_channel"):
        model = copy.deepcopy(original)
        result = equalize_model(model, scale_criterion="quantization_noise", weight_quantization=target)
        pairs = [p for s in result.cls.sets for p in s.pairs]
        assert len(pairs) > 30
        assert all(p.criterion_fallback == "" for p in pairs), [p.criterion_fallback for p in pairs if p.criterion_fallback]
        with torch.no_grad():
            torch.testing.assert_close(model(x), expected, rtol=1e-9, atol=1e-9 * float(expected.abs().max()))
        weights[target] = model.features[1].conv[1].weight.detach().clone()
    # The target is modelled: per-channel weights make the producer's rows irrelevant.
    assert not torch.allclose(weights["per_tensor"], weights["per_channel"])


def test_unknown_weight_quantization_is_refused_and_leaves_the_model():
    model = _mobilenet_v2()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(prequant.InvalidRequestError, match="per_channel"):
        equalize_model(model, scale_criterion="quantization_noise", weight_quantization="channel")
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
