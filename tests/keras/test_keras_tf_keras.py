"""tf_keras (Keras 2) models for tfmot users (issue 14 item 2).

Before: every prequant.keras entry point refused a tf_keras model; tfmot's quantize_model refuses
        a model whose custom layers nest built-in layers (the tfmot request's SampleNestedLayer:
        conv + BN inside a custom layer) or reuse them (a block called twice).
After:  prepare_model returns a tf_keras functional model of built-in layers, each used once,
        with the original's output; tfmot.quantization.keras.quantize_model accepts it.
        fold_all_batch_norms and equalize_model take and return tf_keras models with the output
        kept. A custom layer with weights of its own stays opaque, with its reason (strict=True
        refuses it, naming the layer and the fix). The entry points that remain Keras 3 only
        name the model as tf_keras.

tfmot sets TF_USE_LEGACY_KERAS=1 when imported; the fixture restores the variable, so the rest
of this Keras 3 pytest process sees the environment it started with (tfmot itself uses tf_keras
directly once imported).
"""

import os
import warnings

import numpy as np
import prequant
import pytest
import tensorflow as tf

tf_keras = pytest.importorskip("tf_keras")
from prequant.keras import PrepareError, prepare_model, prepare_model_with_report  # noqa: E402
from prequant.keras.batch_norm_fold import find_batch_norm_folds, fold_all_batch_norms  # noqa: E402
from prequant.keras.cross_layer_equalization import (  # noqa: E402
    CrossLayerScaling,
    equalize_model,
    replace_relu6_with_relu,
)

L = tf_keras.layers


@pytest.fixture(scope="module")
def tfmot():
    saved = os.environ.get("TF_USE_LEGACY_KERAS")
    try:
        module = pytest.importorskip("tensorflow_model_optimization")
    finally:
        if saved is None:
            os.environ.pop("TF_USE_LEGACY_KERAS", None)
        else:
            os.environ["TF_USE_LEGACY_KERAS"] = saved
    return module


# ---- models -------------------------------------------------------------------------------------

class SampleNestedLayer(L.Layer):
    """The tfmot request's example, as written there."""

    def __init__(self, *args, **kwds):
        super().__init__(*args, **kwds)
        self.conv = L.Conv2D(16, 3, padding="valid")
        self.norm = L.BatchNormalization()

    def call(self, x):
        return self.norm(self.conv(x))


class Inner(L.Layer):
    """conv → BN → relu, plus a residual: sublayers and raw TF ops."""

    def __init__(self, channels, **kwargs):
        super().__init__(**kwargs)
        self.conv = L.Conv2D(channels, 3, padding="same")
        self.bn = L.BatchNormalization()

    def call(self, x, training=None):
        return tf.nn.relu(self.bn(self.conv(x), training=training)) + x


class Outer(L.Layer):
    """Two levels: a custom layer holding two custom layers, joined by tf.concat."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.first = Inner(8)
        self.second = Inner(8)

    def call(self, x):
        return tf.concat([self.second(self.first(x)), x], axis=-1)


class Scaled(L.Layer):
    """A custom layer with a weight of its own used in call(): tfmot cannot quantize it."""

    def build(self, input_shape):
        self.scale = self.add_weight(name="scale", shape=(input_shape[-1],), initializer="ones")

    def call(self, x):
        return x * self.scale


class SubclassedTwice(tf_keras.Model):
    def __init__(self):
        super().__init__(name="subclassed_twice")
        self.block = Outer()
        self.mix = L.Conv2D(8, 1)

    def call(self, x):
        return self.block(self.mix(self.block(x)))


def _randomize(model, seed=0):
    """Realistic BN statistics: var in [1e-2, 10], non-zero mean, some negative gamma."""
    rng = np.random.default_rng(seed)
    for layer in model.submodules:
        if isinstance(layer, L.BatchNormalization) and layer.built:
            c = layer.moving_mean.shape[0]
            layer.set_weights([rng.uniform(-2.0, 2.0, c), rng.normal(0.0, 1.0, c),
                               rng.normal(0.5, 1.0, c), rng.uniform(1e-2, 10.0, c)])
    for layer in model.submodules:
        if isinstance(layer, Scaled) and layer.built:
            layer.set_weights([rng.uniform(0.5, 2.0, w.shape) for w in layer.get_weights()])
    return model


def request_example():
    x = tf_keras.Input((16, 16, 3))
    return _randomize(tf_keras.Model(x, L.ReLU()(SampleNestedLayer()(x)), name="request_example"))


def nested_twice():
    x = tf_keras.Input((12, 12, 8))
    block = Outer()
    y = block(L.Conv2D(8, 1)(block(x)))  # the same two-level block, called twice
    return _randomize(tf_keras.Model(x, y, name="nested_twice"))


def subclassed_twice():
    model = SubclassedTwice()
    model(np.zeros((1, 12, 12, 8), "float32"))
    return _randomize(model)


def _data(shape, seed=1):
    return np.random.default_rng(seed).normal(0.0, 1.0, (2, *shape)).astype("float32")


def _assert_same_output(original, new, data, rtol=1e-5):
    a = np.asarray(original(data, training=False))
    b = np.asarray(new(data, training=False))
    assert a.shape == b.shape
    assert np.max(np.abs(a - b)) <= rtol * max(np.max(np.abs(a)), 1.0), np.max(np.abs(a - b))


def _quantize_fails(tfmot, model, *custom):
    with tfmot.quantization.keras.quantize_scope({c.__name__: c for c in custom}):
        with pytest.raises(Exception):
            tfmot.quantization.keras.quantize_model(model)


# ---- prepare_model → tfmot ---------------------------------------------------------------------

CASES = {
    "request_example": (request_example, None, (16, 16, 3), (SampleNestedLayer,)),
    "nested_twice": (nested_twice, None, (12, 12, 8), (Outer, Inner)),
    "subclassed_twice": (subclassed_twice, (12, 12, 8), (12, 12, 8), (SubclassedTwice, Outer, Inner)),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_prepared_tf_keras_model_quantizes_with_tfmot_where_the_original_fails(case, tfmot):
    build, input_shape, data_shape, custom = CASES[case]
    model = build()
    if case != "subclassed_twice":  # a subclassed model is no functional model tfmot could take at all
        _quantize_fails(tfmot, model, *custom)
    data = _data(data_shape)
    expected = np.asarray(model(data, training=False))

    input_layer = None if input_shape is None else tf_keras.Input(input_shape)
    prepared, report = prepare_model_with_report(model, input_layer)

    assert isinstance(prepared, tf_keras.Model) and prepared._is_graph_network
    for layer in prepared.layers:
        assert type(layer).__module__.startswith("tf_keras."), layer  # built-in only: nothing nested
        assert len(layer._inbound_nodes) == 1, layer.name  # nothing reused (ModelTransformer's limit)
    assert not any(type(layer).__name__ == "TFOpLambda" for layer in prepared.layers)
    assert all(v.status == "copied" for v in report.variables), report.summary()
    if case != "request_example":
        assert {"unrolled", "op"} <= {r.kind for r in report.layers}, report.summary()
    _assert_same_output(model, prepared, data)
    np.testing.assert_array_equal(np.asarray(model(data, training=False)), expected)  # original untouched

    quantized = tfmot.quantization.keras.quantize_model(prepared)
    wrapped = [type(layer).__name__ for layer in quantized.layers]
    assert "QuantizeWrapperV2" in wrapped, wrapped
    out = np.asarray(quantized(data, training=False))
    assert out.shape == expected.shape and np.isfinite(out).all()


# ---- fold_all_batch_norms / equalize_model -----------------------------------------------------

def _chain():
    x = tf_keras.Input((10, 10, 3))
    y = L.Conv2D(8, 3, padding="same", use_bias=False)(x)
    y = L.ReLU()(L.BatchNormalization()(y))
    y = L.DepthwiseConv2D(3, padding="same")(y)
    y = L.ReLU(6.0)(L.BatchNormalization()(y))
    y = L.Conv2D(6, 1)(y)
    y = L.Dense(4)(L.GlobalAveragePooling2D()(y))
    return _randomize(tf_keras.Model(x, y, name="chain"))


def test_fold_all_batch_norms_on_tf_keras_returns_tf_keras_with_output_kept():
    model = _chain()
    data = _data((10, 10, 3))
    expected = np.asarray(model(data, training=False))
    pairs, folded, result = fold_all_batch_norms(model, return_result=True)
    assert isinstance(folded, tf_keras.Model) and len(result.folded) == 2
    assert not any(isinstance(layer, L.BatchNormalization) for layer in folded.layers)
    for layer, bn in pairs:  # the new tf_keras layer, the original tf_keras BN
        assert layer in folded.layers and bn in model.layers and isinstance(bn, L.BatchNormalization)
    _assert_same_output(model, folded, data)
    np.testing.assert_array_equal(np.asarray(model(data, training=False)), expected)


def _fused():
    """Fused activations, a separable conv (two weights, initializers Keras 3 names otherwise),
    a transposed conv, Dense after Flatten."""
    x = tf_keras.Input((10, 10, 3))
    y = L.Conv2D(6, 3, activation="relu6", kernel_regularizer="l2")(x)
    y = L.BatchNormalization()(L.SeparableConv2D(5, 3, padding="same")(y))
    y = L.Conv2DTranspose(4, 2, strides=2, activation="relu")(y)
    y = L.Dense(2)(L.Dense(3, activation="relu")(L.Flatten()(y)))
    return _randomize(tf_keras.Model(x, y, name="fused"))


@pytest.mark.parametrize("relu6", ["bound", "skip"])
@pytest.mark.parametrize("build", [_chain, _fused], ids=lambda f: f.__name__)
def test_equalize_model_on_tf_keras_keeps_output_and_scales(build, relu6):
    model = build()
    data = _data((10, 10, 3))
    equalized, result = equalize_model(model, relu6=relu6, return_result=True)
    assert isinstance(equalized, tf_keras.Model)
    assert len(result.cls.sets) >= 1, result.explain()
    _assert_same_output(model, equalized, data)
    names = [type(layer).__name__ for layer in equalized.layers]
    if build is _chain:
        assert ("TFKerasBoundedReLU" in names) == (relu6 == "bound"), names


def test_equalized_tf_keras_model_saves_and_loads(tmp_path):
    import prequant.keras

    model = _chain()
    equalized = equalize_model(model)  # relu6='bound': holds a TFKerasBoundedReLU
    path = str(tmp_path / "equalized.keras")
    equalized.save(path)
    loaded = tf_keras.models.load_model(
        path, custom_objects={"TFKerasBoundedReLU": prequant.keras.TFKerasBoundedReLU})
    assert any(type(layer).__name__ == "TFKerasBoundedReLU" for layer in loaded.layers)
    _assert_same_output(model, loaded, _data((10, 10, 3)))


def test_prepare_equalize_quantize_the_nested_model_end_to_end(tfmot):
    model = nested_twice()
    data = _data((12, 12, 8))
    equalized, result = equalize_model(prepare_model(model), return_result=True)
    assert len(result.fold.folded) == 4, result.explain()  # every unrolled conv → BN
    _assert_same_output(model, equalized, data)
    quantized = tfmot.quantization.keras.quantize_model(equalized)
    assert np.isfinite(np.asarray(quantized(data, training=False))).all()


# ---- what stays opaque or refused --------------------------------------------------------------

def _with_own_weights():
    x = tf_keras.Input((6, 6, 4))
    y = Scaled(name="scaled")(L.Conv2D(4, 1)(x))
    return _randomize(tf_keras.Model(x, L.Conv2D(2, 1)(y), name="own_weights"))


def test_custom_layer_with_own_weights_is_kept_opaque_with_its_reason(tfmot):
    model = _with_own_weights()
    data = _data((6, 6, 4))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        prepared, report = prepare_model_with_report(model)
    assert any("scaled" in str(w.message) and "weights of its own" in str(w.message) for w in caught)
    (opaque,) = report.opaque_layers
    assert opaque.name == "scaled" and "weights of its own" in opaque.note
    _assert_same_output(model, prepared, data)
    with pytest.raises(PrepareError) as info:  # strict: refused, naming the layer and the fix
        prepare_model(model, strict=True)
    assert info.value.layer_name == "scaled" and "QuantizeConfig" in info.value.fix
    with pytest.raises(prequant.UnsupportedError, match="scaled"):  # no Keras 3 counterpart
        equalize_model(prepared)
    with pytest.raises(Exception):  # and tfmot refuses it too: why it is reported
        tfmot.quantization.keras.quantize_model(prepared)


class ArithmeticBlock(L.Layer):
    """Raw TF arithmetic between sublayers, as PWC-Net-style blocks write it."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.a, self.b = L.Dense(4), L.Dense(4)

    def call(self, x):
        p, q = self.a(x), self.b(x)
        return tf.concat([p - q, tf.maximum(p, q), tf.minimum(p, q), tf.nn.relu6(p * q),
                          tf.add(p, q), tf.subtract(p, q), tf.nn.relu(p) + q], axis=1)


def test_tf_ops_in_call_become_built_in_layers(tfmot):
    x = tf_keras.Input((3,))
    model = tf_keras.Model(x, ArithmeticBlock()(x))
    prepared = prepare_model(model)
    names = {type(layer).__name__ for layer in prepared.layers}
    assert names == {"InputLayer", "Dense", "Subtract", "Maximum", "Minimum", "Multiply", "ReLU",
                     "Add", "Concatenate"}, names
    relu6 = [layer for layer in prepared.layers if isinstance(layer, L.ReLU) and layer.max_value is not None]
    assert len(relu6) == 1 and float(relu6[0].max_value) == 6.0
    _assert_same_output(model, prepared, _data((3,)))
    # tfmot's default 8-bit scheme quantizes Add, Concatenate and ReLU (the nested cases above),
    # not Subtract/Multiply/Maximum/Minimum: those need the user's QuantizeConfig (README).
    with pytest.raises(RuntimeError, match="Multiply"):
        tfmot.quantization.keras.quantize_model(prepared)


class ScaledModel(tf_keras.Model):
    """A subclassed model with a weight of its own: kept whole, called through tf_keras itself."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.dense = L.Dense(4)

    def build(self, input_shape):
        self.gain = self.add_weight(name="gain", shape=(4,), initializer="ones")
        super().build(input_shape)

    def call(self, x):
        return self.dense(x) * self.gain


def test_nested_subclassed_model_with_own_weights_is_kept_whole():
    x = tf_keras.Input((3,))
    inner = ScaledModel(name="scaled_model")
    model = tf_keras.Model(x, L.Dense(2)(inner(x)))
    _randomize(model)
    inner.gain.assign([0.5, -1.0, 2.0, 3.0])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prepared, report = prepare_model_with_report(model)
    assert [r.name for r in report.opaque_layers] == ["scaled_model"], report.summary()
    _assert_same_output(model, prepared, _data((3,)))


def test_built_in_ops_it_cannot_map_stay_tf_op_layers_with_output_kept(tfmot):
    x = tf_keras.Input((5,))
    y = L.Dense(5)(x)
    model = tf_keras.Model(x, tf.reduce_mean(y, axis=-1, keepdims=True) * 2.0 + y)
    prepared = prepare_model(model)
    kinds = [type(layer).__name__ for layer in prepared.layers]
    assert kinds == ["InputLayer", "Dense", "TFOpLambda", "TFOpLambda", "Add"], kinds
    _assert_same_output(model, prepared, _data((5,)))
    with pytest.raises(RuntimeError, match="reduce_mean.*QuantizeConfig"):  # tfmot's limit (README)
        tfmot.quantization.keras.quantize_model(prepared)


def _entry_points_still_keras3_only(model, tmp_path):
    return {
        "write_report": lambda: prequant.write_report(model, tmp_path),
        "find_batch_norm_folds": lambda: find_batch_norm_folds(model),
        "replace_relu6_with_relu": lambda: replace_relu6_with_relu(model),
        "CrossLayerScaling.scale_model": lambda: CrossLayerScaling.scale_model(model),
    }


def test_keras3_only_entry_points_name_the_model_as_tf_keras(tmp_path):
    model = _chain()
    for what, call in _entry_points_still_keras3_only(model, tmp_path).items():
        with pytest.raises(prequant.UnsupportedError) as info:
            call()
        message = str(info.value)
        assert "tf_keras (Keras 2)" in message and "equalize_model" in message, (what, message)


def test_tf_keras_refusals_say_the_fix():
    model = subclassed_twice()
    with pytest.raises(PrepareError, match="input_layer"):  # subclassed: no Input to start from
        prepare_model(model)
    import keras

    with pytest.raises(PrepareError, match="tf_keras.Input"):  # a Keras 3 Input for a Keras 2 model
        prepare_model(model, input_layer=keras.Input((12, 12, 8)))
    with pytest.raises(prequant.UnsupportedError, match="prepare_model"):  # CLE needs a functional model
        equalize_model(model)


def test_tf_keras_interception_is_removed_after_success_and_failure():
    """The tf_keras tracer swaps tf_keras' Layer/Model.__call__ only while it runs (the swap and the
    copy/opaque/shared bookkeeping are the Keras 3 tracer's, _tracer_core), and never Keras 3's."""
    import keras
    from tf_keras.src.engine import base_layer, training

    from prequant.keras import _tf_keras_prepare as tracer_module

    layer_call, model_call = base_layer.Layer.__call__, training.Model.__call__
    keras3_call = keras.layers.Layer.__call__
    model = _with_own_weights()
    prepare_model(model)
    with pytest.raises(PrepareError):
        prepare_model(model, strict=True)
    assert base_layer.Layer.__call__ is layer_call and training.Model.__call__ is model_call
    assert keras.layers.Layer.__call__ is keras3_call
    assert getattr(tracer_module._state, "tracer", None) is None
