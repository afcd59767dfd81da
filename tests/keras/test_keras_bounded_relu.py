"""Keras BoundedReLU = min(relu6(x), upper[c]) (the 'bound' policy's fusable form); configs saved
before ``max_value`` existed load as the plain min(relu(x), upper) they computed."""

import numpy as np
from prequant.keras.activations import BoundedReLU


def test_relu6_then_per_channel_min_and_config_round_trip():
    upper = np.array([0.5, 3.0, 6.0], "float32")
    layer = BoundedReLU(upper, max_value=6.0)
    x = np.random.default_rng(0).normal(0, 10, (2, 4, 4, 3)).astype("float32")
    expected = np.minimum(np.clip(x, 0, 6), upper)
    np.testing.assert_array_equal(np.asarray(layer(x)), expected)
    again = BoundedReLU.from_config(layer.get_config())
    assert again.max_value == 6.0
    np.testing.assert_array_equal(np.asarray(again(x)), expected)


def test_a_config_saved_before_max_value_existed_keeps_its_function():
    upper = np.array([0.5, 7.0, 30.0], "float32")
    config = BoundedReLU(upper).get_config()
    config.pop("max_value")  # as saved by an older prequant
    old = BoundedReLU.from_config(config)
    assert old.max_value is None
    x = np.random.default_rng(1).normal(0, 20, (2, 4, 4, 3)).astype("float32")
    np.testing.assert_array_equal(np.asarray(old(x)), np.minimum(np.maximum(x, 0), upper))
