"""TFLite INT8 output SQNR of a Keras model equalized through x·g(x) activations, gated off vs on.

A small random conv/depthwise stack (3 × (conv → BN → act → depthwise → BN → act), conv, pool,
dense; kernels with per-channel spreads over two decades, random BN statistics: var in
[1e-2, 10], non-zero means, negative gamma) per activation, converted with the TFLite converter
to full integer (representative dataset: 24 random inputs), per-channel (the default) and
per-tensor (private ``_experimental_disable_per_channel``); SQNR of the logits against the
original Keras model's on 24 other inputs. Rows: the original, equalize_model with gated off
(batch norms folded; nothing scaled through the activations), and with gated on.

    PYTHONPATH=python python bench/keras_gated_tflite_int8.py [--seed N] [swish hard_swish gelu]

``--seed N`` draws another model (Keras seed N, kernels seed N, BN statistics seed N + 1) for a
second look at the same stack; without it, the table's model (seeds 3, 0, 1).
"""

from __future__ import annotations

import os
import sys

import keras
import numpy as np
import tensorflow as tf
from keras import layers as L

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests", "keras"))
from conftest import randomize_batch_norms  # noqa: E402
from test_keras_gated_activations import _randomize_kernels  # noqa: E402

from prequant.keras.cross_layer_equalization import equalize_model  # noqa: E402


def model(act: str, seed: int | None = None) -> keras.Model:
    keras.utils.set_random_seed(3 if seed is None else seed)
    inputs = keras.Input((12, 12, 3))
    x = inputs
    for c in (16, 16, 24):
        x = L.Activation(act)(L.BatchNormalization()(L.Conv2D(c, 3, padding="same")(x)))
        x = L.Activation(act)(L.BatchNormalization()(L.DepthwiseConv2D(3, padding="same")(x)))
    x = L.Conv2D(10, 1)(x)
    outputs = L.Dense(5)(L.GlobalAveragePooling2D()(x))
    kernel_seed, bn_seed = (0, 1) if seed is None else (seed, seed + 1)
    return randomize_batch_norms(_randomize_kernels(keras.Model(inputs, outputs), seed=kernel_seed), seed=bn_seed)


def sqnr_int8(m, data, ref, per_tensor: bool) -> float:
    converter = tf.lite.TFLiteConverter.from_keras_model(m)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: ([data[i:i + 1]] for i in range(24))
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    if per_tensor:
        converter._experimental_disable_per_channel = True
    it = tf.lite.Interpreter(model_content=converter.convert())
    it.allocate_tensors()
    inp, out = it.get_input_details()[0], it.get_output_details()[0]
    ys = []
    for row in data[24:]:
        it.set_tensor(inp["index"], row[None])
        it.invoke()
        ys.append(it.get_tensor(out["index"]).copy())
    y = np.concatenate(ys)
    return float(10 * np.log10(np.sum(ref ** 2) / np.sum((y - ref) ** 2)))


def main() -> None:
    args, seed = sys.argv[1:], None
    if args[:1] == ["--seed"]:
        seed, args = int(args[1]), args[2:]
    data = np.random.default_rng(0).normal(0, 1, (48, 12, 12, 3)).astype("float32")
    print("| activation | variant | INT8 per-channel | INT8 per-tensor |")
    print("|---|---|---:|---:|")
    for act in args or ["swish", "hard_swish", "gelu"]:
        m = model(act, seed)
        ref = m.predict(data[24:], verbose=0)
        variants = [("original", m), ("equalized, gated off", equalize_model(m)),
                    ("equalized, gated on", equalize_model(m, gated_activations=True))]
        for name, v in variants:
            print(f"| {act} | {name} | {sqnr_int8(v, data, ref, False):.1f} dB | "
                  f"{sqnr_int8(v, data, ref, True):.1f} dB |", flush=True)


if __name__ == "__main__":
    main()
