"""The Keras deployment path: a prepared + equalized model through the TFLite converter.

Before: nothing showed that a model prequant made converts to a full-integer .tflite at all.
After:  a small prepared + equalized model (conv → BN → ReLU6 → depthwise → BN → ReLU6 → conv
        → BN → pool → dense, random BN statistics) converts with a representative dataset,
        per-channel (the converter's default) and per-tensor (the converter's private switch
        ``_experimental_disable_per_channel``), into int8 builtin ops only, and runs in
        ``tf.lite.Interpreter`` with its output close to the Keras model's.

The 'bound' policy's BoundedReLU (min(relu6(x), upper), every bound <= 6) converts to CONV_2D
with the original's fused RELU6 followed by a MINIMUM (issue 14 item 1; it used to be a fused
RELU, whose int8 output kept the conv's unclipped range).
"""

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import randomize_batch_norms
from prequant.keras import prepare_model
from prequant.demo._tflite import convert_int8, ops_with_fused_activation, run_tflite
from prequant.keras.cross_layer_equalization import equalize_model

INT8_OPS = {"QUANTIZE", "DEQUANTIZE", "CONV_2D", "DEPTHWISE_CONV_2D", "MINIMUM", "MEAN",
            "FULLY_CONNECTED", "DELEGATE"}


def _model():
    inputs = keras.Input((12, 12, 3))
    x = keras.layers.Conv2D(8, 3, padding="same")(inputs)
    x = keras.layers.ReLU(6.0)(keras.layers.BatchNormalization()(x))
    x = keras.layers.DepthwiseConv2D(3, padding="same")(x)
    x = keras.layers.ReLU(6.0)(keras.layers.BatchNormalization()(x))
    x = keras.layers.BatchNormalization()(keras.layers.Conv2D(8, 1)(x))
    outputs = keras.layers.Dense(5)(keras.layers.GlobalAveragePooling2D()(x))
    return randomize_batch_norms(keras.Model(inputs, outputs))


def _data():
    return np.random.default_rng(0).normal(size=(24, 12, 12, 3)).astype("float32")


def _sqnr_db(reference, actual):
    return 10 * np.log10(np.sum(reference ** 2) / np.sum((actual - reference) ** 2))


@pytest.fixture(scope="module")
def equalized():
    keras.utils.set_random_seed(7)
    model = _model()
    return model, equalize_model(prepare_model(model))


@pytest.mark.parametrize("per_tensor", [False, True], ids=["per_channel", "per_tensor"])
def test_prepared_equalized_model_converts_to_full_integer_tflite(equalized, per_tensor):
    model, new_model = equalized
    data = _data()
    content = convert_int8(new_model, data[:12], per_tensor=per_tensor)
    interpreter = tf.lite.Interpreter(model_content=content)
    ops = [op["op_name"] for op in interpreter._get_ops_details()]
    assert set(ops) <= INT8_OPS, ops
    assert {"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"} <= set(ops)
    evaluation = data[12:]
    reference = np.asarray(model(evaluation, training=False))
    np.testing.assert_allclose(np.asarray(new_model(evaluation, training=False)), reference,
                               rtol=1e-4, atol=1e-4)  # the FP32 function is kept ('bound')
    assert _sqnr_db(reference, run_tflite(content, evaluation)) > 25.0


def test_bounded_relu_keeps_the_conv_relu6_fusion(equalized):
    """BoundedReLU = min(relu6(x), upper) with every bound <= 6 (the engine's gauge): the converter
    fuses the ReLU6 into the conv before it, as in the original model, and the per-channel bound
    is a MINIMUM after it, so the conv's int8 output range is [0, 6], not its unclipped range."""
    model, new_model = equalized
    bounded = [layer for layer in new_model.layers if type(layer).__name__ == "BoundedReLU"]
    assert len(bounded) == 2
    for layer in bounded:
        assert layer.max_value == 6.0
        upper = np.asarray(layer.upper.numpy())
        assert upper.max() <= 6.0 * (1 + 1e-6) and upper.max() >= 6.0 * (1 - 1e-6)
    data = _data()

    def converted(m):
        return ops_with_fused_activation(convert_int8(m, data[:12]))

    original = [(op, act) for op, act in converted(model) if act is not None]
    assert [act for _, act in original] == ["RELU6", "RELU6", "NONE"]  # the original's fusion
    ops = converted(new_model)
    assert [(op, act) for op, act in ops if act is not None] == original
    for k, (op, act) in enumerate(ops):
        if act == "RELU6":
            assert ops[k + 1][0] == "MINIMUM", ops  # the per-channel bound, after the fused ReLU6
