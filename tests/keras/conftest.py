"""Shared helpers for the Keras front-end tests.

Before: each test would build random inputs, set BN statistics and compare outputs itself.
After:  one place for realistic values (random BN statistics with var in [1e-2, 10], non-zero
        means, negative gamma) and for the output comparison in inference, handed to tests
        as fixtures (``helpers.randomize_batch_norms`` ...).
"""

from __future__ import annotations

import types

import keras
import numpy as np
import pytest


@pytest.fixture(autouse=True)
def _seeded():
    keras.utils.set_random_seed(1234)
    yield


def randomize_batch_norms(model, seed=0):
    """Give every BatchNormalization in ``model`` (nested too) non-trivial statistics."""
    rng = np.random.default_rng(seed)
    for layer in model._flatten_layers(include_self=True, recursive=True):
        if isinstance(layer, keras.layers.BatchNormalization) and layer.built:
            channels = layer.moving_mean.shape
            layer.moving_mean.assign(rng.normal(0.5, 1.0, channels).astype("float32"))
            layer.moving_variance.assign(
                np.exp(rng.uniform(np.log(1e-2), np.log(10.0), channels)).astype("float32"))
            if layer.gamma is not None:
                layer.gamma.assign(rng.normal(0.0, 1.5, channels).astype("float32"))
            if layer.beta is not None:
                layer.beta.assign(rng.normal(0.0, 1.0, channels).astype("float32"))
    return model


def random_inputs(model_inputs, batch=2, seed=0):
    """Random arrays for a list (or one) of KerasTensors; int inputs get small ids."""
    rng = np.random.default_rng(seed)
    single = not isinstance(model_inputs, (list, tuple))
    arrays = []
    for x in [model_inputs] if single else model_inputs:
        shape = tuple(batch if d is None else d for d in x.shape)
        if "int" in str(x.dtype):
            arrays.append(rng.integers(0, 10, shape).astype(str(x.dtype)))
        else:
            arrays.append(rng.normal(size=shape).astype(str(x.dtype)))
    return arrays[0] if single else arrays


def assert_same_outputs(original, prepared, inputs, atol=1e-5, rtol=1e-5):
    """Both models agree in inference on ``inputs``."""
    expected = keras.tree.flatten(original(inputs, training=False))
    actual = keras.tree.flatten(prepared(inputs, training=False))
    assert len(expected) == len(actual)
    for e, a in zip(expected, actual, strict=True):
        e, a = np.asarray(e), np.asarray(a)
        assert e.shape == a.shape
        np.testing.assert_allclose(a, e, atol=atol, rtol=rtol)


def layer_classes(model):
    return [type(layer).__name__ for layer in model.layers]


@pytest.fixture
def helpers():
    return types.SimpleNamespace(
        randomize_batch_norms=randomize_batch_norms,
        random_inputs=random_inputs,
        assert_same_outputs=assert_same_outputs,
        layer_classes=layer_classes,
    )
