"""prepare_model: turn any Keras 3 model into a functional model of built-in leaf layers.

Before: a model built any way: a subclassed keras.Model; custom layers nested to any depth,
        holding Sequential or Functional models; layers and whole blocks reused (a shared
        feature extractor); arithmetic, keras.ops and raw TensorFlow functions in call();
        sublayers the symbolic input never reaches (a position embedding of ``tf.range``).
After:  ``keras.Model(inputs, outputs)`` whose every layer is one of
        - a copy of a built-in Keras layer with the original's weights (one copy per use:
          reuse is unrolled into independent layers holding equal weights);
        - a built-in layer standing for arithmetic: Add, Subtract, Multiply, Maximum,
          Minimum, Concatenate, ReLU (ReLU6 as ``ReLU(max_value=6)``), Softmax, ...;
        - a generated layer (KerasOpLayer, TFFunctionLayer, ConstantLayer) for other ops;
        - a custom layer kept whole ("opaque") when it uses weights of its own in call()
          (``self.add_weight``), or when its call() cannot be traced symbolically.
        Outputs equal the original's in inference (``training=False``).

The report (``prepare_model_with_report``, or the ``prequant_report`` attribute of the
model prepare_model returns) lists each new layer's origin, each original variable's new
home ("copied" / "opaque" / "shared" / "unused"), and the classes needed to reload.

Saving: ``prepared.save("m.keras")`` works, unless a layer that could not be copied had to
be kept as the original object and its config does not round-trip: prepare_model then warns
at once, naming the layer, and the report lists it in ``unsavable_layers``. Loading needs the
classes Keras cannot import by itself: prequant's layers (registered under the package
"prequant" by ``import prequant.keras``) and opaque custom layers (as for any Keras model).
``load_prepared_model(path, custom_objects={...})`` works in a fresh process;
``keras.models.load_model(path, custom_objects=report.custom_objects)`` once
``prequant.keras`` is imported.

Limits: an opaque layer is opaque to downstream tools (reported, with the reason, and
warned); Python branching on the ``training`` flag is traced as inference; Python control
flow on tensor values, or a call() reading a variable itself, keeps that layer opaque; a
layer whose config does not round-trip is shared with the original rather than copied
(reported as "shared"); unrolled copies no longer tie their weights in training; call() is
traced without Keras' automatic ``mask`` argument and input autocasting. Interception is
per thread: other threads using Keras meanwhile are unaffected.
"""

from __future__ import annotations

import warnings

import keras
from keras import tree
from keras.src.models.functional import Functional

from ._prepare_errors import NeedsOpaque, PrepareError
from ._prepare_graph import bind_by_name, expand_graph_model, input_name
from ._prepare_layer_kinds import LayerKind, classify
from ._prepare_report import PrepareReport, build_report
from ._prepare_tracer import Tracer
from ._tf_keras import is_tf_keras_object

__all__ = [
    "load_prepared_model",
    "prepare_model",
    "prepare_model_with_report",
    "PrepareError",
    "PrepareReport",
]

_NEEDS_INPUT_FIX = (
    "pass input_layer=keras.Input(shape=...) with the model's input shape (without the batch "
    "axis), or a list of keras.Input for a model with several inputs."
)


def prepare_model(original_model, input_layer=None, *, strict: bool = False):
    """Return ``original_model`` as a functional model of built-in leaf layers.

    Args:
        original_model: a built keras.Model (Functional, Sequential or subclassed).
        input_layer: what the new model starts from, as Keras takes a functional model's
            inputs: one ``keras.Input`` tensor (or InputLayer), a list of them, or a dict of them
            (for a model whose call() takes a dict; the dict is handed to call() as it is).
            Required when the model starts with a subclassed layer (a subclassed model has no
            Input layer); optional otherwise, e.g. to change the input shape. A list binds by
            name where the model's inputs have names: an Input named like one of a functional
            model's inputs feeds that input (also when a subclassed model hands the list on
            unchanged to a functional model); Inputs named like none of them bind by position;
            a binding that name and position would make differently raises PrepareError. A
            dict binds a functional model's inputs by key. The new model keeps the structure
            given, and the outputs keep the original's structure (dict, list, nested).
        strict: raise PrepareError instead of keeping a custom layer whose call() cannot be
            traced as one opaque layer.

    A tf_keras (Keras 2) model (give ``tf_keras.Input`` as input_layer) is prepared by
    ``_tf_keras_prepare`` into a tf_keras functional model that tfmot's ``quantize_model`` accepts.

    Returns:
        The prepared keras.Model; its ``prequant_report`` attribute holds the PrepareReport.

    Raises:
        PrepareError: naming the layer and the fix, when the model cannot be prepared.
    """
    prepared, report = prepare_model_with_report(original_model, input_layer, strict=strict)
    prepared.prequant_report = report
    return prepared


def prepare_model_with_report(original_model, input_layer=None, *, strict: bool = False):
    """As prepare_model, returning ``(prepared_model, PrepareReport)``."""
    if is_tf_keras_object(original_model):  # Keras 2: its own tracer, a tf_keras model back
        from ._tf_keras_prepare import prepare_tf_keras_model

        prepared, report = prepare_tf_keras_model(original_model, input_layer, strict=strict)
        for message in report.warnings:
            warnings.warn(f"prepare_model: {message}", stacklevel=2)
        return prepared, report
    if not isinstance(original_model, keras.Model):
        raise PrepareError(f"expected a keras.Model, got {type(original_model).__name__}",
                           fix="wrap the layer in a keras.Model, or pass the model itself.")
    inputs, call_inputs = _new_inputs(original_model, input_layer)
    _ensure_built(original_model, call_inputs)

    flat_inputs = tree.flatten(inputs)
    tracer = Tracer(flat_inputs[0], strict=strict, reserved_names=[input_name(x) for x in flat_inputs])
    if _graph_inputs(original_model) is None and isinstance(inputs, list):
        tracer.given_inputs = list(inputs)  # a graph model fed these as they are binds them by name
    with tracer.active():
        try:
            if classify(original_model) is LayerKind.GRAPH:
                outputs = expand_graph_model(tracer, original_model, (call_inputs,), {})
            else:
                outputs = tracer.call_layer(original_model, (call_inputs,), {})
            outputs = tracer.symbolize_outputs(outputs)
        except NeedsOpaque as err:  # raised outside any custom layer: nothing to keep whole
            raise PrepareError(err.reason, layer_name=original_model.name) from err

    not_tensors = [o for o in tree.flatten(outputs) if not isinstance(o, keras.KerasTensor)]
    if not_tensors:
        raise PrepareError(f"its outputs include non-tensors {not_tensors!r}",
                           layer_name=original_model.name,
                           fix="return only tensors from the model's call().")
    prepared = keras.Model(inputs=inputs, outputs=outputs, name=original_model.name)
    report = build_report(original_model, prepared, tracer)
    for message in report.warnings:
        warnings.warn(f"prepare_model: {message}", stacklevel=2)
    return prepared, report


def _as_input(item):
    """One input_layer item as its Input KerasTensor."""
    if isinstance(item, keras.layers.InputLayer):
        item = item.output
    history = getattr(item, "_keras_history", None)
    if not isinstance(item, keras.KerasTensor) or history is None or not isinstance(
        history.operation, keras.layers.InputLayer
    ):
        raise PrepareError(
            f"input_layer must be keras.Input tensors or InputLayers, got {item!r}",
            fix=_NEEDS_INPUT_FIX)
    return item


def _given_inputs(input_layer):
    """input_layer as given: one Input tensor, a list of them, or a dict of them (None if None)."""
    if input_layer is None:
        return None
    if isinstance(input_layer, dict):
        return {key: _as_input(item) for key, item in input_layer.items()}
    if isinstance(input_layer, (list, tuple)):
        return [_as_input(item) for item in input_layer]
    return _as_input(input_layer)


def _graph_inputs(model):
    """The Input tensors of a Functional model (its call() overridden or not) or of a built
    Sequential, or None for a subclassed model."""
    if not isinstance(model, (Functional, keras.Sequential)):
        return None
    try:
        inputs = model.inputs
    except (AttributeError, ValueError):  # a Sequential never built
        return None
    return list(inputs) if inputs else None


def _new_inputs(model, input_layer):
    """(the new model's inputs, what the original model is called with).

    A list binds to a graph model's inputs by name where the given Inputs are named like them
    (bind_by_name), a dict by its keys; the new model keeps the structure given.
    """
    given = _given_inputs(input_layer)
    originals = _graph_inputs(model)
    if originals is None:
        if given is None:
            raise PrepareError(
                "the model starts with a subclassed layer, so it has no Input layer to start "
                "the functional model from (a subclassed model's input shape is unknown)",
                layer_name=model.name, fix=_NEEDS_INPUT_FIX)
        if isinstance(given, list) and len(given) == 1:
            given = given[0]
        return given, given
    struct = getattr(model, "_inputs_struct", None)
    if isinstance(model, keras.Sequential):
        struct = None
    names = [input_name(x) for x in originals]
    if given is None:
        flat = [keras.Input(batch_shape=x.shape, dtype=x.dtype, sparse=x.sparse, name=input_name(x))
                for x in originals]
        new = flat[0] if struct is None and len(flat) == 1 else (
            flat if struct is None else tree.pack_sequence_as(struct, flat))
        return new, new
    if isinstance(given, dict):
        keys = sorted(struct) if isinstance(struct, dict) else names
        if sorted(given) != sorted(keys):
            raise PrepareError(
                f"input_layer's keys {sorted(given)} are not the model's inputs {sorted(keys)}",
                layer_name=model.name, fix="key the dict by the model's input names.")
        if isinstance(struct, dict):
            return given, {key: given[key] for key in struct}
        ordered = [given[n] for n in names]
    else:
        flat = given if isinstance(given, list) else [given]
        if len(flat) != len(originals):
            raise PrepareError(
                f"the model has {len(originals)} inputs but input_layer gives {len(flat)}",
                layer_name=model.name, fix=f"pass one keras.Input per model input {names}.")
        ordered = bind_by_name(flat, names, f"model '{model.name}'") or flat
    if struct is None:
        call = ordered[0] if len(ordered) == 1 else ordered
    else:
        call = tree.pack_sequence_as(struct, ordered)
    return given, call


def _ensure_built(model, inputs):
    """Create the weights of a never-called subclassed model, so that there is something
    to copy: call it once symbolically on inputs shaped like ``inputs``."""
    if model.built:
        return
    probe = tree.map_structure(lambda x: keras.Input(batch_shape=x.shape, dtype=x.dtype), inputs)
    try:
        model(probe)
    except Exception as err:
        raise PrepareError(
            f"the model is not built, and calling it on input_layer failed: {err}",
            layer_name=model.name,
            fix="build the model (call it once on data) before preparing it, and check that "
            "input_layer has the shape and dtype it expects.") from err


def load_prepared_model(path, custom_objects=None, **kwargs):
    """``keras.models.load_model`` for a saved prepared or equalized model, in any process.

    Every layer class prequant emits is registered with Keras by ``import prequant.keras`` (so
    plain ``keras.models.load_model`` works too once it is imported); pass the classes of
    opaque custom layers in ``custom_objects`` (``report.custom_objects`` lists them) unless
    they are registered with ``keras.saving.register_keras_serializable``.
    """
    import prequant.keras  # noqa: F401  (registers prequant's layer classes)

    return keras.models.load_model(path, custom_objects=custom_objects, **kwargs)
