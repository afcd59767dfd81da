"""The Keras deployment path: a prepared + equalized model through the TFLite converter.

Before: nothing showed that a model prequant made converts to a full-integer .tflite at all.
After:  a small prepared + equalized model (conv → BN → ReLU6 → depthwise → BN → ReLU6 → conv
        → BN → pool → dense, random BN statistics) converts with a representative dataset,
        per-channel (the converter's default) and per-tensor (the converter's private switch
        ``_experimental_disable_per_channel``), into int8 builtin ops only, and runs in
        ``tf.lite.Interpreter`` with its output close to the Keras model's.

Known (issue 14 item 1): the 'bound' policy's BoundedReLU converts to CONV_2D with a fused RELU
followed by a separate MINIMUM, whose int8 output shares the conv's unclipped range, so the
conv+ReLU6 fusion of the original is lost (xfail below).
"""

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import randomize_batch_norms
from prequant.keras import prepare_model
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


def _convert(model, data, *, per_tensor: bool):
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: ([data[i:i + 1]] for i in range(12))
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    if per_tensor:
        converter._experimental_disable_per_channel = True  # private: TFLite has no public switch
    interpreter = tf.lite.Interpreter(model_content=converter.convert())
    interpreter.allocate_tensors()
    return interpreter


def _run(interpreter, data):
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    outputs = []
    for row in data:
        interpreter.set_tensor(inp["index"], row[None])
        interpreter.invoke()
        outputs.append(interpreter.get_tensor(out["index"]).copy())
    return np.concatenate(outputs)


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
    interpreter = _convert(new_model, data, per_tensor=per_tensor)
    ops = [op["op_name"] for op in interpreter._get_ops_details()]
    assert set(ops) <= INT8_OPS, ops
    assert {"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"} <= set(ops)
    assert interpreter.get_tensor_details()  # ran
    evaluation = data[12:]
    reference = np.asarray(model(evaluation, training=False))
    np.testing.assert_allclose(np.asarray(new_model(evaluation, training=False)), reference,
                               rtol=1e-4, atol=1e-4)  # the FP32 function is kept ('bound')
    assert _sqnr_db(reference, _run(interpreter, evaluation)) > 25.0


@pytest.mark.xfail(strict=True, reason="BoundedReLU converts to CONV_2D(RELU) + MINIMUM: the "
                   "conv+ReLU6 fusion is lost (issue 14 item 1)")
def test_bounded_relu_converts_without_a_separate_minimum(equalized):
    _, new_model = equalized
    interpreter = _convert(new_model, _data(), per_tensor=False)
    assert "MINIMUM" not in [op["op_name"] for op in interpreter._get_ops_details()]
