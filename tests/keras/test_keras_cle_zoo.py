"""keras.applications models (random weights, randomized BN statistics) through equalize_model.

Before: MobileNetV2 (ReLU6, depthwise, zero padding), ResNet50 (residual forks), EfficientNetB0
        (swish, squeeze-excite, rescaling/normalization layers) and DenseNet121 (BN→ReLU→conv,
        concatenations), built with weights=None at their minimum input size (32×32), 5 classes,
        logits out, BN statistics randomized: var in [1e-2, 10], non-zero mean, some negative γ
        (γ is drawn relative to √var, so a deep network's activations stay finite).
After:  equalize_model (ReLU6 bound per channel, high-bias absorption off) returns a new model
        whose output equals the original's, every BN is either folded or declined with a reason,
        and every CLS-scaled set's per-channel ranges are equal (up to one factor per link: the ReLU6 gauge).
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
from keras import layers as L

from prequant.keras.activations import BoundedReLU
from prequant.keras.cross_layer_equalization import equalize_model

MODELS = {
    "MobileNetV2": {"min_sets": 17, "bounded": True},
    "ResNet50": {"min_sets": 32, "bounded": False},
    "EfficientNetB0": {"min_sets": 1, "bounded": False},
    "DenseNet121": {"min_sets": 58, "bounded": False},
}


def randomize_batch_norms(model, seed=0):
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, L.BatchNormalization):
            c = layer.moving_mean.shape
            var = np.exp(rng.uniform(np.log(1e-2), np.log(10.0), c))
            layer.moving_variance.assign(var.astype("float32"))
            layer.moving_mean.assign(rng.normal(0.0, 1.0, c).astype("float32"))
            if layer.gamma is not None:
                sign = np.where(rng.random(c) < 0.2, -1.0, 1.0)
                layer.gamma.assign((sign * np.sqrt(var + layer.epsilon) * rng.uniform(0.5, 1.5, c)).astype("float32"))
            if layer.beta is not None:
                layer.beta.assign(rng.normal(0.0, 0.5, c).astype("float32"))
    return model


def kernel_layout(layer):
    w = layer.get_weights()[0]
    if type(layer) is L.DepthwiseConv2D:
        return w.reshape(w.shape[:-2] + (1, -1)), -1, -2, w.shape[-2]
    if type(layer) is L.Dense:
        return w, 1, 0, 1
    assert type(layer) is L.Conv2D, type(layer)
    return w, -1, -2, layer.groups


def out_ranges(layer):
    w, oa, ia, _ = kernel_layout(layer)
    a = np.moveaxis(np.abs(w.astype("float64")), (oa, ia), (0, 1))
    return a.reshape(a.shape[0], -1).max(1)


def in_ranges(layer):
    w, oa, ia, groups = kernel_layout(layer)
    a = np.moveaxis(np.abs(w.astype("float64")), (oa, ia), (0, 1))
    per = a.reshape(a.shape[0], a.shape[1], -1).max(2)
    o = per.shape[0] // groups
    return np.concatenate([per[g * o:(g + 1) * o].max(0) for g in range(groups)])


@pytest.mark.parametrize("name", list(MODELS))
def test_equalize_keeps_outputs_and_equalizes_ranges(name):
    model = getattr(keras.applications, name)(weights=None, input_shape=(32, 32, 3), classes=5,
                                              classifier_activation=None)
    randomize_batch_norms(model)
    x = np.random.default_rng(1).normal(size=(2, 32, 32, 3)).astype("float32")
    ref = np.asarray(model(x, training=False), "float64")
    assert np.isfinite(ref).all()

    # The default criterion keeps the outputs; DFQ's ("weights") also balances the weight ranges,
    # which the end of this test checks.
    eq, result = equalize_model(model, relu6="bound", absorb_high_bias=False, return_result=True)
    out = np.asarray(eq(x, training=False), "float64")
    assert np.abs(out - ref).max() / np.abs(ref).max() < 1e-4, result.explain()
    eq, result = equalize_model(model, relu6="bound", absorb_high_bias=False, return_result=True,
                                scale_criterion="weights")
    out = np.asarray(eq(x, training=False), "float64")
    assert np.abs(out - ref).max() / np.abs(ref).max() < 1e-4, result.explain()

    bns = [layer for layer in model.layers if isinstance(layer, L.BatchNormalization)]
    assert len(result.fold.folded) > 0
    assert len(bns) == len(result.fold.folded) + len(result.fold.declined)
    assert sum(isinstance(layer, L.BatchNormalization) for layer in eq.layers) == len(result.fold.declined)
    assert len(result.cls.sets) >= MODELS[name]["min_sets"]
    assert any(isinstance(layer, BoundedReLU) for layer in eq.layers) == MODELS[name]["bounded"]

    for s in result.cls.sets:
        layers = [eq.get_layer(n) for n in s.layers]
        ranges = [out_ranges(layers[0])] + [out_ranges(m) for m in layers[1:-1]] + [in_ranges(layers[-1])]
        for a, b in zip(ranges, ranges[1:]):  # up to one factor per link (the ReLU6 gauge)
            live = (a > 1e-6 * a.max()) & (b > 1e-6 * b.max())
            ratio = a[live] / b[live]
            np.testing.assert_allclose(ratio, np.full_like(ratio, ratio[0]), rtol=1e-3, err_msg=str(s.layers))
