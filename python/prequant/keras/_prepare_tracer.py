"""Trace a Keras model's layers, custom call() bodies and ops into new functional nodes.

Before: layers of any kind met while running a model symbolically: built-in leaves, custom
        layers (nested to any depth) whose call() mixes sublayer calls, Python arithmetic,
        keras.ops, raw TensorFlow functions and constants; layers reused several times.
After:  a graph of new KerasTensors in which every node is a layer object of its own:
        a copy of a built-in layer with the original's weights (one copy per use, so reuse is
        unrolled), a built-in layer for arithmetic (Add, Multiply, Concatenate, ReLU...), a
        generated KerasOpLayer / TFFunctionLayer / ConstantLayer, or a whole custom layer kept
        opaque (it has weights of its own, or its call() cannot be traced).

How (Keras 3, TensorFlow backend):
- A custom layer is traced by calling ``layer.call(...)`` directly on KerasTensors, with
  ``training=False`` as Keras passes it for inference.
- While tracing, ``Layer.__call__`` and ``Operation.symbolic_call`` are intercepted (class
  attributes swapped for the duration, thread-local tracer), so each sublayer call and each
  keras.ops call inside call() reaches this tracer instead of recording a node on the
  original object. ``Variable.value`` is guarded too: a call() reading a variable itself
  keeps its layer opaque instead of freezing the value into a constant.
- Raw TensorFlow functions raise on a KerasTensor; TensorFlow then offers the call to its
  registered global op dispatchers (the mechanism Keras 2 built TFOpLambda on; Keras 3 has
  none, keras #19525). A dispatcher registered here turns such a call into a node.
- Layer calls on concrete tensors (``self.pos_emb(tf.range(16))``: the symbolic input never
  reaches them) get a ConstantLayer input, so the layer stays a layer with its weights.
- Built-in layers, generated layers and opaque layers are called "through": Keras' own
  __call__ runs them, with interception off, and records their node.
- How a layer enters the new graph (a copy per use, a whole opaque copy, the shared original),
  its unique name and its record are _tracer_core.TracerCore's, shared with the tf_keras
  tracer (_tf_keras_prepare); this module supplies the Keras 3 hooks and the op handling.

The only Python recursion is through the user's own call() bodies (a nested custom layer's
call() runs inside its parent's), as deep as the model's own forward pass; graph models are
expanded with an explicit stack (_prepare_graph).
"""

from __future__ import annotations

import threading

import keras
import numpy as np
from keras import tree
from keras.src.backend.common.variables import Variable as KerasVariable
from keras.src.utils.naming import to_snake_case

try:  # raw TensorFlow functions can only appear with TensorFlow installed
    import tensorflow as tf
except ImportError:  # pragma: no cover - other Keras backends
    tf = None

from ._prepare_errors import NeedsOpaque
from ._prepare_generated_layers import (
    ConstantLayer,
    KerasOpLayer,
    TFFunctionLayer,
    split_tensor_arguments,
)
from ._prepare_graph import expand_graph_model, unpack_singleton
from ._prepare_layer_kinds import (
    LayerKind,
    classify,
    clone_layer,
    copy_weights,
    own_weights,
)
from ._prepare_op_mapping import (
    builtin_layer_for_operation,
    identity_operand,
    keras_equivalent_of_tf_call,
)
from ._tracer_core import MethodSwap, TracerCore, first_line

_Layer = keras.layers.Layer
_Operation = keras.Operation
_Variable = KerasVariable
# Captured at import, before any interception can be installed.
_ORIGINAL_LAYER_CALL = _Layer.__dict__["__call__"]
_ORIGINAL_SYMBOLIC_CALL = _Operation.__dict__["symbolic_call"]
_ORIGINAL_VARIABLE_VALUE = _Variable.__dict__["value"]

_thread_state = threading.local()
_tf_dispatcher = None


def _active_tracer():
    return getattr(_thread_state, "tracer", None)


# --- interception hooks -------------------------------------------------------------------


def _intercepted_layer_call(layer, *args, **kwargs):
    tracer = _active_tracer()
    if tracer is None or tracer.passthrough_depth:
        return _ORIGINAL_LAYER_CALL(layer, *args, **kwargs)
    return tracer.call_layer(layer, args, kwargs)


def _intercepted_symbolic_call(operation, *args, **kwargs):
    tracer = _active_tracer()
    if tracer is None or tracer.passthrough_depth or isinstance(operation, _Layer):
        return _ORIGINAL_SYMBOLIC_CALL(operation, *args, **kwargs)
    return tracer.call_operation(operation, args, kwargs)


def _guarded_variable_value(variable):
    # A custom call() reading a variable itself (weight tying, ``x * self.scale``) would
    # otherwise bake the value into a constant, silently detached from the weight.
    tracer = _active_tracer()
    if tracer is not None and not tracer.passthrough_depth:
        raise NeedsOpaque(f"its call() reads variable '{variable.path}' directly; "
                          "kept whole as one layer")
    return _ORIGINAL_VARIABLE_VALUE.fget(variable)


_GUARDED_VARIABLE_VALUE = property(_guarded_variable_value)


def _ensure_tf_dispatcher():
    """Register (once per process) the handler for raw TF functions on KerasTensors.

    It is inert outside a trace: it declines, and TensorFlow raises its usual error.
    """
    global _tf_dispatcher
    if _tf_dispatcher is not None or tf is None:
        return
    from tensorflow.python.util import dispatch

    class _KerasTensorDispatcher(dispatch.GlobalOpDispatcher):
        def handle(self, op, args, kwargs):
            tracer = _active_tracer()
            if tracer is None or tracer.passthrough_depth:
                return self.NOT_SUPPORTED
            if not any(isinstance(x, keras.KerasTensor) for x in tree.flatten((args, kwargs))):
                return self.NOT_SUPPORTED
            return tracer.call_tf_function(op, args, kwargs)

    _tf_dispatcher = _KerasTensorDispatcher()
    _tf_dispatcher.register()


_INTERCEPTION = MethodSwap([
    (_Layer, "__call__", _intercepted_layer_call),
    (_Operation, "symbolic_call", _intercepted_symbolic_call),
    (_Variable, "value", _GUARDED_VARIABLE_VALUE),
])


# --- the tracer ---------------------------------------------------------------------------


class Tracer(TracerCore):
    """Builds the new graph; one instance per prepare_model call.

    Args:
        anchor: a model input; constants are attached to the graph through it.
        strict: raise PrepareError instead of keeping an untraceable custom layer opaque.
        reserved_names: layer names already taken (the new Input layers).
    """

    _thread_state = _thread_state
    _interception = _INTERCEPTION
    _STRICT_FIX = ("write call() with layers, keras.ops or TensorFlow functions on its "
                   "inputs only (no Python branching on tensor values), or call "
                   "prepare_model(strict=False) to keep this layer whole.")
    _WHOLE_CALL_FIX = ("check that input_layer has the structure (one keras.Input, a list or a dict, as "
                       "call() reads its inputs), shape and dtype the model expects.")

    def __init__(self, anchor, *, strict: bool, reserved_names=()):
        super().__init__(strict=strict, reserved_names=reserved_names)
        self.anchor = anchor
        self.given_inputs = None  # the Inputs a subclassed model was given as a list (bind_by_name)

    # -- hooks of TracerCore ------------------------------------------------------------

    def _before_activate(self):
        _ensure_tf_dispatcher()

    def _clone(self, layer, name):
        return clone_layer(layer, name)

    def _copy_weights(self, layer, new):
        return copy_weights(layer, new)

    def _inference_kwargs(self, layer, kwargs):
        kwargs = dict(kwargs)
        if getattr(layer, "_call_has_training_arg", False) and kwargs.get("training") is None:
            kwargs["training"] = False  # what Keras passes a layer in inference
        return kwargs

    def _finish_trace(self, outputs):
        return self.symbolize_outputs(outputs)

    def _shared_warning(self, layer, note):
        self.unsavable[layer.name] = _save_failure(layer)
        return f"layer '{layer.name}': {note}. {self.unsavable[layer.name]}"

    # -- entry points -------------------------------------------------------------------

    def call_operation_or_layer(self, operation, args, kwargs):
        if isinstance(operation, _Layer):
            return self.call_layer(operation, args, kwargs)
        return self.call_operation(operation, args, kwargs)

    def call_layer(self, layer, args, kwargs):
        kind = classify(layer)
        if kind is LayerKind.GRAPH:
            outputs = expand_graph_model(self, layer, args, kwargs)
            # Functional.call hands back a one-output list as the tensor itself.
            return outputs if isinstance(layer, keras.Sequential) else unpack_singleton(outputs)
        args, kwargs = self._symbolize_constants(args, kwargs)
        if kind is LayerKind.BUILTIN:
            return self._call_copy(layer, args, kwargs)
        if kind is LayerKind.OWN_WEIGHTS:
            names = ", ".join(w.path for w in own_weights(layer))
            reason = (f"has weights of its own ({names}) used directly in call(); "
                      "kept whole as one layer")
            return self._call_opaque(layer, args, kwargs, reason)
        return self._trace_custom(layer, args, kwargs)

    def call_operation(self, operation, args, kwargs):
        """A keras.ops Operation (``x + y``, ``keras.ops.mean``, ``x[:, 0]``) becomes a layer."""
        args, kwargs = self._symbolize_constants(args, kwargs)
        unchanged = identity_operand(operation, args, kwargs)
        if unchanged is not None:
            return unchanged
        source = f"keras.ops {type(operation).__name__}"
        base_name = to_snake_case(type(operation).__name__)
        mapped = builtin_layer_for_operation(operation, args, kwargs, self._unique_name(base_name))
        if mapped is not None:
            layer, inputs = mapped
            try:
                with self._calling_through():
                    outputs = layer(inputs)
            except Exception:  # e.g. a merge layer refusing these shapes: stay generic
                outputs = None
            if outputs is not None:
                self._record(layer, "op", source)
                return outputs
        template, tensors = split_tensor_arguments(args, kwargs)
        layer = KerasOpLayer(operation, template, name=self._unique_name(f"op_{base_name}"))
        with self._calling_through():
            outputs = layer(tensors)
        self._record(layer, "op", source)
        return outputs

    def call_tf_function(self, function, args, kwargs):
        """A raw TensorFlow function called on KerasTensors becomes a layer."""
        args, kwargs = self._symbolize_constants(args, kwargs)
        equivalent = keras_equivalent_of_tf_call(function, args, kwargs)
        if equivalent is not None:
            return equivalent()  # keras.ops, which call_operation turns into a layer
        template, tensors = split_tensor_arguments(args, kwargs)
        layer = TFFunctionLayer(function, template,
                                name=self._unique_name(f"tf_{function.__name__}"))
        with self._calling_through():
            outputs = layer(tensors)
        self._record(layer, "op", f"tf {function.__module__}.{function.__name__}")
        return outputs

    def symbolize_outputs(self, outputs):
        """Concrete tensors among a call's outputs become ConstantLayer outputs."""
        return self._symbolize_constants((outputs,), {})[0][0]

    def _symbolize_constants(self, args, kwargs):
        """Concrete tensors in arguments become ConstantLayer outputs; variables stop the trace."""

        def convert(value):
            if isinstance(value, keras.KerasTensor):
                return value
            if _is_variable(value):
                raise NeedsOpaque(
                    f"its call() uses variable '{getattr(value, 'path', value.name)}' directly; "
                    "kept whole as one layer")
            if isinstance(value, np.ndarray) or _is_concrete_tensor(value):
                return self._constant(value)
            return value

        return tree.map_structure(convert, (tuple(args), dict(kwargs)))

    def _constant(self, value):
        array = value.numpy() if hasattr(value, "numpy") else np.asarray(value)
        if array.dtype.kind not in "biuf":
            raise NeedsOpaque(f"its call() uses a constant of dtype {array.dtype}; kept whole")
        layer = ConstantLayer(array.shape, array.dtype.name, name=self._unique_name("constant"))
        layer.value.assign(array)
        with self._calling_through():
            outputs = layer(self.anchor)
        self._record(layer, "constant", f"constant of shape {array.shape}, dtype {array.dtype}")
        return outputs


def _save_failure(layer) -> str:
    """What goes wrong when a model holding ``layer`` (whose config did not round-trip) is
    saved: saving needs its get_config(), loading needs from_config() of it."""
    try:
        layer.get_config()
    except Exception as err:
        return (f"Saving the prepared model (model.save) will fail: {type(layer).__name__}.get_config() "
                f"raises ({first_line(err)}); give the class a get_config() that returns its "
                f"constructor arguments")
    return (f"The prepared model saves, but will not load back: {type(layer).__name__} cannot be "
            f"rebuilt from its own get_config(); give the class a get_config() that returns its "
            f"constructor arguments")


def _is_variable(value) -> bool:
    return isinstance(value, keras.Variable) or (tf is not None and isinstance(value, tf.Variable))


def _is_concrete_tensor(value) -> bool:
    return not isinstance(value, keras.KerasTensor) and keras.ops.is_tensor(value)
