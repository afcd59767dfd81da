"""prepare_model on the model shapes users bring, checked structurally and numerically.

Before: subclassed models and custom layers nested three deep; Sequential/Functional models
        inside custom layers; a feature extractor shared by two inputs; raw TensorFlow and
        keras.ops arithmetic in call(); Dropout and BatchNormalization; several inputs and
        outputs; a custom layer with weights of its own; keras.applications models.
After:  each prepares into a functional model of built-in (or prequant-generated) leaf layers
        whose inference outputs equal the original's, whose report accounts for every
        original variable, and which saves and reloads as .keras.
"""

import inspect
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from prequant.keras import PrepareError, prepare_model, prepare_model_with_report

BUILTIN_OR_GENERATED = ("keras.", "prequant.keras.")


def assert_flat(prepared, allowed_custom=()):
    """Every layer is a Keras or prequant class, except the named opaque classes."""
    for layer in prepared.layers:
        cls = type(layer)
        assert cls.__module__.startswith(BUILTIN_OR_GENERATED) or cls.__name__ in allowed_custom, (
            f"{layer.name} is a {cls.__module__}.{cls.__name__}")
        assert not isinstance(layer, keras.Model)


def assert_every_variable_copied(original, report):
    """Each original variable is in the report, copied to >= 1 prepared weight."""
    assert len(report.variables) == len({id(v) for v in original.weights})
    for record in report.variables:
        assert record.status == "copied", record
        assert record.destinations, record


# --- model pieces ----------------------------------------------------------------------------


class ConvBN(keras.layers.Layer):
    """The tfmot request's SampleNestedLayer: a pure composition of layers."""

    def __init__(self, filters, **kwargs):
        super().__init__(**kwargs)
        self.conv = keras.layers.Conv2D(filters, 3, padding="same")
        self.norm = keras.layers.BatchNormalization()

    def call(self, x):
        return self.norm(self.conv(x))


class Level2(keras.layers.Layer):
    def __init__(self, filters, **kwargs):
        super().__init__(**kwargs)
        self.first = ConvBN(filters)
        self.second = ConvBN(filters)
        self.act = keras.layers.ReLU()

    def call(self, x, training=None):
        y = self.act(self.first(x))
        return self.act(self.second(y)) + x  # reused ReLU, residual arithmetic


class Level3(keras.layers.Layer):
    def __init__(self, filters, **kwargs):
        super().__init__(**kwargs)
        self.blocks = [Level2(filters), Level2(filters)]
        self.head = keras.layers.Conv2D(filters, 1)

    def call(self, x, training=None):
        for block in self.blocks:
            x = block(x, training=training)
        return self.head(x)


class ThreeLevelModel(keras.Model):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.stem = keras.layers.Conv2D(8, 3, padding="same")
        self.body = Level3(8)
        self.pool = keras.layers.GlobalAveragePooling2D()
        self.classifier = keras.layers.Dense(5)

    def call(self, x):
        return self.classifier(self.pool(self.body(self.stem(x))))


class HoldsSubModels(keras.layers.Layer):
    """A custom layer holding a Sequential and a Functional model."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.mlp = keras.Sequential([keras.layers.Dense(16, activation="relu"),
                                     keras.layers.Dropout(0.5), keras.layers.Dense(8)])
        inp = keras.Input((8,))
        hidden = keras.layers.Dense(8, activation="tanh")(inp)
        self.gate = keras.Model(inp, keras.layers.Multiply()([inp, hidden]))

    def call(self, x):
        return self.gate(self.mlp(x))


class Scale(keras.layers.Layer):
    """A custom layer with a weight of its own, used directly in call()."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)

    def build(self, input_shape):
        self.scale = self.add_weight(shape=(input_shape[-1],), initializer="random_normal",
                                     name="scale")

    def call(self, x):
        return x * self.scale


class RawTFOps(keras.layers.Layer):
    """Raw TensorFlow in call(): shapes, ranges, reshapes, concatenation, activations."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.proj = keras.layers.Dense(6)

    def call(self, x):
        batch = tf.shape(x)[0]
        steps = tf.range(tf.shape(x)[1])
        y = tf.reshape(self.proj(x), (batch, -1, 3))  # (b, 2*t, 3)
        y = tf.transpose(y, (0, 2, 1))
        y = tf.concat([y, tf.nn.relu6(y)], axis=-1)
        y = tf.reduce_mean(y, axis=-1) + tf.cast(tf.reduce_sum(steps), tf.float32)
        return tf.math.add(y, tf.nn.relu(y))


class KerasOpsArithmetic(keras.layers.Layer):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.a = keras.layers.Dense(8)
        self.b = keras.layers.Dense(8)

    def call(self, x):
        a, b = self.a(x), self.b(x)
        y = keras.ops.concatenate([a + b, a * b, a - b, keras.ops.maximum(a, b)], axis=-1)
        y = keras.ops.relu(y) / (1.0 + keras.ops.abs(y))
        return keras.ops.sigmoid(y) * 0.5 + keras.ops.mean(y, axis=-1, keepdims=True)


# --- structure and numbers --------------------------------------------------------------------


def test_nested_three_levels_flatten(helpers):
    original = ThreeLevelModel()
    x = np.random.default_rng(0).normal(size=(2, 10, 10, 3)).astype("float32")
    original(x)
    helpers.randomize_batch_norms(original)

    prepared = prepare_model(original, input_layer=keras.Input((10, 10, 3)))
    helpers.assert_same_outputs(original, prepared, x)
    assert_flat(prepared)
    classes = helpers.layer_classes(prepared)
    assert classes.count("Conv2D") == 6
    assert classes.count("BatchNormalization") == 4
    assert classes.count("ReLU") == 4  # each Level2 reuses its ReLU: unrolled
    assert classes.count("Add") == 2
    assert_every_variable_copied(original, prepared.prequant_report)


def test_sequential_and_functional_inside_custom_layer(helpers):
    inputs = keras.Input((12,))
    outputs = keras.layers.Dense(3)(HoldsSubModels()(keras.layers.Dense(8)(inputs)))
    original = keras.Model(inputs, outputs)

    prepared = prepare_model(original)
    helpers.assert_same_outputs(original, prepared, helpers.random_inputs(original.inputs[0]))
    assert_flat(prepared)
    assert helpers.layer_classes(prepared).count("Dense") == 5
    assert "Multiply" in helpers.layer_classes(prepared)
    assert_every_variable_copied(original, prepared.prequant_report)


def test_shared_feature_extractor_is_unrolled(helpers):
    # tfmot request: nested layers reused on two inputs (an optical-flow style siamese net).
    extractor = ConvBN(6)
    inp = keras.Input((8, 8, 6))
    functional_extractor = keras.Model(inp, keras.layers.Conv2D(6, 1)(inp))
    left, right = keras.Input((8, 8, 3), name="left"), keras.Input((8, 8, 3), name="right")
    stem = keras.layers.Conv2D(6, 3, padding="same")
    fl = functional_extractor(extractor(stem(left)))
    fr = functional_extractor(extractor(stem(right)))
    original = keras.Model([left, right], keras.layers.Concatenate()([fl, fr - fl]))
    original([np.zeros((1, 8, 8, 3), "float32")] * 2)
    helpers.randomize_batch_norms(original)

    prepared = prepare_model(original)
    data = helpers.random_inputs(original.inputs)
    helpers.assert_same_outputs(original, prepared, data)
    assert_flat(prepared)
    classes = helpers.layer_classes(prepared)
    assert classes.count("Conv2D") == 6 and classes.count("BatchNormalization") == 2
    for layer in prepared.layers:
        assert len(layer._inbound_nodes) <= 1, f"{layer.name} is still shared"
    report = prepared.prequant_report
    kernel = report.variable(extractor.conv.kernel.path)
    assert len(kernel.destinations) == 2 and "unrolled" in kernel.note
    assert_every_variable_copied(original, report)


def test_raw_tensorflow_ops_are_carried_into_the_graph(helpers, tmp_path):
    inputs = keras.Input((4, 5))
    original = keras.Model(inputs, RawTFOps()(inputs))

    prepared = prepare_model(original)
    helpers.assert_same_outputs(original, prepared, helpers.random_inputs(inputs, batch=3))
    assert_flat(prepared)
    classes = helpers.layer_classes(prepared)
    assert "TFFunctionLayer" in classes
    assert "Concatenate" in classes and "Add" in classes  # tf.concat, tf.math.add
    relu6 = [layer for layer in prepared.layers
             if isinstance(layer, keras.layers.ReLU) and layer.max_value == 6]
    assert len(relu6) == 1

    path = tmp_path / "raw_tf.keras"
    prepared.save(path)
    reloaded = keras.models.load_model(path)
    helpers.assert_same_outputs(original, reloaded, helpers.random_inputs(inputs, batch=3))


def test_keras_ops_arithmetic_becomes_layers(helpers):
    inputs = keras.Input((7,))
    original = keras.Model(inputs, KerasOpsArithmetic()(inputs))

    prepared = prepare_model(original)
    helpers.assert_same_outputs(original, prepared, helpers.random_inputs(inputs))
    classes = helpers.layer_classes(prepared)
    for expected in ("Add", "Multiply", "Subtract", "Maximum", "Concatenate", "ReLU"):
        assert expected in classes, expected
    assert classes.count("Activation") == 1  # sigmoid
    # No built-in layer computes x / y or x * 0.5: generated, still layers.
    assert "KerasOpLayer" in classes
    assert all(not isinstance(op, keras.Operation) or isinstance(op, keras.layers.Layer)
               for op in prepared._operations)


def test_dropout_and_batchnorm_in_inference(helpers):
    class Block(keras.layers.Layer):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.conv = keras.layers.Conv2D(5, 3)
            self.bn = keras.layers.BatchNormalization()
            self.drop = keras.layers.Dropout(0.5)

        def call(self, x, training=None):
            return self.drop(self.bn(self.conv(x), training=training), training=training)

    inputs = keras.Input((9, 9, 2))
    x = Block()(inputs)
    outputs = keras.layers.Dropout(0.3)(keras.layers.BatchNormalization()(x))
    original = keras.Model(inputs, outputs)
    helpers.randomize_batch_norms(original, seed=3)

    prepared = prepare_model(original)
    helpers.assert_same_outputs(original, prepared, helpers.random_inputs(inputs))
    assert helpers.layer_classes(prepared).count("BatchNormalization") == 2
    assert helpers.layer_classes(prepared).count("Dropout") == 2
    bn = next(layer for layer in prepared.layers
              if isinstance(layer, keras.layers.BatchNormalization))
    np.testing.assert_array_equal(bn.moving_variance.numpy(),
                                  original.layers[1].bn.moving_variance.numpy())


def test_multi_input_multi_output_functional(helpers):
    a, b = keras.Input((6,), name="a"), keras.Input((4,), name="b")
    merged = keras.ops.concatenate([KerasOpsArithmetic()(a), keras.layers.Dense(8)(b)], axis=-1)
    original = keras.Model({"a": a, "b": b},
                           {"score": keras.layers.Dense(1)(merged), "features": merged})

    prepared = prepare_model(original)
    data = {"a": helpers.random_inputs(a), "b": helpers.random_inputs(b)}
    helpers.assert_same_outputs(original, prepared, data)
    assert set(prepared.output.keys()) == {"score", "features"}


def test_multi_input_subclassed_with_input_list(helpers):
    class TwoTower(keras.Model):
        def __init__(self):
            super().__init__()
            self.left = keras.Sequential([keras.layers.Dense(5), keras.layers.ReLU()])
            self.right = keras.layers.Dense(5)
            self.out_a = keras.layers.Dense(2)

        def call(self, inputs):
            left, right = inputs
            joined = self.left(left) + self.right(right)
            return self.out_a(joined), keras.ops.tanh(joined)

    original = TwoTower()
    prepared = prepare_model(original, input_layer=[keras.Input((3,)), keras.Input((4,))])
    data = [np.random.default_rng(1).normal(size=(2, 3)).astype("float32"),
            np.random.default_rng(2).normal(size=(2, 4)).astype("float32")]
    helpers.assert_same_outputs(original, prepared, data)
    assert len(prepared.outputs) == 2
    assert_flat(prepared)


def test_functional_subclass_with_its_own_call(helpers):
    class ScaledFunctional(keras.Model):
        def __init__(self):
            inputs = keras.Input((4,))
            super().__init__(inputs, keras.layers.Dense(3)(inputs))

        def call(self, x, training=None):
            return super().call(x) * 2.0 + 1.0

    original = ScaledFunctional()
    prepared = prepare_model(original)  # its Input layer is reused: no input_layer needed
    helpers.assert_same_outputs(original, prepared, helpers.random_inputs(original.inputs[0]))
    assert helpers.layer_classes(prepared) == ["InputLayer", "Dense", "KerasOpLayer",
                                              "KerasOpLayer"]


def test_input_layer_object_is_accepted(helpers):
    class Small(keras.Model):
        def __init__(self):
            super().__init__()
            self.dense = keras.layers.Dense(2)

        def call(self, x):
            return self.dense(x)

    original = Small()
    prepared = prepare_model(original, input_layer=keras.layers.InputLayer(shape=(4,)))
    helpers.assert_same_outputs(original, prepared,
                                np.random.default_rng(0).normal(size=(3, 4)).astype("float32"))


def test_custom_layer_with_own_weights_stays_opaque(helpers, tmp_path):
    inputs = keras.Input((6,))
    scale = Scale()
    original = keras.Model(inputs, keras.layers.Dense(2)(scale(keras.layers.Dense(6)(inputs))))

    prepared, report = prepare_model_with_report(original)
    helpers.assert_same_outputs(original, prepared, helpers.random_inputs(inputs))
    opaque = report.opaque_layers
    assert [r.class_name for r in opaque] == ["Scale"]
    assert "weights of its own" in opaque[0].note
    record = report.variable(scale.scale.path)
    assert record.status == "opaque" and "kept in opaque layer" in record.note
    assert report.custom_objects == {"Scale": Scale}  # only Keras built-ins besides
    assert prepared.get_layer(opaque[0].name) is not scale  # a copy, not the original

    path = tmp_path / "opaque.keras"
    prepared.save(path)
    reloaded = keras.models.load_model(path, custom_objects=report.custom_objects)
    helpers.assert_same_outputs(original, reloaded, helpers.random_inputs(inputs))


def test_every_variable_is_accounted_for(helpers):
    class Unused(keras.layers.Layer):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.used = keras.layers.Dense(4)
            self.spare = keras.layers.Dense(4)  # built, never called in call()
            self.spare.build((None, 4))

        def call(self, x):
            return self.used(x)

    inputs = keras.Input((4,))
    original = keras.Model(inputs, Scale()(Unused()(inputs)))
    report = prepare_model(original).prequant_report

    assert [r.original for r in report.variables] == [w.path for w in original.weights]
    statuses = [r.status for r in report.variables]
    assert sorted(statuses) == ["copied", "copied", "opaque", "unused", "unused"]
    spare = original.layers[1].spare
    for weight in spare.weights:
        assert report.variable(weight.path).status == "unused"


def test_copied_weights_hold_the_original_values():
    original = ThreeLevelModel()
    original(np.zeros((1, 6, 6, 3), "float32"))
    prepared = prepare_model(original, input_layer=keras.Input((6, 6, 3)))
    new_by_path = {w.path: w for w in prepared.weights}
    for record in prepared.prequant_report.variables:
        source = next(w for w in original.weights if w.path == record.original)
        for destination in record.destinations:
            np.testing.assert_array_equal(new_by_path[destination].numpy(), source.numpy())
            assert new_by_path[destination] is not source


class StaticPositions(keras.layers.Layer):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.pos = keras.layers.Embedding(5, 7)

    def call(self, x):
        return x + self.pos(tf.range(5))  # a constant the input never reaches


def test_generated_layers_save_and_reload(helpers, tmp_path):
    inputs = keras.Input((5, 7))
    x = StaticPositions()(inputs)
    x = KerasOpsArithmetic()(x)
    original = keras.Model(inputs, RawTFOps()(x[:, 1:, ::2]))
    prepared = prepare_model(original)
    classes = set(helpers.layer_classes(prepared))
    assert {"ConstantLayer", "KerasOpLayer", "TFFunctionLayer"} <= classes

    report = prepared.prequant_report
    assert set(report.custom_objects) == {"ConstantLayer", "KerasOpLayer", "TFFunctionLayer"}

    path = tmp_path / "generated.keras"
    prepared.save(path)
    reloaded = keras.models.load_model(path)
    data = helpers.random_inputs(inputs)
    helpers.assert_same_outputs(original, reloaded, data)

    # A new process knows nothing of prequant until load_prepared_model imports it.
    np.save(tmp_path / "data.npy", data)
    np.save(tmp_path / "expected.npy", np.asarray(original(data, training=False)))
    script = (
        "import sys, numpy as np\n"
        "from prequant.keras import load_prepared_model\n"
        f"model = load_prepared_model({str(path)!r})\n"
        f"out = np.asarray(model(np.load({str(tmp_path / 'data.npy')!r})))\n"
        f"np.testing.assert_allclose(out, np.load({str(tmp_path / 'expected.npy')!r}), atol=1e-5)\n"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]


def test_original_model_is_left_untouched(helpers):
    original = ThreeLevelModel()
    x = np.random.default_rng(0).normal(size=(1, 6, 6, 3)).astype("float32")
    before = original(x)
    nodes = {id(layer): len(layer._inbound_nodes) for layer in original._flatten_layers()}
    values = [w.numpy().copy() for w in original.weights]

    prepare_model(original, input_layer=keras.Input((6, 6, 3)))
    assert {id(layer): len(layer._inbound_nodes) for layer in original._flatten_layers()} == nodes
    for value, weight in zip(values, original.weights, strict=True):
        np.testing.assert_array_equal(value, weight.numpy())
    np.testing.assert_array_equal(before, original(x))


def test_interception_is_removed_after_success_and_failure():
    from prequant.keras import _prepare_tracer as tracer_module

    call, symbolic = keras.layers.Layer.__call__, keras.Operation.symbolic_call
    value = keras.Variable.value
    inputs = keras.Input((3,))
    prepare_model(keras.Model(inputs, keras.layers.Dense(2)(inputs)))
    with pytest.raises(PrepareError):
        prepare_model(ThreeLevelModel())
    assert keras.layers.Layer.__call__ is call and keras.Operation.symbolic_call is symbolic
    assert keras.Variable.value is value
    assert tracer_module._active_tracer() is None
    with pytest.raises(ValueError, match="KerasTensor cannot be used as input to a TensorFlow"):
        tf.shape(keras.Input((3,)))  # raw TF on KerasTensors fails as usual outside a trace


def test_report_summary_names_opaque_and_unused():
    inputs = keras.Input((4,))
    original = keras.Model(inputs, Scale(name="my_scale")(keras.layers.Dense(4)(inputs)))
    summary = prepare_model(original).prequant_report.summary()
    assert "opaque my_scale (Scale)" in summary and "2 copied" in summary


def test_save_and_reload_round_trip(helpers, tmp_path):
    original = ThreeLevelModel()
    x = np.random.default_rng(0).normal(size=(2, 8, 8, 3)).astype("float32")
    original(x)
    helpers.randomize_batch_norms(original)
    prepared = prepare_model(original, input_layer=keras.Input((8, 8, 3)))

    path = tmp_path / "prepared.keras"
    prepared.save(path)
    reloaded = keras.models.load_model(path)
    helpers.assert_same_outputs(original, reloaded, x)
    assert helpers.layer_classes(reloaded) == helpers.layer_classes(prepared)


def test_subclassed_first_layer_without_input_layer_raises():
    with pytest.raises(PrepareError) as info:
        prepare_model(ThreeLevelModel())
    message = str(info.value)
    assert "subclassed" in message and "input_layer=keras.Input(shape=" in message
    assert info.value.layer_name


def test_input_layer_of_wrong_kind_raises():
    with pytest.raises(PrepareError, match="keras.Input"):
        prepare_model(ThreeLevelModel(), input_layer=np.zeros((1, 4)))


def test_untraceable_call_is_kept_opaque_or_raises_in_strict_mode(helpers, tmp_path):
    class GraphOnly(keras.layers.Layer):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.dense = keras.layers.Dense(3)

        def call(self, x):
            width = x.get_shape()[-1]  # a tf.Tensor method that KerasTensor lacks
            return self.dense(x) * float(width)

    inputs = keras.Input((3,))
    original = keras.Model(inputs, GraphOnly(name="branchy")(inputs))
    with pytest.raises(PrepareError, match="branchy"):
        prepare_model(original, strict=True)

    with pytest.warns(UserWarning, match="kept opaque"):
        prepared, report = prepare_model_with_report(original)
    assert [r.name for r in report.opaque_layers] == ["branchy"]
    assert "cannot be traced" in report.opaque_layers[0].note
    helpers.assert_same_outputs(original, prepared, helpers.random_inputs(inputs))
    assert report.custom_objects == {"GraphOnly": type(original.layers[1])}
    assert report.variable(original.layers[1].dense.kernel.path).status == "opaque"


def test_variable_used_in_parent_call_keeps_parent_opaque(helpers):
    class TiedHead(keras.layers.Layer):  # weight tying: reads a sublayer's variable
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.embed = keras.layers.Dense(4, use_bias=False)

        def call(self, x):
            h = self.embed(x)
            return keras.ops.matmul(h, keras.ops.transpose(self.embed.kernel))

    inputs = keras.Input((6,))
    original = keras.Model(inputs, TiedHead()(inputs))
    with pytest.warns(UserWarning):
        prepared, report = prepare_model_with_report(original)
    helpers.assert_same_outputs(original, prepared, helpers.random_inputs(inputs))
    assert [r.class_name for r in report.opaque_layers] == ["TiedHead"]
    assert "variable" in report.opaque_layers[0].note
    assert {r.status for r in report.variables} == {"opaque"}


def test_deeply_nested_graph_models_do_not_recurse():
    # 60 Sequential models, each inside the next: the expansion keeps an explicit stack, so
    # it needs about 70 frames above the caller at any depth (10 levels need 50), where
    # a walk recursing per level would need some 3 frames more per level.
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(3)])
    for _ in range(60):
        model = keras.Sequential([keras.Input((3,)), model])
    x = np.ones((1, 3), "float32")
    expected = model(x)
    prepare_model(model)  # warm-up: first-use imports must not count against the limit
    frames = _stack_depth()
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(frames + 150)
    try:
        prepared = prepare_model(model)
    finally:
        sys.setrecursionlimit(limit)
    assert [type(layer).__name__ for layer in prepared.layers] == ["InputLayer", "Dense"]
    np.testing.assert_allclose(prepared(x), expected, rtol=1e-6)


def _stack_depth():
    return len(inspect.stack(0))


# --- keras.applications, random weights ---------------------------------------------------


@pytest.mark.parametrize(
    "name, size",
    [("MobileNetV2", 32), ("ResNet50", 32), ("EfficientNetB0", 32), ("DenseNet121", 32)],
)
def test_keras_applications(name, size, helpers):
    builder = getattr(keras.applications, name)
    original = builder(weights=None, input_shape=(size, size, 3), classes=4)
    helpers.randomize_batch_norms(original)
    prepared = prepare_model(original)

    x = np.random.default_rng(0).uniform(0, 255, size=(2, size, size, 3)).astype("float32")
    helpers.assert_same_outputs(original, prepared, x, atol=1e-4, rtol=1e-4)
    assert helpers.layer_classes(prepared) == helpers.layer_classes(original)
    assert_every_variable_copied(original, prepared.prequant_report)


def test_application_as_backbone_inside_a_custom_model(helpers):
    backbone = keras.applications.MobileNetV2(weights=None, include_top=False,
                                              input_shape=(32, 32, 3), alpha=0.35)

    class Classifier(keras.Model):
        def __init__(self):
            super().__init__()
            self.backbone = backbone
            self.pool = keras.layers.GlobalAveragePooling2D()
            self.head = keras.layers.Dense(3)

        def call(self, x):
            return self.head(self.pool(self.backbone(x)))

    original = Classifier()
    x = np.random.default_rng(0).normal(size=(2, 32, 32, 3)).astype("float32")
    original(x)
    helpers.randomize_batch_norms(original)
    prepared = prepare_model(original, input_layer=keras.Input((32, 32, 3)))
    helpers.assert_same_outputs(original, prepared, x, atol=1e-4, rtol=1e-4)
    assert_flat(prepared)
    assert len(prepared.layers) == len(backbone.layers) + 2
