"""Shared weights through the Keras CLE API: the function is kept, or the call is refused.

Before: a variable held by two layers reached the engine as two copies; the in-place API wrote
        both back, the last one winning (CrossLayerScaling.scale_model: relative output error
        ~20 on the model below, with two sets reported scaled).
After:  equalize_model / fold_all_batch_norms write each layer's copy into the new model (output
        kept, checked with Keras' own forward pass); the in-place API refuses with a typed error
        naming the variable and the layers, and leaves the model as it was. A layer called twice
        is opaque to the engine, with the reason in ``explain()``.
"""

import keras
import numpy as np
import prequant
import pytest
from prequant.keras.batch_norm_fold import fold_all_batch_norms
from prequant.keras.cross_layer_equalization import CrossLayerScaling, equalize_model


def _outputs(model, x):
    return [np.asarray(o, "float64") for o in keras.tree.flatten(model(x, training=False))]


def _assert_kept(model, new_model, x, rtol=1e-5):
    for got, want in zip(_outputs(new_model, x), _outputs(model, x), strict=True):
        assert np.abs(got - want).max() <= rtol * np.abs(want).max(), np.abs(got - want).max()


def _shared_kernel_model(helpers):
    """c1 → BN → ReLU → c5 → ReLU → c4, and c2 (holding c1's kernel variable) → BN on its own."""
    inp = keras.Input((8, 8, 4))
    c1 = keras.layers.Conv2D(4, 1, name="c1")
    c2 = keras.layers.Conv2D(4, 1, name="c2")
    a = keras.layers.ReLU()(keras.layers.BatchNormalization(name="bn1")(c1(inp)))
    y = keras.layers.Conv2D(5, 1, name="c5")(a)
    y = keras.layers.Conv2D(3, 1, name="c4")(keras.layers.ReLU()(y))
    b = keras.layers.BatchNormalization(name="bn2")(c2(inp))
    model = keras.Model(inp, [b, y])
    c2._tracker.unlock()
    c2._kernel = c1._kernel  # one variable, two layers
    c2._tracker.lock()
    rng = np.random.default_rng(0)
    c1._kernel.assign((rng.normal(size=(1, 1, 4, 4)) * [1e-2, 1.0, 10.0, 100.0]).astype("float32"))
    helpers.randomize_batch_norms(model)
    assert c1.kernel is c2.kernel
    return model


def _data(shape=(2, 8, 8, 4)):
    return np.random.default_rng(1).normal(size=shape).astype("float32")


def test_equalize_model_keeps_the_output_with_a_shared_kernel(helpers):
    model = _shared_kernel_model(helpers)
    x = _data()
    new_model, result = equalize_model(model, return_result=True)
    assert len(result.fold.folded) == 2 and result.cls.sets  # both BNs folded, c1 scaled
    _assert_kept(model, new_model, x)
    _, folded = fold_all_batch_norms(model)
    _assert_kept(model, folded, x)


def test_in_place_scaling_of_a_shared_kernel_is_refused_and_changes_nothing(helpers):
    _, model = fold_all_batch_norms(_shared_kernel_model(helpers))
    c1, c2 = model.get_layer("c1"), model.get_layer("c2")
    c2._tracker.unlock()
    c2._kernel = c1._kernel  # the folded model's c1 and c2 are new layers: share again
    c2._tracker.lock()
    x = _data()
    before = _outputs(model, x)
    weights = [np.array(w.numpy()) for w in model.weights]
    with pytest.raises(prequant.UnsupportedError, match=r"shared by layers \['c1', 'c2'\]"):
        CrossLayerScaling.scale_model(model)
    for w, old in zip(model.weights, weights, strict=True):
        np.testing.assert_array_equal(np.asarray(w.numpy()), old)
    for got, want in zip(_outputs(model, x), before, strict=True):
        np.testing.assert_array_equal(got, want)


def test_layer_called_twice_is_opaque_and_the_output_kept(helpers):
    inp = keras.Input((8, 8, 3))
    conv = keras.layers.Conv2D(6, 3, padding="same", name="shared_conv")
    a = keras.layers.ReLU()(keras.layers.BatchNormalization()(conv(inp)))
    b = keras.layers.ReLU()(keras.layers.BatchNormalization()(conv(a[..., :3])))
    model = keras.Model(inp, keras.layers.Conv2D(4, 1)(b))
    helpers.randomize_batch_norms(model)
    with pytest.warns(UserWarning, match="'shared_conv': Conv2D called at 2 places .*prepare_model"):
        new_model, result = equalize_model(model, return_result=True)
    _assert_kept(model, new_model, _data((2, 8, 8, 3)))
    assert "Opaque 'shared_conv'" in result.explain()
