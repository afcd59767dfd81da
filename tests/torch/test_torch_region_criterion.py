"""equalize_model(regions=True, scale_criterion=...) in the PyTorch front end: a residual region
weighs its stream's activation ranges (the FP32 output unchanged, the scales differ from the
weight criterion's), and a region whose source has no batch norm keeps the weight criterion with
a reason the result, explain() and to_dict() show."""

import copy

import torch
from torch import nn

from prequant.torch.cross_layer_equalization import equalize_model

from torch_cle_models import randomize_bn


class Residual(nn.Module):
    """stem conv-BN → two blocks (conv-BN-ReLU → conv-BN) added to the stream → conv."""

    def __init__(self, bn_in_block2: bool = True):
        super().__init__()
        self.stem, self.bs = nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6)
        self.a1, self.ba1, self.b1, self.bb1 = nn.Conv2d(6, 5, 3, padding=1), nn.BatchNorm2d(5), nn.Conv2d(5, 6, 1), nn.BatchNorm2d(6)
        self.a2, self.ba2, self.b2 = nn.Conv2d(6, 5, 3, padding=1), nn.BatchNorm2d(5), nn.Conv2d(5, 6, 1)
        self.bb2 = nn.BatchNorm2d(6) if bn_in_block2 else nn.Identity()
        self.head = nn.Conv2d(6, 4, 1)

    def forward(self, x):
        s = self.bs(self.stem(x))
        s = s + self.bb1(self.b1(torch.relu(self.ba1(self.a1(s)))))
        s = s + self.bb2(self.b2(torch.relu(self.ba2(self.a2(s)))))
        return self.head(s)


def _model(**kw) -> nn.Module:
    torch.manual_seed(0)
    return randomize_bn(Residual(**kw)).double().eval()


def test_region_weighs_activations_and_keeps_the_output():
    original = _model()
    x = torch.randn(4, 3, 8, 8, dtype=torch.float64) * 2
    scales = {}
    for criterion in ("weights", "weights_and_activations"):
        model = copy.deepcopy(original)
        result = equalize_model(model, regions=True, scale_criterion=criterion)
        assert len(result.regions.regions) == 1, result.regions.explain()
        region = result.regions.regions[0]
        assert region.criterion_fallback == ""
        scales[criterion] = torch.as_tensor(region.scale)
        with torch.no_grad():
            torch.testing.assert_close(model(x), original(x), rtol=1e-9, atol=1e-9)
    ratio = scales["weights_and_activations"] / scales["weights"]
    assert float(ratio.max() / ratio.min()) > 1.1  # the criterion moved the scales, not just one factor


def test_region_without_statistics_falls_back_with_a_reason():
    model = _model(bn_in_block2=False)
    result = equalize_model(model, regions=True, scale_criterion="weights_and_activations")
    region = result.regions.regions[0]
    assert "'b2'" in region.criterion_fallback
    assert "weight criterion (DFQ) for this region: " + region.criterion_fallback in result.regions.explain()
    assert result.regions.to_dict()["regions"][0]["criterion_fallback"] == region.criterion_fallback
