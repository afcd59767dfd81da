"""The Keras front end as a new user meets it: how inputs bind, loading in a fresh process,
tf_keras models, layers that cannot be saved, and the one error hierarchy.

Before: a list input_layer bound by position whatever its names (a prepared model silently
        computing b − a as a − b); an equalized model that loaded only where prequant's layer
        module happened to be imported; tf_keras models refused as "not a keras.Model" or
        "subclassed"; a prepared model that could not be saved reported as "could not be copied".
After:  each of these is right, or refused with a typed error naming the layer and the fix.
"""

import os
import subprocess
import sys
import textwrap
import warnings

import keras
import numpy as np
import prequant
import pytest
from prequant.keras import PrepareError, load_prepared_model, prepare_model, prepare_model_with_report
from prequant.keras.batch_norm_fold import fold_all_batch_norms
from prequant.keras.cross_layer_equalization import equalize_model



def _minus_model(input_order=("a", "b")):
    """A functional model with inputs named 'a' and 'b' (in ``input_order``) computing b − a."""
    tensors = {n: keras.Input((3,), name=n) for n in input_order}
    return keras.Model([tensors[n] for n in input_order],
                       keras.layers.Subtract()([tensors["b"], tensors["a"]]), name="minus")


class _Wrap(keras.Model):
    """A subclassed model handing its inputs to a functional model unchanged."""

    def __init__(self, inner, **kwargs):
        super().__init__(**kwargs)
        self.inner = inner

    def call(self, inputs):
        return self.inner(inputs)


def _ab(batch=2):
    rng = np.random.default_rng(0)
    return {"a": rng.normal(size=(batch, 3)).astype("float32"),
            "b": (rng.normal(size=(batch, 3)) + 9.0).astype("float32")}


# ---- issue 15 item 1: inputs bound by name ------------------------------------------------------

def test_list_input_layer_binds_by_name_through_a_subclassed_wrapper():
    original = _Wrap(_minus_model(("a", "b")))
    data = _ab()
    expected = original(data).numpy()  # the functional model binds a dict by name: b − a
    prepared = prepare_model(original, input_layer=[keras.Input((3,), name="b"), keras.Input((3,), name="a")])
    assert [x.name for x in prepared.inputs] == ["b", "a"]
    np.testing.assert_allclose(prepared(data).numpy(), expected, rtol=1e-6)
    np.testing.assert_allclose(prepared([data["b"], data["a"]]).numpy(), expected, rtol=1e-6)
    assert expected.mean() > 5  # b − a, not a − b


def test_list_input_layer_binds_by_name_for_a_functional_model():
    original = _minus_model(("a", "b"))
    data = _ab()
    prepared = prepare_model(original, input_layer=[keras.Input((3,), name="b"), keras.Input((3,), name="a")])
    np.testing.assert_allclose(prepared(data).numpy(), original(data).numpy(), rtol=1e-6)
    np.testing.assert_allclose(prepared([data["b"], data["a"]]).numpy(), original(data).numpy(), rtol=1e-6)


def test_unnamed_list_input_layer_binds_by_position():
    original = _minus_model(("a", "b"))
    data = _ab()
    prepared = prepare_model(original, input_layer=[keras.Input((3,)), keras.Input((3,))])
    np.testing.assert_allclose(prepared([data["a"], data["b"]]).numpy(),
                               original([data["a"], data["b"]]).numpy(), rtol=1e-6)


@pytest.mark.parametrize("wrapped", [False, True])
def test_ambiguous_list_binding_is_refused(wrapped):
    inner = _minus_model(("a", "b"))
    original = _Wrap(inner) if wrapped else inner
    with pytest.raises(PrepareError, match="ambiguous") as info:
        prepare_model(original, input_layer=[keras.Input((3,), name="b"), keras.Input((3,), name="c")])
    assert "pass a dict" in str(info.value)


def test_dict_input_layer_binds_by_key_for_a_functional_model():
    original = _minus_model(("a", "b"))
    data = _ab()
    prepared = prepare_model(original, input_layer={"b": keras.Input((3,), name="b"),
                                                    "a": keras.Input((3,), name="a")})
    np.testing.assert_allclose(prepared(data).numpy(), original(data).numpy(), rtol=1e-6)
    with pytest.raises(PrepareError, match="keys"):
        prepare_model(original, input_layer={"x": keras.Input((3,)), "a": keras.Input((3,))})


class _ImageAndMeta(keras.Model):
    """call() takes a dict (image + metadata heads) and returns a nested structure."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.conv = keras.layers.Conv2D(4, 3, padding="same")
        self.pool = keras.layers.GlobalAveragePooling2D()
        self.meta = keras.layers.Dense(4)
        self.head = keras.layers.Dense(2)

    def call(self, inputs):
        joined = self.pool(self.conv(inputs["image"])) + self.meta(inputs["meta"])
        return {"logits": self.head(joined), "parts": [joined, keras.ops.relu(joined)]}


def _image_meta_data():
    rng = np.random.default_rng(1)
    return {"image": rng.normal(size=(2, 6, 6, 3)).astype("float32"),
            "meta": rng.normal(size=(2, 5)).astype("float32")}


def test_dict_input_layer_for_a_subclassed_model_keeps_nested_outputs(helpers):
    original = _ImageAndMeta()
    data = _image_meta_data()
    original(data)
    prepared = prepare_model(original, input_layer={"image": keras.Input((6, 6, 3), name="image"),
                                                    "meta": keras.Input((5,), name="meta")})
    helpers.assert_same_outputs(original, prepared, data)
    out = prepared(data)
    assert set(out) == {"logits", "parts"} and isinstance(out["parts"], list) and len(out["parts"]) == 2


def test_equalize_model_keeps_dict_inputs_and_nested_outputs(helpers):
    original = _ImageAndMeta()
    data = _image_meta_data()
    original(data)
    prepared = prepare_model(original, input_layer={"image": keras.Input((6, 6, 3), name="image"),
                                                    "meta": keras.Input((5,), name="meta")})
    equalized = equalize_model(prepared)
    helpers.assert_same_outputs(original, equalized, data)
    assert set(equalized(data)) == {"logits", "parts"}


def test_failing_call_on_traced_inputs_keeps_the_real_cause():
    original = _ImageAndMeta()
    original(_image_meta_data())
    with pytest.raises(PrepareError) as info:  # call() reads inputs["image"], a list is given
        prepare_model(original, input_layer=[keras.Input((6, 6, 3)), keras.Input((5,))])
    assert "list indices must be integers" in str(info.value)
    assert "a list or a dict" in info.value.fix


# ---- issue 15 item 2: saved models load in a fresh process --------------------------------------

_LOAD_SCRIPT = textwrap.dedent("""
    import sys
    import numpy as np
    import keras
    import prequant.keras  # registers prequant's layer classes; nothing else is imported
    from prequant.keras import load_prepared_model
    for path, data_path in zip(sys.argv[1::2], sys.argv[2::2]):
        data = np.load(data_path)
        for load in (keras.models.load_model, load_prepared_model):
            model = load(path)
            out = model(data["x"], training=False)
            print(path, float(np.abs(np.asarray(out) - data["y"]).max()),
                  ",".join(sorted({type(l).__name__ for l in model.layers})))
""")


def _bn_relu6_model():
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(8, 3, padding="same")(inputs)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.ReLU(6.0)(x)
    x = keras.layers.Conv2D(6, 1)(x)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.ReLU(6.0)(x)
    x = keras.layers.DepthwiseConv2D(3, padding="same")(x)
    return keras.Model(inputs, x * 0.5 + 1.0)  # keras.ops arithmetic: generated layers


def test_prepared_and_equalized_models_load_in_a_fresh_process(tmp_path, helpers):
    original = helpers.randomize_batch_norms(_bn_relu6_model())
    prepared = prepare_model(original)
    equalized = equalize_model(prepared)
    assert "BoundedReLU" in helpers.layer_classes(equalized)
    assert "KerasOpLayer" in helpers.layer_classes(prepared)
    x = np.random.default_rng(0).normal(size=(2, 8, 8, 3)).astype("float32") * 3
    args = []
    for name, model in (("prepared", prepared), ("equalized", equalized)):
        path, data_path = tmp_path / f"{name}.keras", tmp_path / f"{name}.npz"
        model.save(path)
        np.savez(data_path, x=x, y=np.asarray(model(x, training=False)))
        args += [str(path), str(data_path)]
    # The fresh process imports the same prequant as this one (installed, or a dev tree on
    # PYTHONPATH), never the repository's python/ (which has no built extension in a clean clone).
    import prequant
    package_root = os.path.dirname(os.path.dirname(os.path.abspath(prequant.__file__)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([package_root, os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-c", _LOAD_SCRIPT, *args],
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [line.split(" ") for line in proc.stdout.splitlines() if line.startswith(str(tmp_path))]
    assert len(rows) == 4, proc.stdout
    for path, diff, classes in rows:
        assert float(diff) < 1e-5, (path, diff)
        assert ("BoundedReLU" in classes) == path.endswith("equalized.keras"), (path, classes)


# ---- issue 15 item 3: tf_keras models are named as such where refused -----------------------------------------

class _FakeKeras2Functional:
    """Stands for a tf_keras model where tf_keras is not installed: detection is by module."""

    name = "legacy"


_FakeKeras2Functional.__module__ = "tf_keras.src.engine.functional"


def _tf_keras_models():
    models = [_FakeKeras2Functional()]
    try:
        import tf_keras
    except ImportError:
        return models
    x = tf_keras.Input((4,))
    functional = tf_keras.Model(x, tf_keras.layers.Dense(2)(tf_keras.layers.Dense(3)(x)), name="k2_functional")

    class Sub(tf_keras.Model):
        def __init__(self):
            super().__init__(name="k2_subclassed")
            self.dense = tf_keras.layers.Dense(2)

        def call(self, inputs):
            return self.dense(inputs)

    sub = Sub()
    sub(np.zeros((1, 4), "float32"))
    return models + [functional, sub]


@pytest.mark.parametrize("model", _tf_keras_models(), ids=lambda m: m.name)
def test_tf_keras_models_are_named_as_tf_keras_where_refused(model, tmp_path):
    """prepare_model, fold_all_batch_norms and equalize_model take tf_keras models (issue 14,
    tests/keras/test_keras_tf_keras.py); the entry points that remain Keras 3 only say so."""
    from prequant.keras.batch_norm_fold import find_batch_norm_folds
    from prequant.keras.cross_layer_equalization import replace_relu6_with_relu

    calls = {
        "find_batch_norm_folds": lambda: find_batch_norm_folds(model),
        "replace_relu6_with_relu": lambda: replace_relu6_with_relu(model),
        "write_report": lambda: prequant.write_report(model, tmp_path),
    }
    for what, call in calls.items():
        with pytest.raises(prequant.UnsupportedError) as info:
            call()
        message = str(info.value)
        assert "tf_keras (Keras 2)" in message and "Keras 3" in message, (what, message)
        assert "is a subclassed model" not in message and "expected a keras.Model" not in message, (what, message)


# ---- issue 15 item 4: a layer that cannot be saved is named at prepare time ---------------------

class _TableScale(keras.layers.Layer):
    """Has a weight of its own and takes a NumPy array in __init__: no automatic get_config."""

    def __init__(self, table, **kwargs):
        super().__init__(**kwargs)
        self.table = np.asarray(table, "float32")
        self.scale = self.add_weight(shape=self.table.shape, initializer="ones")

    def call(self, x):
        return x * self.scale


def test_layer_that_cannot_be_saved_is_named_at_prepare_time(tmp_path):
    inputs = keras.Input((4,))
    original = keras.Model(inputs, keras.layers.Dense(3)(_TableScale(np.ones(4), name="table_scale")(inputs)))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        prepared, report = prepare_model_with_report(original)
    said = [str(w.message) for w in caught if "table_scale" in str(w.message)]
    assert said and "model.save" in said[0] and "get_config" in said[0], said
    assert set(report.unsavable_layers) == {"table_scale"}
    with pytest.raises(Exception):  # what the warning predicted
        prepared.save(tmp_path / "m.keras")


def test_savable_model_has_no_unsavable_layers():
    inputs = keras.Input((4,))
    _, report = prepare_model_with_report(keras.Model(inputs, keras.layers.Dense(3)(inputs)))
    assert report.unsavable_layers == {}


# ---- issue 11: one error hierarchy --------------------------------------------------------------

def test_prepare_error_is_a_prequant_error_naming_the_layer():
    class NoInput(keras.Model):
        def call(self, x):
            return x

    with pytest.raises(prequant.PrepareError) as info:
        prepare_model(NoInput(name="no_input"))
    err = info.value
    assert isinstance(err, PrepareError) and isinstance(err, prequant.UnsupportedError)
    assert isinstance(err, prequant.Error)
    assert err.node == err.layer_name == "no_input" and err.fix and err.reason
