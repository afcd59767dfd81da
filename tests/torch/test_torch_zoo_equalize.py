"""torchvision classification models (random weights, randomized BN statistics) through
prepare_model and equalize_model: outputs equal to the original with the exact ReLU6 policy, and
every CLS-scaled pair's per-channel ranges equal."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from prequant.torch import prepare_model
from prequant.torch.cross_layer_equalization import equalize_model

from torch_cle_models import in_ranges, out_ranges, randomize_bn, rel_err

MODELS = {
    "resnet18": {},
    "resnet50": {},
    "mobilenet_v2": {},
    "mobilenet_v3_small": {},
    "efficientnet_b0": {},
    "mnasnet0_5": {},
    "shufflenet_v2_x0_5": {},
    "squeezenet1_0": {},
    "regnet_y_400mf": {},
    "densenet121": {},
    "googlenet": {"aux_logits": False, "init_weights": False},
    "convnext_tiny": {},
}


@pytest.mark.parametrize("name", list(MODELS))
def test_prepare_and_equalize_keeps_outputs(name):
    torch.manual_seed(0)
    model = randomize_bn(getattr(torchvision.models, name)(weights=None, **MODELS[name])).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref = model(x)
        prepared = prepare_model(model)
        result = equalize_model(prepared, relu6="bound", absorb_high_bias=False)
        out = prepared(x)
    assert rel_err(out, ref) < 1e-4, result.explain()
    bns = [m for m in prepared.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert len(result.fold.folded) > 0 or name in ("squeezenet1_0", "convnext_tiny")
    assert len(bns) == len(result.fold.declined)
    modules = dict(prepared.named_modules())
    for s in result.cls.sets:
        mods = [modules[n] for n in s.layers]
        ranges = [out_ranges(mods[0])] + [out_ranges(m) for m in mods[1:-1]] + [in_ranges(mods[-1])]
        for a, b in zip(ranges, ranges[1:]):
            np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-6 * a.max(), err_msg=str(s.layers))
