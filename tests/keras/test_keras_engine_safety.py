"""Issue 11, engine side, through the Keras front end.

Before: small functional models, BN statistics random (var in [1e-2, 10], non-zero mean,
        negative γ).
After:  the manual bias_fold knows a 'same'-padded layer2 pads (declined, as the model path);
        Keras' 'same' AveragePooling2D averages real inputs only, so absorption through it is
        exact (measured here, not assumed); absorbed amounts match an independent computation of
        the 3σ rule; a pair given twice is rejected.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
from keras import layers as L

import prequant
from prequant import _core
from prequant.keras.batch_norm_fold import fold_all_batch_norms
from prequant.keras.cross_layer_equalization import (
    DEFAULT_MAX_ITERATIONS,
    CrossLayerScaling,
    HighBiasFold,
    equalize_model,
)


def pair_model(relu=False, mid=None, k2=1, padding="valid"):
    rng = np.random.default_rng(11)
    x = inp = keras.Input((7, 7, 3))
    x = L.Conv2D(6, 1, name="c1")(x)
    x = L.BatchNormalization(name="bn")(x)
    if relu:
        x = L.ReLU(name="r")(x)
    if mid is not None:
        x = mid(x)
    x = L.Conv2D(4, k2, padding=padding, name="c2")(x)
    model = keras.Model(inp, x)
    bn = model.get_layer("bn")
    bn.moving_variance.assign(np.exp(rng.uniform(np.log(1e-2), np.log(10.0), 6)).astype("float32"))
    bn.moving_mean.assign(rng.normal(0.5, 1.0, 6).astype("float32"))
    bn.gamma.assign(rng.normal(0.0, 1.5, 6).astype("float32"))
    bn.beta.assign(rng.normal(1.0, 2.0, 6).astype("float32"))
    return model


def run(model, x):
    return np.asarray(model(x, training=False), "float64")


def rel_err(a, b):
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-12))


def manual_bias_fold(model, relu):
    pairs, folded = fold_all_batch_norms(model)
    sets = [(folded.get_layer("c1"), folded.get_layer("c2"))]
    scales = CrossLayerScaling.scale_cls_sets(sets)
    infos = CrossLayerScaling.create_cls_set_info_list(sets, scales, [relu])
    before = {n: folded.get_layer(n).bias.numpy().astype("float64").copy() for n in ("c1", "c2")}
    HighBiasFold.bias_fold(infos, pairs)
    return folded, HighBiasFold.last_result, np.asarray(scales[0], "float64"), before


def test_manual_bias_fold_declines_a_same_padded_layer2():
    _, result, _, _ = manual_bias_fold(pair_model(relu=True, k2=3, padding="same"), relu=True)
    assert not result.absorbed
    (declined,) = result.declined
    assert "pads its input" in declined.reason


def test_manual_bias_fold_matches_the_3_sigma_rule():
    """An independent computation of c = max(0, β/s − 3|γ/s|), b1 − c, b2 + Σ_k W2·c."""
    model = pair_model(relu=True, k2=3, padding="valid")
    gamma = model.get_layer("bn").gamma.numpy().astype("float64")
    beta = model.get_layer("bn").beta.numpy().astype("float64")
    folded, result, s, before = manual_bias_fold(model, relu=True)
    (absorbed,) = result.absorbed
    c = np.maximum(0.0, beta / s - 3 * np.abs(gamma / s))
    assert c.max() > 1e-2
    np.testing.assert_allclose(absorbed.amount, c, rtol=1e-5, atol=1e-6)
    w2 = folded.get_layer("c2").kernel.numpy().astype("float64")  # (kh, kw, I, O)
    np.testing.assert_allclose(folded.get_layer("c1").bias.numpy(), before["c1"] - c, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(folded.get_layer("c2").bias.numpy(), before["c2"] + w2.sum((0, 1)).T @ c,
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("pool", [
    lambda: L.AveragePooling2D(3, strides=1, padding="same", name="pool"),
    lambda: L.MaxPooling2D(3, strides=1, padding="same", name="pool"),
])
def test_absorption_through_same_pools_is_exact(pool):
    """Nothing ReLU-like between: all of β' moves, and the function is kept to float32 precision
    only if the pool's border outputs shift by exactly c (TF averages real inputs only)."""
    model = pair_model(mid=pool())
    x = np.random.default_rng(2).normal(size=(2, 7, 7, 3)).astype("float32")
    ref = run(model, x)
    eq, result = equalize_model(model, absorb_high_bias=True, return_result=True)
    assert len(result.high_bias.absorbed) == 1, result.explain()
    assert np.abs(result.high_bias.absorbed[0].amount).max() > 0.1
    assert rel_err(run(eq, x), ref) < 1e-5


def test_a_pair_given_twice_is_rejected():
    _, folded = fold_all_batch_norms(pair_model(relu=True))
    s = (folded.get_layer("c1"), folded.get_layer("c2"))
    before = [v.numpy().copy() for v in folded.weights]
    with pytest.raises(prequant.InvalidRequestError, match="again in set 2"):
        CrossLayerScaling.scale_cls_sets([s, s])
    for a, v in zip(before, folded.weights):
        assert np.array_equal(a, v.numpy())


def test_one_default_for_iterations_and_options_checked():
    assert DEFAULT_MAX_ITERATIONS == _core.DEFAULT_MAX_ITERATIONS == 100
    with pytest.raises(prequant.InvalidRequestError, match="max_iterations"):
        equalize_model(pair_model(relu=True), max_iterations=0)
