"""prepare_model for tf_keras (Keras 2): nested and reused custom layers into a flat functional model.

Before: a built tf_keras model (Functional, Sequential or subclassed) whose custom layers nest
        further custom layers to any depth, reuse layers or whole blocks (a shared feature
        extractor called twice), and apply raw TensorFlow ops (``x + y``, ``tf.nn.relu``,
        ``tf.concat``) in call() — what tfmot's ``quantize_model`` refuses ("nested layers",
        "ModelTransformer does not support reused layers").
After:  ``tf_keras.Model(inputs, outputs)`` in which every layer is used once and is
        - a copy of a built-in tf_keras layer with the original's weights (one copy per use:
          reuse is unrolled into independent layers holding equal weights);
        - a built-in layer standing for a TensorFlow op: Add, Subtract, Multiply, Maximum,
          Minimum, Concatenate, ReLU (``tf.nn.relu6`` as ``ReLU(6)``) where the layer computes
          exactly what the op did; other ops stay TFOpLambda layers (tfmot's quantize_model
          needs the user's QuantizeConfig for those);
        - a custom layer kept whole ("opaque", with the reason in the report) when it holds
          weights of its own (``self.add_weight``) or its call() cannot run on symbolic
          tensors. tfmot cannot quantize such a layer without a QuantizeConfig.
        Outputs equal the original's in inference (``training=False``).

How: while tracing, tf_keras' ``Layer.__call__`` (and ``Model.__call__``) are swapped for an
interceptor (thread-local tracer, restored afterwards). A graph model's call() walks its own
nodes, a custom layer's call() runs directly on tf_keras KerasTensors, and each built-in layer
they call is replaced by a fresh copy called through tf_keras' own ``__call__``, which records the
node. Raw TF ops on KerasTensors become TFOpLambda layers by tf_keras' own dispatch; they reach
the interceptor like any layer call and are mapped there. Python recursion follows only the
user's own nesting (a custom layer's call() inside its parent's), as the model's forward pass does.
How a layer enters the new graph (a copy per use, a whole opaque copy, the shared original), its
unique name and its record are _tracer_core.TracerCore's, shared with the Keras 3 tracer
(_prepare_tracer); this module supplies the tf_keras hooks, graph models and TF-op mapping.

Imported only for a tf_keras model: importing it imports tf_keras.
"""

from __future__ import annotations

import inspect
import threading

import tensorflow as tf
import tf_keras
from tf_keras.src.engine import base_layer as _base_layer
from tf_keras.src.engine import training as _training
from tf_keras.src.engine.functional import Functional as _Functional
from tf_keras.src.engine.keras_tensor import KerasTensor as _KerasTensor
from tf_keras.src.layers.core.tf_op_layer import TFOpLambda as _TFOpLambda

from ._prepare_errors import NeedsOpaque, PrepareError
from ._prepare_report import LayerRecord, PrepareReport, account_variables
from ._tracer_core import MethodSwap, TracerCore, first_line

_L = tf_keras.layers
_ORIGINAL_LAYER_CALL = _base_layer.Layer.__call__
_ORIGINAL_MODEL_CALL = _training.Model.__call__
_state = threading.local()

_NEEDS_INPUT_FIX = (
    "pass input_layer=tf_keras.Input(shape=...) with the model's input shape (without the batch "
    "axis), or a list of tf_keras.Input for a model with several inputs.")


# ---- layer kinds --------------------------------------------------------------------------

def is_builtin_class(cls) -> bool:
    """A class tf_keras defines itself (copied as a leaf, never traced into)."""
    return (cls.__module__ or "").startswith("tf_keras.")


def own_weights(layer) -> list:
    """Weights ``layer`` created itself (add_weight), not those of its sublayers."""
    return list(layer._trainable_weights) + list(layer._non_trainable_weights)


def _is_graph_model(layer) -> bool:
    if isinstance(layer, tf_keras.Sequential):
        return type(layer).call is tf_keras.Sequential.call and getattr(layer, "_is_graph_network", False)
    return isinstance(layer, _Functional) and type(layer).call is _Functional.call \
        and getattr(layer, "_is_graph_network", False)


# ---- TF ops that are exactly a built-in layer ---------------------------------------------

def _op_table():
    add = getattr(getattr(tf, "__operators__", None), "add", None)
    merges = {tf.math.add: _L.Add, tf.math.subtract: _L.Subtract, tf.math.multiply: _L.Multiply,
              tf.math.maximum: _L.Maximum, tf.math.minimum: _L.Minimum}
    if add is not None:
        merges[add] = _L.Add
    table = {inspect.unwrap(fn): ("merge", cls) for fn, cls in merges.items()}
    table[inspect.unwrap(tf.nn.relu)] = ("relu", None)
    table[inspect.unwrap(tf.nn.relu6)] = ("relu", 6.0)
    table[inspect.unwrap(tf.concat)] = ("concat", None)
    return table


_OPS = None


def _float_tensors(tensors) -> bool:
    """All tf_keras KerasTensors of one floating dtype and one rank: a merge layer then
    computes what the op did (unequal ranks would insert axes, not broadcast)."""
    if not tensors or not all(isinstance(t, _KerasTensor) for t in tensors):
        return False
    dtypes = {t.dtype for t in tensors}
    return len(dtypes) == 1 and next(iter(dtypes)).is_floating and len({t.shape.rank for t in tensors}) == 1


def builtin_layer_for_op(function, args, kwargs, name):
    """``(layer, call_input)`` computing what TF op ``function(*args, **kwargs)`` computes, or None."""
    global _OPS
    if _OPS is None:
        _OPS = _op_table()
    entry = _OPS.get(inspect.unwrap(function))
    if entry is None:
        return None
    try:
        bound = inspect.signature(function).bind(*args, **kwargs)
    except (TypeError, ValueError):
        return None
    bound.apply_defaults()
    values = list(bound.arguments.values())
    kind, extra = entry
    if kind == "merge" and _float_tensors(values[:2]):
        return extra(name=name, dtype=values[0].dtype.name), list(values[:2])
    if kind == "relu" and _float_tensors(values[:1]):
        return _L.ReLU(max_value=extra, name=name, dtype=values[0].dtype.name), values[0]
    if kind == "concat":
        tensors, axis = list(values[0]), values[1]
        if isinstance(axis, int) and len(tensors) >= 2 and _float_tensors(tensors):
            return _L.Concatenate(axis=axis, name=name, dtype=tensors[0].dtype.name), tensors
    return None


# ---- interception -------------------------------------------------------------------------

def _intercepting(original):
    """``original`` (Layer.__call__ or Model.__call__) routed to this thread's tracer; each keeps
    its own fallback, since Model.__call__ ends in super().__call__, the intercepted Layer's."""

    def intercepted_call(layer, *args, **kwargs):
        tracer = getattr(_state, "tracer", None)
        if tracer is None or tracer.passthrough_depth:
            return original(layer, *args, **kwargs)
        return tracer.call_layer(layer, args, kwargs)

    return intercepted_call


_INTERCEPTION = MethodSwap([
    (_base_layer.Layer, "__call__", _intercepting(_ORIGINAL_LAYER_CALL)),
    (_training.Model, "__call__", _intercepting(_ORIGINAL_MODEL_CALL)),
])


# ---- the tracer -----------------------------------------------------------------------------

class TFKerasTracer(TracerCore):
    """Builds the new graph; one instance per prepare_model call."""

    _thread_state = _state
    _interception = _INTERCEPTION
    _STRICT_FIX = ("tfmot cannot quantize a custom layer without a QuantizeConfig: write its call() "
                   "with built-in sublayers (its weights in e.g. a Dense or Conv2D) and TF ops on its "
                   "inputs only, or call prepare_model(strict=False) to keep this layer whole and "
                   "annotate it with tfmot.quantization.keras.quantize_annotate_layer(layer, quantize_config).")

    def call_layer(self, layer, args, kwargs):
        if _is_graph_model(layer) and not own_weights(layer):
            return layer.call(*args, **_inference(layer, kwargs))
        if isinstance(layer, _TFOpLambda):
            mapped = self._call_mapped_op(layer, args, kwargs)
            if mapped is not None:
                return mapped
        if is_builtin_class(type(layer)):
            return self._call_copy(layer, args, kwargs)
        if own_weights(layer):
            names = ", ".join(w.name for w in own_weights(layer))
            return self._keep_opaque(layer, args, kwargs,
                                     f"has weights of its own ({names}) used directly in call(); kept whole")
        return self._trace_custom(layer, args, kwargs)

    def _call_mapped_op(self, layer, args, kwargs):
        kwargs = {k: v for k, v in kwargs.items() if not (k == "name" and v is None)}
        mapped = builtin_layer_for_op(layer.function, args, kwargs, self._unique_name(_op_name(layer)))
        if mapped is None:
            return None
        new, inputs = mapped
        try:
            with self._calling_through():
                outputs = new(inputs)
        except Exception:  # the merge layer refuses these shapes: keep the TFOpLambda
            self._names.discard(new.name)
            return None
        self._record(new, "op", f"tf.{layer.symbol or layer.function.__name__}")
        return outputs

    # -- hooks of TracerCore ------------------------------------------------------------

    def _clone(self, layer, name):
        config = layer.get_config()
        config["name"] = name
        return type(layer).from_config(config)

    def _copy_weights(self, layer, new):
        return _copy_weights(layer, new)

    def _inference_kwargs(self, layer, kwargs):
        return _inference(layer, kwargs)

    def _finish_trace(self, outputs):
        if not all(isinstance(t, _KerasTensor) for t in tf.nest.flatten(outputs)):
            raise NeedsOpaque("its call() returns something other than symbolic tensors")
        return outputs


def _inference(layer, kwargs):
    """kwargs with ``training=False`` where the layer's call() takes it and it is not given."""
    kwargs = dict(kwargs)
    if getattr(layer, "_expects_training_arg", False) and kwargs.get("training") is None:
        kwargs["training"] = False
    return kwargs


def _op_name(layer) -> str:
    return (layer.symbol or layer.function.__name__).replace(".", "_").strip("_")


def _copy_weights(source, target) -> list:
    src, dst = source.weights, target.weights
    if len(src) != len(dst) or any(tuple(a.shape) != tuple(b.shape) for a, b in zip(src, dst)):
        raise PrepareError(
            f"its copy's weights {[tuple(w.shape) for w in dst]} differ from the original's "
            f"{[tuple(w.shape) for w in src]}", layer_name=source.name,
            fix="build the model first (call it once on data) and pass input_layer with the shape "
            "it was built with.")
    for a, b in zip(src, dst):
        b.assign(a)
    return list(zip(src, dst))


# ---- entry point ----------------------------------------------------------------------------

def _as_input(item):
    if isinstance(item, _L.InputLayer):
        item = item.output
    history = getattr(item, "_keras_history", None)
    if not isinstance(item, _KerasTensor) or history is None or not isinstance(history.layer, _L.InputLayer):
        raise PrepareError(f"input_layer must be tf_keras.Input tensors for a tf_keras model, got {item!r}",
                           fix=_NEEDS_INPUT_FIX)
    return item


def _new_inputs(model, input_layer):
    """(the prepared model's inputs, what the original is called with)."""
    if input_layer is not None:
        given = tf.nest.map_structure(_as_input, input_layer)
        if isinstance(given, (list, tuple)) and len(given) == 1:
            given = given[0]
        return given, given
    if not getattr(model, "_is_graph_network", False):
        raise PrepareError(
            "the model is subclassed, so it has no Input layer to start the functional model from",
            layer_name=model.name, fix=_NEEDS_INPUT_FIX)
    flat = [tf_keras.Input(type_spec=x.type_spec, name=x._keras_history.layer.name) for x in model.inputs]
    struct = getattr(model, "_nested_inputs", None)
    new = tf.nest.pack_sequence_as(struct, flat) if struct is not None else (
        flat[0] if len(flat) == 1 else flat)
    return new, new


def prepare_tf_keras_model(original_model, input_layer=None, *, strict=False):
    """prepare_model for a tf_keras model: returns ``(tf_keras functional model, PrepareReport)``."""
    if not isinstance(original_model, tf_keras.Model):
        raise PrepareError(f"expected a tf_keras.Model, got {type(original_model).__name__}",
                           fix="wrap the layer in a tf_keras.Model, or pass the model itself.")
    inputs, call_inputs = _new_inputs(original_model, input_layer)
    if not original_model.built:
        try:
            original_model(tf.nest.map_structure(lambda x: tf.zeros([1, *x.shape[1:]], x.dtype), call_inputs))
        except Exception as err:
            raise PrepareError(f"the model is not built, and calling it on input_layer failed: {first_line(err)}",
                               layer_name=original_model.name,
                               fix="build the model (call it once on data) before preparing it.") from err
    flat_inputs = tf.nest.flatten(inputs)
    tracer = TFKerasTracer(strict=strict, reserved_names=[x._keras_history.layer.name for x in flat_inputs])
    with tracer.active():
        if _is_graph_model(original_model) and not own_weights(original_model):
            outputs = original_model.call(call_inputs, training=False)
        else:
            outputs = tracer.call_layer(original_model, (call_inputs,), {})
    if not all(isinstance(t, _KerasTensor) for t in tf.nest.flatten(outputs)):
        raise PrepareError("its outputs include non-symbolic values", layer_name=original_model.name,
                           fix="return only tensors computed from the inputs from the model's call().")
    prepared = tf_keras.Model(inputs=inputs, outputs=outputs, name=original_model.name)
    report = _report(original_model, prepared, tracer)
    return prepared, report


def _report(original, prepared, tracer) -> PrepareReport:
    layers, homes = [], {}
    for layer in prepared.layers:
        origin = tracer.origins.get(id(layer))
        if origin is None:
            kind = "input" if isinstance(layer, _L.InputLayer) else "op"
            source = "input" if kind == "input" else f"tf.{getattr(layer, 'symbol', type(layer).__name__)}"
            layers.append(LayerRecord(layer.name, type(layer).__name__, kind, source))
            continue
        kind = origin.kind
        layers.append(LayerRecord(layer.name, type(layer).__name__, kind, origin.source, origin.note))
        for src, dst in origin.weight_pairs:
            homes.setdefault(id(src), []).append((kind, layer.name, dst.name))
    variables = account_variables(original.weights, homes, lambda var: var.name)
    custom = {type(l).__name__: type(l) for l in prepared.layers if not is_builtin_class(type(l))}
    return PrepareReport(layers, variables, custom, list(tracer.warnings))

