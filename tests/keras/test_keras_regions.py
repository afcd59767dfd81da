"""Equalization regions through the Keras front end: Add, Concatenate (channel axis),
UpSampling2D and GlobalAveragePooling2D join regions; the new model's output equals the
original's, and the regions are the ones the torch and ONNX front ends find for the same net."""

import keras
import numpy as np
from keras import layers as L

from prequant.keras.cross_layer_equalization import equalize_model


def build():
    x = keras.Input((8, 8, 3))
    s = L.Conv2D(6, 3, padding="same", name="c0")(x)
    y = L.Conv2D(6, 3, padding="same", activation="relu", name="ca")(s)
    y = L.Conv2D(6, 1, name="cb")(y)
    s = L.Add(name="add")([s, y])
    p = L.MaxPooling2D(1, name="mp")(s)
    z = L.Conv2D(4, 1, name="cz")(s)
    y = L.Concatenate(name="cat")([z, p])
    y = L.UpSampling2D(2, name="up")(y)
    y = L.Conv2D(5, 3, padding="same", name="c1")(y)
    out = L.Dense(3, name="fc")(L.GlobalAveragePooling2D(name="gap")(y))
    return keras.Model(x, out)


def test_keras_regions_keep_output():
    model = build()
    rng = np.random.default_rng(0)
    for layer in model.layers:
        if layer.name in ("c0", "cb"):  # an imbalance for the regions to remove
            k, b = layer.get_weights()
            f = np.exp(rng.uniform(-3, 3, k.shape[-1])).astype("float32")
            layer.set_weights([k * f, b * f])
    x = rng.normal(size=(2, 8, 8, 3)).astype("float32")
    ref = model.predict(x, verbose=0)
    new, result = equalize_model(model, regions=True, return_result=True)
    out = new.predict(x, verbose=0)
    assert np.max(np.abs(out - ref)) / np.max(np.abs(ref)) < 1e-5
    regions = sorted((sorted(r.sources), sorted(r.sinks)) for r in result.regions.regions)
    # the stream (c0 + cb) reaches c1 both through cz and through the pooled copy in the concat:
    # one region; c1 → gap → fc is a chain
    assert regions == [(["c0", "cb", "cz"], ["c1", "ca", "cz"])], \
        (regions, [d.reason for d in result.regions.declined])
    assert [s.layers for s in result.cls.sets] == [["ca", "cb"], ["c1", "fc"]]
