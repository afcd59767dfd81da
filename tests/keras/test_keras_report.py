"""prequant.write_report on a Keras model: the baseline is the model with its batch norms folded
(against the fold formula applied by hand to the kernels), "after" is the front end's
equalize_model, the Keras layouts (Conv2D, DepthwiseConv2D, Dense) give per-output-channel
statistics, and the model given is left as it was."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
from keras import layers as L

import prequant
from prequant.keras.cross_layer_equalization import equalize_model


def block_model():
    x = keras.Input((8, 8, 3))
    y = L.ReLU(6.0)(L.BatchNormalization(name="bn1")(L.Conv2D(8, 3, padding="same", name="conv1")(x)))
    y = L.ReLU()(L.BatchNormalization(name="bn2")(L.DepthwiseConv2D(3, padding="same", name="dw")(y)))
    y = L.BatchNormalization(name="bn3")(L.Conv2D(12, 1, name="pw")(y))
    y = L.Dense(5, name="fc")(L.GlobalAveragePooling2D()(y))
    return keras.Model(x, y)


def out_ranges(kernel: np.ndarray) -> np.ndarray:
    """max |W| per output channel of a Conv2D (kh, kw, I, O) or Dense (I, O) kernel: the last axis."""
    k = np.asarray(kernel, dtype=np.float64)
    return np.abs(k.reshape(-1, k.shape[-1])).max(axis=0)


def depthwise_out_ranges(kernel: np.ndarray) -> np.ndarray:
    """The same for a DepthwiseConv2D kernel (kh, kw, C, M): output channel c·M + m."""
    k = np.asarray(kernel, dtype=np.float64)
    return np.abs(k.reshape(-1, k.shape[-2] * k.shape[-1])).max(axis=0)


def test_keras_block_report(tmp_path, helpers):
    model = helpers.randomize_batch_norms(block_model())
    weights = [w.copy() for w in model.get_weights()]
    # DFQ's criterion: the weight ranges line up (checked below; the default also weighs activations)
    report = prequant.write_report(model, tmp_path, max_layer_plots=2, scale_criterion="weights")
    for a, b in zip(model.get_weights(), weights, strict=True):
        np.testing.assert_array_equal(a, b)

    assert [l.name for l in report.before.layers] == ["conv1", "dw", "pw", "fc"]
    assert report.before.layer("dw").depthwise and report.before.layer("fc").kind == "linear"
    # Baseline: conv → BN folded, so each output channel's range scales by |γ/σ|.
    for conv, bn, ranges in (("conv1", "bn1", out_ranges), ("dw", "bn2", depthwise_out_ranges),
                             ("pw", "bn3", out_ranges)):
        bn_layer = model.get_layer(bn)
        s = np.abs(bn_layer.gamma.numpy().astype(np.float64)
                   / np.sqrt(bn_layer.moving_variance.numpy().astype(np.float64) + bn_layer.epsilon))
        expected = ranges(model.get_layer(conv).kernel.numpy()) * s
        np.testing.assert_allclose(report.before.layer(conv).range, expected, rtol=1e-5)
    np.testing.assert_allclose(report.before.layer("fc").range, out_ranges(model.get_layer("fc").kernel.numpy()),
                               rtol=1e-6)
    # After: the front end's equalized model.
    equalized = equalize_model(model, scale_criterion="weights")
    for name, ranges in (("conv1", out_ranges), ("dw", depthwise_out_ranges), ("pw", out_ranges)):
        np.testing.assert_allclose(report.after.layer(name).range,
                                   ranges(equalized.get_layer(name).kernel.numpy()), rtol=1e-5)
    for name in ("conv1", "dw"):
        assert report.after.layer(name).range_ratio < report.before.layer(name).range_ratio / 3, name

    assert len(report.images) == 3
    assert all(Path(p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in report.images)
    html = Path(report.html).read_text(encoding="utf-8")
    assert "http:" not in html and "https:" not in html  # (":" is not a base64 character)
