"""PyTorch and ONNX front ends agree on a network with a residual Add, fan-out and a Concat:
the same weights in (tests/parity_net.py), the same equalized weights out (1e-5), regions on; and
the gated variant (SiLU, HardSwish, GELU between scaled layers) with gated_activations=True.
The Keras half is tests/keras/test_keras_parity_regions.py."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from prequant.torch.cross_layer_equalization import equalize_model

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import parity_net  # noqa: E402


class ParityNet(nn.Module):
    def __init__(self, w: dict[str, np.ndarray], gated: bool = False):
        super().__init__()
        modules = {"relu": nn.ReLU, "silu": nn.SiLU, "hard_swish": nn.Hardswish, "gelu": nn.GELU}
        self.acts = nn.ModuleDict({name: modules[parity_net.activation(name, gated)]() for name in parity_net.CONVS})
        for name, (cin, cout, k) in parity_net.CONVS.items():
            setattr(self, name, nn.Conv2d(cin, cout, k, padding=k // 2))
            setattr(self, parity_net.bn_name(name), nn.BatchNorm2d(cout, eps=parity_net.EPS))
        self.fc = nn.Linear(*parity_net.FC)
        self.load_state_dict({k: torch.from_numpy(v) for k, v in w.items()}, strict=False)
        self.eval()

    def block(self, name: str, x, relu: bool = True):
        y = getattr(self, parity_net.bn_name(name))(getattr(self, name)(x))
        return self.acts[name](y) if relu else y

    def forward(self, x):
        s = self.block("c0", x)
        t = F.relu(s + self.block("c2", self.block("c1", s), relu=False))
        y = self.block("cc", torch.cat([self.block("ca", t), self.block("cb", t)], dim=1))
        return self.fc(y.mean((2, 3)))


@pytest.mark.parametrize("high_bias,gated", [(False, False), (True, False), (False, True)],
                         ids=["exact", "high_bias", "gated"])
def test_torch_and_onnx_equalize_the_same_regions(tmp_path, high_bias, gated):
    w = parity_net.weights(seed=3)
    model = ParityNet(w, gated)
    x = torch.randn(parity_net.INPUT_SHAPE, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = model(x)
    result = equalize_model(model, regions=True, absorb_high_bias=high_bias, gated_activations=gated)
    parity_net.assert_regions(result)
    if not high_bias:
        with torch.no_grad():
            out = model(x)
        assert float((out - ref).abs().max() / ref.abs().max()) < 1e-5
    got = {f"{n}.{p}": getattr(model, n).get_parameter(p).detach().numpy()
           for n in [*parity_net.CONVS, "fc"] for p in ("weight", "bias")}
    if gated:
        parity_net.assert_gates_scaled(result)
    want = parity_net.equalize_onnx(tmp_path, w, ["--high-bias"] if high_bias else [], gated=gated)
    parity_net.assert_same_weights(got, want)
