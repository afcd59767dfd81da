"""A Keras transform that fails midway leaves the model exactly as it was.

Before: a small functional model — conv→BN→ReLU→depthwise→BN→ReLU6→conv→BN, then a Dense
        pair — with random BN statistics (var in [1e-2, 10], non-zero means, negative γ).
After:  for every n from 0 up to the number of parameter writes the engine makes, the n-th
        write is made to fail (``_core._set_fail_after_writes``): the transform raises the
        typed error and every weight of the model is bit-identical to before, its layers and
        their configs unchanged. With n past the last write the transform runs clean, and the
        result matches the original model's Keras forward pass.

One model per test, reused for every n (a failed transform must not change it; Keras is slow
to build models).
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
from keras import layers as L

from prequant import _core
from prequant.keras.batch_norm_fold import fold_all_batch_norms
from prequant.keras.cross_layer_equalization import (
    CrossLayerScaling,
    HighBiasFold,
    equalize_model,
    replace_relu6_with_relu,
)

from conftest import random_inputs, randomize_batch_norms

MAX_WRITES = 2000  # far above what these models need: guards against a loop that never ends


def make_model() -> keras.Model:
    x = keras.Input((10, 10, 3))
    y = L.Conv2D(8, 3, padding="same", use_bias=False, name="conv1")(x)
    y = L.BatchNormalization(name="bn1")(y)
    y = L.ReLU(name="relu1")(y)
    y = L.DepthwiseConv2D(3, padding="same", name="dw")(y)
    y = L.BatchNormalization(name="bn2")(y)
    y = L.ReLU(max_value=6.0, name="relu6")(y)
    y = L.Conv2D(12, 1, name="conv3")(y)
    y = L.BatchNormalization(name="bn3")(y)
    y = L.GlobalAveragePooling2D(name="gap")(y)
    y = L.Dense(16, name="fc1")(y)
    y = L.ReLU(name="relu_fc")(y)
    y = L.Dense(5, name="fc2")(y)
    return randomize_batch_norms(keras.Model(x, y), seed=3)


def snapshot(model: keras.Model):
    layers = [(layer.name, type(layer).__name__, repr(layer.get_config())) for layer in model.layers]
    weights = [(layer.name, [np.array(w, copy=True) for w in layer.get_weights()]) for layer in model.layers]
    return layers, weights


def assert_unchanged(model: keras.Model, snap) -> None:
    layers, weights = snap
    assert [(layer.name, type(layer).__name__, repr(layer.get_config())) for layer in model.layers] == layers
    for layer, (name, before) in zip(model.layers, weights, strict=True):
        now = layer.get_weights()
        assert len(now) == len(before), f"{name}: a variable was added or removed"
        for w, b in zip(now, before, strict=True):
            assert w.dtype == b.dtype and w.shape == b.shape, name
            assert np.array_equal(w, b), f"{name}: a weight changed"
            assert w.tobytes() == b.tobytes(), f"{name}: a weight changed (bit pattern)"


def run_with_failure_at_every_write(model: keras.Model, transform, *, models=()):
    """transform(model) with the n-th engine write failing, for n = 0, 1, ... until it runs clean.
    Checks `model` (and any other `models` the transform may write to) after every failure.
    Returns (what the clean run returned, how many writes it made)."""
    watched = [model, *models]
    snaps = [snapshot(m) for m in watched]
    try:
        for n in range(MAX_WRITES):
            _core._set_fail_after_writes(n)
            try:
                out = transform(model)
            except _core.Error as e:
                assert "injected failure" in str(e), e
            else:
                writes = _core._writes_seen()
                assert writes == n > 0, f"ran clean with {writes} writes when failing at write {n}"
                return out, writes
            finally:
                _core._set_fail_after_writes(-1)
            for m, snap in zip(watched, snaps, strict=True):
                assert_unchanged(m, snap)
    finally:
        _core._set_fail_after_writes(-1)
    raise AssertionError(f"the transform still failed after {MAX_WRITES} writes")


def rel_err(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-12))


def forward(model, x) -> np.ndarray:
    return np.asarray(model(x, training=False))


@pytest.fixture(scope="module")
def original():
    keras.utils.set_random_seed(7)
    model = make_model()
    x = random_inputs(model.inputs[0], batch=4, seed=1)
    return model, x, forward(model, x), snapshot(model)


@pytest.fixture
def folded(original):
    """A new model with the batch norms folded (and the pairs, for HighBiasFold)."""
    model, x, expected, _ = original
    pairs, new_model = fold_all_batch_norms(model)
    return new_model, pairs, x, expected


# ---- transforms that return a new model -----------------------------------------------------

@pytest.mark.parametrize("transform, replaced, tolerance", [
    (lambda m: fold_all_batch_norms(m)[1], False, 1e-4),
    (lambda m: equalize_model(m, relu6="bound", absorb_high_bias=False), False, 1e-4),
    (lambda m: equalize_model(m, relu6="bound"), False, 5e-2),  # the 3σ rule is approximate
    (lambda m: equalize_model(m, relu6="replace"), True, 5e-2),
], ids=["fold_all_batch_norms", "equalize_bound_no_hbf", "equalize_bound", "equalize_replace"])
def test_new_model_transforms_fail_cleanly_at_every_write(original, transform, replaced, tolerance):
    model, x, expected, snap = original
    new_model, writes = run_with_failure_at_every_write(model, transform)
    assert new_model is not model
    assert not any(isinstance(layer, L.BatchNormalization) for layer in new_model.layers)
    if replaced:  # compare with the original function under the 'replace' policy
        expected = forward(replace_relu6_with_relu(model)[0], x)
    assert rel_err(forward(new_model, x), expected) < tolerance, writes
    assert_unchanged(model, snap)  # the clean run did not touch the original either


# ---- in-place transforms ----------------------------------------------------------------------

def test_scale_model_fails_cleanly_at_every_write(folded):
    model, _, x, expected = folded
    infos, writes = run_with_failure_at_every_write(model, CrossLayerScaling.scale_model)
    assert infos, "nothing was scaled: the test would prove nothing"
    assert rel_err(forward(model, x), expected) < 1e-4, writes


@pytest.mark.parametrize("with_model", [True, False], ids=["checked_against_model", "layers_only"])
def test_scale_cls_sets_fails_cleanly_at_every_write(folded, with_model):
    model, _, x, expected = folded
    sets = [(model.get_layer("conv1"), model.get_layer("dw")), (model.get_layer("fc1"), model.get_layer("fc2"))]
    scales, writes = run_with_failure_at_every_write(
        model, lambda m: CrossLayerScaling.scale_cls_sets(sets, model=m if with_model else None))
    assert len(scales) == 2
    assert not np.allclose(scales[0], 1.0), "the pair's ranges were already equal: nothing was tested"
    assert rel_err(forward(model, x), expected) < 1e-4, writes


def test_bias_fold_fails_cleanly_at_every_write(folded):
    model, pairs, x, expected = folded
    infos = CrossLayerScaling.scale_model(model)
    scaled = forward(model, x)
    assert rel_err(scaled, expected) < 1e-4
    _, writes = run_with_failure_at_every_write(model, lambda m: HighBiasFold.bias_fold(infos, pairs))
    absorbed = HighBiasFold.last_result.absorbed
    assert absorbed, "no bias was absorbed: the test would prove nothing"
    assert writes >= 2 * len(absorbed)  # each absorption writes two biases
    assert rel_err(forward(model, x), expected) < 5e-2
