"""Keras equalization through x·g(x) activations (SiLU/Swish, HardSwish, GELU; issue 12 item 2).

Before: ``Activation('swish')`` & co. and a layer's fused ``activation='swish'`` stopped
        cross-layer scaling (not positively homogeneous).
After:  with ``gated_activations=True`` each one scaled through becomes a ``GatedActivation``
        computing x·g(s[c]·x); the equalized model's output equals Keras' own forward pass of
        the original, on realistic values (random BN statistics, negative gamma, depthwise, a
        Dense on a rank-4 tensor). The layer saves and reloads as .keras, converts with the
        TFLite converter to builtin ops (DEPTHWISE_CONV_2D for the per-channel factors, LOGISTIC,
        GELU, MUL), whose INT8 form quantizes every per-channel factor per channel (none rounds
        to zero), and a tf_keras model goes through the same translation (TFKerasGatedActivation).
"""

from __future__ import annotations

import functools

import keras
import numpy as np
import pytest
from conftest import randomize_batch_norms
from keras import layers as L

from prequant.keras.activations import GatedActivation
from prequant.keras.cross_layer_equalization import equalize_model

GELU_TANH = functools.partial(keras.activations.gelu, approximate=True)


def _randomize_kernels(model, seed=0):
    """Kernels with per-output-channel spreads over two decades (what equalization undoes)."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        for w in layer.weights:
            if w.path.endswith(("kernel", "bias")):
                values = rng.normal(0, 1 / np.sqrt(max(1, int(np.prod(w.shape[:-1])))), w.shape)
                spread = np.exp(rng.uniform(-2.3, 2.3, w.shape[-1]))
                w.assign((values * spread).astype("float32"))
    return model


def _model():
    """conv → BN → swish → depthwise(fused hard_swish) → BN → conv(fused gelu) → Dense on the
    rank-4 tensor → gelu (tanh) → Dense."""
    inputs = keras.Input((10, 10, 3))
    x = L.Conv2D(8, 3, padding="same")(inputs)
    x = L.Activation("swish", name="swish")(L.BatchNormalization()(x))
    x = L.DepthwiseConv2D(3, padding="same", activation="hard_swish", name="dw")(x)
    x = L.BatchNormalization()(x)
    x = L.Conv2D(6, 1, activation="gelu", name="pw")(x)
    x = L.Activation(GELU_TANH, name="gelu_tanh")(L.Dense(5, name="d1")(x))
    outputs = L.Dense(4, name="d2")(x)
    model = keras.Model(inputs, outputs)
    return randomize_batch_norms(_randomize_kernels(model), seed=1)


def _x(shape=(2, 10, 10, 3), seed=0):
    return np.random.default_rng(seed).normal(0, 2, shape).astype("float32")


def _assert_close(a, b, tol=1e-5):
    a, b = np.asarray(a), np.asarray(b)
    assert np.max(np.abs(a - b)) <= tol * np.max(np.abs(b)), np.max(np.abs(a - b))


GATES = [
    ("sigmoid", keras.activations.silu),
    ("hard_sigmoid", keras.activations.hard_silu),
    ("gelu_erf", keras.activations.gelu),
    ("gelu_tanh", GELU_TANH),
]
# rank 4 and the ranks that get unit axes for the depthwise form, and rank 5 (elementwise)
SHAPES = [(3, 4, 5, 5), (3, 5), (3, 4, 5), (2, 3, 2, 2, 5)]
SCALES = np.array([0.05, 0.5, 1.0, 3.0, 40.0], "float32")


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"rank{len(s)}")
@pytest.mark.parametrize("gate,reference", GATES)
def test_gated_activation_is_x_times_gate_of_scaled_x(gate, reference, shape):
    x = _x(shape)
    got = GatedActivation(gate, SCALES)(x)
    want = np.asarray(reference(x * SCALES)) / SCALES  # act(s·x)/s = x·g(s·x)
    np.testing.assert_allclose(np.asarray(got), want, rtol=2e-5, atol=1e-6)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"rank{len(s)}")
@pytest.mark.parametrize("gate,reference", GATES)
def test_tf_keras_twin_is_x_times_gate_of_scaled_x(gate, reference, shape):
    pytest.importorskip("tf_keras")
    from prequant.keras._tf_keras_bridge import TFKerasGatedActivation

    x = _x(shape)
    got = TFKerasGatedActivation(gate, SCALES)(x)
    want = np.asarray(reference(x * SCALES)) / SCALES
    np.testing.assert_allclose(np.asarray(got), want, rtol=2e-5, atol=1e-6)


def test_gated_activation_rejects_bad_arguments():
    with pytest.raises(ValueError, match="gate must be one of"):
        GatedActivation("tanh", [1.0])
    with pytest.raises(ValueError, match="positive"):
        GatedActivation("sigmoid", [1.0, 0.0])
    with pytest.raises(ValueError, match="2 gate scales but its input has 3 channels"):
        GatedActivation("sigmoid", [1.0, 2.0])(keras.Input((4, 3)))


def test_equalize_through_gated_activations_keeps_the_output():
    model = _model()
    x = _x()
    ref = model.predict(x, verbose=0)
    new, result = equalize_model(model, gated_activations=True, return_result=True)
    gated = {layer.name: layer for layer in new.layers if isinstance(layer, GatedActivation)}
    # the Activation layers keep their names; fused activations are layers of their own now
    assert {"swish", "gelu_tanh"} <= set(gated) and len(gated) == 4, sorted(gated)
    assert {g.gate for g in gated.values()} == {"sigmoid", "hard_sigmoid", "gelu_erf", "gelu_tanh"}
    for layer in gated.values():
        assert not np.allclose(layer.gate_scale.numpy(), 1.0), layer.name
    scaled = {(p.layer1, p.layer2) for s in result.cls.sets for p in s.pairs}
    assert ("dw", "pw") in scaled and ("pw", "d1") in scaled and ("d1", "d2") in scaled, scaled
    _assert_close(new.predict(x, verbose=0), ref)


def test_without_the_option_gated_activations_decline_with_a_reason():
    model = _model()
    new, result = equalize_model(model, return_result=True)
    assert not any(isinstance(layer, GatedActivation) for layer in new.layers)
    assert not result.cls.sets
    reasons = [d.reason for d in result.cls.declined if "x·g(x)" in d.reason]
    assert len(reasons) == 4 and all("gated_activations=True" in r for r in reasons), reasons
    assert any("fused activation='hard_silu' of DepthwiseConv2D 'dw'" in r for r in reasons), reasons
    _assert_close(new.predict(_x(), verbose=0), model.predict(_x(), verbose=0))


def test_equalizing_an_equalized_model_again_reads_its_gate_scales():
    model = _model()
    x = _x()
    ref = model.predict(x, verbose=0)
    once = equalize_model(model, gated_activations=True)
    twice = equalize_model(once, gated_activations=True)
    assert sum(isinstance(layer, GatedActivation) for layer in twice.layers) == 4
    _assert_close(twice.predict(x, verbose=0), ref)


def test_gated_model_saves_and_reloads(tmp_path):
    model = _model()
    new = equalize_model(model, gated_activations=True)
    path = tmp_path / "gated.keras"
    new.save(path)
    loaded = keras.models.load_model(path)
    x = _x()
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), new.predict(x, verbose=0))
    for layer in new.layers:
        if isinstance(layer, GatedActivation):
            np.testing.assert_array_equal(loaded.get_layer(layer.name).gate_scale.numpy(), layer.gate_scale.numpy())


def test_gated_model_converts_to_builtin_tflite_ops():
    import tensorflow as tf

    from prequant.demo._tflite import ops_with_fused_activation

    model = _model()
    new = equalize_model(model, gated_activations=True)
    content = tf.lite.TFLiteConverter.from_keras_model(new).convert()
    ops = ops_with_fused_activation(content)
    names = [name for name, _ in ops]
    assert {"LOGISTIC", "GELU", "MUL", "DEPTHWISE_CONV_2D"} <= set(names), names
    assert not any(op.startswith("Flex") or op == "CUSTOM" for op in names), names
    # the gated HardSwish's dw_s(x) + 3 carries its ReLU6 fused (besides the model's own depthwise)
    assert ("DEPTHWISE_CONV_2D", "RELU6") in ops, ops
    interpreter = tf.lite.Interpreter(model_content=content)
    interpreter.allocate_tensors()
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    x = _x((1, 10, 10, 3))
    interpreter.set_tensor(inp["index"], x)
    interpreter.invoke()
    _assert_close(interpreter.get_tensor(out["index"]), model.predict(x, verbose=0), tol=1e-4)


@pytest.mark.parametrize("gate,reference", GATES[:3])
def test_int8_tflite_quantizes_every_gate_factor_per_channel(gate, reference):
    """Gate scales over three decades: in the full-integer model every per-channel factor (s, 1/s,
    1/6) is a depthwise kernel with a scale per channel, so each dequantizes to within 1% of its
    value (a constant MUL operand gets one scale: 0.05 and 1/40 rounded to zero). With a gate in
    [0, 1] (SiLU, HardSwish) no channel's output collapses either; GELU's gelu(s·x) is one int8
    tensor whose channels span the ranges of s·x (the original model's activation ranges), so its
    output is checked in the FP32 and bench tests, not per channel here."""
    import tensorflow as tf

    from prequant.demo._tflite import convert_int8, run_tflite

    inputs = keras.Input((6, 6, SCALES.size))
    model = keras.Model(inputs, GatedActivation(gate, SCALES)(inputs))
    rng = np.random.default_rng(0)
    calibration, x = (rng.normal(0, 1, (n, 6, 6, SCALES.size)).astype("float32") for n in (16, 8))
    content = convert_int8(model, calibration)
    interpreter = tf.lite.Interpreter(model_content=content)
    factors = []
    for t in interpreter.get_tensor_details():
        if t["dtype"] == np.int8 and tuple(t["shape"]) == (1, 1, 1, SCALES.size):
            q = t["quantization_parameters"]
            factors.append(interpreter.get_tensor(t["index"]).reshape(-1) * q["scales"])
    expected = {"sigmoid": [SCALES], "hard_sigmoid": [SCALES, np.full(SCALES.size, 1 / 6)],
                "gelu_erf": [SCALES, 1 / SCALES]}[gate]
    assert len(factors) == len(expected), len(factors)
    for want in expected:
        assert any(np.allclose(f, want, rtol=1e-2, atol=0) for f in factors), (want, factors)
    if gate != "gelu_erf":
        y, want = run_tflite(content, x), np.asarray(reference(x * SCALES)) / SCALES
        err = np.sum((y - want) ** 2, axis=(0, 1, 2)) / np.sum(want ** 2, axis=(0, 1, 2))
        assert (10 * np.log10(1 / err) > 15).all(), 10 * np.log10(1 / err)  # SQNR per channel


def test_tf_keras_model_goes_through_the_same_translation():
    tf_keras = pytest.importorskip("tf_keras")
    from prequant.keras._tf_keras_bridge import TFKerasGatedActivation

    rng = np.random.default_rng(0)
    inputs = tf_keras.Input((8, 8, 3))
    x = tf_keras.layers.Conv2D(6, 3, padding="same", activation="swish")(inputs)
    x = tf_keras.layers.Conv2D(5, 1, activation="gelu")(x)
    outputs = tf_keras.layers.Dense(4)(x)
    model = tf_keras.Model(inputs, outputs)
    for w in model.weights:
        w.assign(rng.normal(0, 1, w.shape).astype("float32") * np.exp(rng.uniform(-2, 2, w.shape[-1])))
    x = _x((2, 8, 8, 3))
    new = equalize_model(model, gated_activations=True)
    assert isinstance(new, tf_keras.Model)
    assert sum(isinstance(layer, TFKerasGatedActivation) for layer in new.layers) == 2
    _assert_close(new.predict(x, verbose=0), model.predict(x, verbose=0))


def test_prepare_model_makes_gated_activations_of_keras_ops_in_a_subclassed_model():
    """keras.ops.silu / hard_silu / gelu(approximate=False) inside call() become Activation
    layers (the engine's gated nodes); gelu's tanh form stays a generated layer (opaque)."""
    from prequant.keras import prepare_model

    class Block(keras.Model):
        def __init__(self):
            super().__init__()
            self.c1, self.c2 = L.Conv2D(6, 3, padding="same"), L.Conv2D(6, 1)
            self.c3, self.c4 = L.Conv2D(6, 1), L.Conv2D(4, 1)

        def call(self, x):
            x = keras.ops.silu(self.c1(x))
            x = keras.ops.hard_silu(self.c2(x))
            x = keras.ops.gelu(self.c3(x), approximate=False)
            return self.c4(keras.ops.gelu(x, approximate=True))

    model = Block()
    x = _x((2, 8, 8, 3))
    ref = model(x)
    prepared = prepare_model(model, keras.Input((8, 8, 3)))
    acts = [layer.activation.__name__ for layer in prepared.layers if type(layer) is L.Activation]
    assert acts == ["silu", "hard_silu", "gelu"], acts
    new, result = equalize_model(prepared, gated_activations=True, return_result=True)
    names = [model.c1.name, model.c2.name, model.c3.name]
    assert [s.layers for s in result.cls.sets] == [names[:2], names[1:]]  # c3 → c4: the tanh GELU is opaque
    _assert_close(new(x), ref)
