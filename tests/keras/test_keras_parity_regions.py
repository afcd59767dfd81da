"""Keras and ONNX front ends agree on a network with a residual Add, fan-out and a Concat:
the same weights in (tests/parity_net.py, converted to Keras' layouts), the same equalized
weights out (1e-5), regions on; and the gated variant (SiLU, HardSwish, GELU between scaled layers)
with gated_activations=True. The PyTorch half is tests/torch/test_torch_parity_regions.py."""

from __future__ import annotations

import sys
from pathlib import Path

import keras
import numpy as np
import pytest
from keras import layers as L

from prequant.keras.cross_layer_equalization import equalize_model

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import parity_net  # noqa: E402


KERAS_ACTIVATION = {"silu": "swish", "hard_swish": "hard_swish", "gelu": "gelu"}


def build(w: dict[str, np.ndarray], gated: bool = False) -> keras.Model:
    n, c, h, wd = parity_net.INPUT_SHAPE
    x = keras.Input((h, wd, c))
    made = []

    def block(name, inp, relu=True):
        cin, cout, k = parity_net.CONVS[name]
        conv = L.Conv2D(cout, k, padding="same", name=name)
        bn = L.BatchNormalization(epsilon=parity_net.EPS, name=parity_net.bn_name(name))
        y = bn(conv(inp))
        made.append((conv, bn))
        if not relu:
            return y
        kind = parity_net.activation(name, gated)
        if kind == "relu":
            return L.ReLU(name=name + "_relu")(y)
        return L.Activation(KERAS_ACTIVATION[kind], name=name + "_" + kind)(y)

    s = block("c0", x)
    t = L.ReLU(name="add_relu")(L.Add(name="add")([s, block("c2", block("c1", s), relu=False)]))
    y = block("cc", L.Concatenate(name="cat")([block("ca", t), block("cb", t)]))
    fc = L.Dense(parity_net.FC[1], name="fc")
    model = keras.Model(x, fc(L.GlobalAveragePooling2D(name="gap")(y)))
    for conv, bn in made:
        conv.set_weights([w[conv.name + ".weight"].transpose(2, 3, 1, 0), w[conv.name + ".bias"]])
        bn.set_weights([w[f"{bn.name}.{p}"] for p in ("weight", "bias", "running_mean", "running_var")])
    fc.set_weights([w["fc.weight"].T, w["fc.bias"]])
    return model


@pytest.mark.parametrize("high_bias,gated", [(False, False), (True, False), (False, True)],
                         ids=["exact", "high_bias", "gated"])
def test_keras_and_onnx_equalize_the_same_regions(tmp_path, high_bias, gated):
    w = parity_net.weights(seed=3)
    model = build(w, gated)
    x = np.random.default_rng(0).normal(size=(1, 12, 12, 3)).astype("float32")
    ref = model.predict(x, verbose=0)
    new, result = equalize_model(model, regions=True, absorb_high_bias=high_bias, return_result=True,
                                 gated_activations=gated)
    parity_net.assert_regions(result)
    if not high_bias:
        out = new.predict(x, verbose=0)
        assert np.max(np.abs(out - ref)) / np.max(np.abs(ref)) < 1e-5
    got = {}
    for name in [*parity_net.CONVS, "fc"]:
        kernel, bias = new.get_layer(name).get_weights()
        got[name + ".weight"] = kernel.transpose(3, 2, 0, 1) if kernel.ndim == 4 else kernel.T
        got[name + ".bias"] = bias
    if gated:
        parity_net.assert_gates_scaled(result)
    want = parity_net.equalize_onnx(tmp_path, w, ["--high-bias"] if high_bias else [], gated=gated)
    parity_net.assert_same_weights(got, want)
