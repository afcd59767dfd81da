"""Carry a functional model of built-in layers between tf_keras (Keras 2) and Keras 3, both ways.

Before: a tf_keras functional model whose layers are built-in tf_keras layers (what
        prepare_model returns for a tf_keras model), or the Keras 3 model the Keras 3 front end
        (fold_all_batch_norms, equalize_model) built from it.
After:  the same graph in the other framework: one new layer per layer, made by the target's
        ``from_config`` of the source's config, holding the source's weights (``set_weights``),
        called on the mapped tensors node by node; layer names are kept, so a layer is found again
        by name. Outputs are equal (same kernels, same ops).

Preconditions: every layer is a built-in layer both frameworks have under the same class name
(Conv*, Dense, DepthwiseConv*, BatchNormalization, ReLU, Add, Concatenate, pooling...), or a
BoundedReLU or GatedActivation (prequant's; this module defines their tf_keras twins). A config option one framework
has and the other lacks is dropped only when it holds its neutral value (None, False, 0, 1, empty)
or acts in training only (an initializer, regularizer or constraint: the weights are copied);
otherwise the conversion raises PrequantKerasError naming the layer and the option.
The walk is iterative over the model's nodes in Keras' execution order.
"""

from __future__ import annotations

import inspect

import keras
import numpy as np
import tensorflow as tf
import tf_keras

from prequant.keras._engine_graph import PrequantKerasError
from prequant.keras.activations import BoundedReLU, GatedActivation

_SHAPE_KEYS = {"input_shape", "batch_input_shape", "batch_size", "input_dim"}
_NEUTRAL = (None, False, 0, 1, "", (), [], {})
_TRAINING_ONLY = ("_initializer", "_regularizer", "_constraint")  # weights are copied: no effect on the output


@tf_keras.saving.register_keras_serializable(package="prequant")
class TFKerasBoundedReLU(tf_keras.layers.Layer):
    """tf_keras twin of prequant.keras.BoundedReLU: ``min(clip(x, 0, max_value), upper[c])``
    (ReLU6 first, so the converter fuses it into the conv; max_value None: a plain ReLU),
    channel axis last."""

    def __init__(self, upper, max_value=None, **kwargs):
        super().__init__(**kwargs)
        self.max_value = None if max_value is None or np.isinf(max_value) else float(max_value)
        values = np.asarray(upper, dtype="float32").reshape(-1)
        self.upper = self.add_weight(name="upper", shape=(values.size,), trainable=False,
                                     initializer=tf_keras.initializers.Constant(values))

    def call(self, inputs):
        if self.max_value is None:
            lower = tf.nn.relu(inputs)
        elif self.max_value == 6.0:
            lower = tf.nn.relu6(inputs)
        else:
            lower = tf.clip_by_value(inputs, 0.0, self.max_value)
        return tf.minimum(lower, tf.cast(self.upper, inputs.dtype))

    def get_config(self):
        config = super().get_config()
        config["upper"] = [float(v) for v in self.upper.numpy()]
        config["max_value"] = self.max_value
        return config


def _scale_channels(x, factors, bias=None):
    """x[..., c]·factors[c] (+ bias) as a 1×1 depthwise convolution, as the Keras 3 layer's helper
    (prequant.keras.activations._scale_channels) writes it; rank 2 to 4, other ranks multiply."""
    rank = x.shape.rank
    if rank not in (2, 3, 4):
        y = x * factors
        return y if bias is None else y + bias
    x4 = x if rank == 4 else (x[:, None] if rank == 3 else x[:, None, None])
    y = tf.nn.depthwise_conv2d(x4, tf.reshape(factors, (1, 1, -1, 1)), strides=(1, 1, 1, 1), padding="VALID")
    if bias is not None:
        y = y + bias
    return y if rank == 4 else tf.squeeze(y, (1,) if rank == 3 else (1, 2))


@tf_keras.saving.register_keras_serializable(package="prequant")
class TFKerasGatedActivation(tf_keras.layers.Layer):
    """tf_keras twin of prequant.keras.GatedActivation: x·g(s[c]·x), channel axis last, written
    as the Keras 3 layer is (per-channel factors as 1×1 depthwise convolutions, which the TFLite
    converter quantizes per channel): x·sigmoid(dw_s(x)); dw_{1/6}(x)·relu6(dw_s(x) + 3);
    dw_{1/s}(gelu(dw_s(x)))."""

    def __init__(self, gate, gate_scale, **kwargs):
        super().__init__(**kwargs)
        GatedActivation(gate, gate_scale)  # the same argument checks
        self.gate = gate
        values = np.asarray(gate_scale, dtype="float32").reshape(-1)
        self.gate_scale = self.add_weight(name="gate_scale", shape=(values.size,), trainable=False,
                                          initializer=tf_keras.initializers.Constant(values))

    def call(self, inputs):
        scale = tf.cast(self.gate_scale, inputs.dtype)
        if self.gate == "sigmoid":
            return inputs * tf.sigmoid(_scale_channels(inputs, scale))
        if self.gate == "hard_sigmoid":
            gate6 = tf.nn.relu6(_scale_channels(inputs, scale, bias=3.0))
            return _scale_channels(inputs, tf.fill(tf.shape(scale), tf.cast(1.0 / 6.0, scale.dtype))) * gate6
        z = _scale_channels(inputs, scale)
        return _scale_channels(tf.nn.gelu(z, approximate=self.gate == "gelu_tanh"), 1.0 / scale)

    def get_config(self):
        config = super().get_config()
        config["gate"] = self.gate
        config["gate_scale"] = [float(v) for v in self.gate_scale.numpy()]
        return config


# prequant's Keras 3 layers and their tf_keras twins
_TWINS = ((BoundedReLU, TFKerasBoundedReLU), (GatedActivation, TFKerasGatedActivation))


def _plain(value):
    """A config value as plain Python: tracking ListWrappers and NumPy values unwrapped."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return tuple(_plain(v) for v in value)
    if isinstance(value, list):  # tf's ListWrapper is a list
        return [_plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def _accepted_keys(cls) -> set:
    keys = {"name", "trainable", "dtype", "activity_regularizer", "autocast"}
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is not None:
            keys.update(p for p in inspect.signature(init).parameters if p not in ("self", "args", "kwargs"))
    return keys


def _target_class(layer, into_tf_keras: bool):
    name = type(layer).__name__
    for keras3_class, tf_keras_class in _TWINS:
        if into_tf_keras and isinstance(layer, keras3_class):
            return tf_keras_class
        if not into_tf_keras and isinstance(layer, tf_keras_class):
            return keras3_class
    module = (type(layer).__module__ or "")
    builtin = module.startswith("tf_keras.") if not into_tf_keras else (module == "keras" or module.startswith("keras."))
    target = getattr((tf_keras if into_tf_keras else keras).layers, name, None)
    if not builtin or not isinstance(target, type):
        where = "tf_keras" if into_tf_keras else "Keras 3"
        raise PrequantKerasError(
            f"layer '{layer.name}' ({name}) has no {where} counterpart, so the tf_keras model cannot "
            f"go through the Keras 3 engine front end. Fix: run prequant.keras.prepare_model(model) "
            f"first (it maps TF ops to built-in layers and flattens custom layers); a custom layer "
            f"with weights of its own, a Lambda or an unmapped TF op (TFOpLambda) cannot be equalized")
    return target


def _convert_config(layer, target) -> dict:
    config = _plain(layer.get_config())
    dtype = config.get("dtype")
    if isinstance(dtype, dict):  # Keras 3 / new tf_keras serialized DTypePolicy
        config["dtype"] = dtype.get("config", {}).get("name", "float32")
    axis = config.get("axis")
    if isinstance(axis, list) and len(axis) == 1 and issubclass(target, keras.layers.BatchNormalization):
        config["axis"] = axis[0]  # tf_keras keeps BN's axis as a list, Keras 3 as an int
    for key, value in list(config.items()):
        if key.endswith("_initializer") and isinstance(value, dict):
            config[key] = _convert_initializer(value, into_tf_keras=target.__module__.startswith("tf_keras"))
    accepted = _accepted_keys(target)
    for key in list(config):
        if key in _SHAPE_KEYS or (key not in accepted and (config[key] in _NEUTRAL or key.endswith(_TRAINING_ONLY))):
            del config[key]
        elif key not in accepted:
            raise PrequantKerasError(
                f"layer '{layer.name}' ({type(layer).__name__}) has option {key}={config[key]!r}, "
                f"which {target.__module__.split('.')[0]}'s {target.__name__} does not have")
    return config


def _convert_initializer(value: dict, into_tf_keras: bool):
    """An initializer's config with only the arguments the target's class takes (the weights are
    copied anyway; the initializer matters only if the user re-initializes), None if it has none."""
    cls = getattr((tf_keras if into_tf_keras else keras).initializers, value.get("class_name", ""), None)
    if not isinstance(cls, type):
        return None
    params = set(inspect.signature(cls.__init__).parameters)
    return {"class_name": value["class_name"],
            "config": {k: v for k, v in value.get("config", {}).items() if k in params}}


def _new_layer(layer, into_tf_keras: bool):
    target = _target_class(layer, into_tf_keras)
    config = _convert_config(layer, target)
    try:
        return target.from_config(config)
    except Exception as err:
        raise PrequantKerasError(
            f"layer '{layer.name}' ({type(layer).__name__}) cannot be rebuilt in "
            f"{'tf_keras' if into_tf_keras else 'Keras 3'} from its config: {err}") from err


def _input_like(tensor, name, into_tf_keras: bool):
    shape, dtype = tuple(tensor.shape), tf.as_dtype(tensor.dtype).name
    if into_tf_keras:
        return tf_keras.Input(batch_size=shape[0], shape=shape[1:], dtype=dtype, name=name)
    return keras.Input(batch_shape=shape, dtype=dtype, name=name)


def _nodes(model):
    by_depth = model._nodes_by_depth
    return [n for d in sorted(by_depth, reverse=True) for n in by_depth[d] if not n.is_input]


def _convert(model, into_tf_keras: bool):
    """The walk shared by both directions; ``into_tf_keras`` says which way."""
    source_is_k3 = into_tf_keras
    inputs = list(model.inputs)
    values = {}
    new_inputs = []
    for x in inputs:
        producer = x._keras_history.operation if source_is_k3 else x._keras_history.layer
        new = _input_like(x, producer.name, into_tf_keras)
        values[id(x)] = new
        new_inputs.append(new)
    made = {}
    for node in _nodes(model):
        layer = node.operation if source_is_k3 else node.layer
        tensors = node.input_tensors if source_is_k3 else tf.nest.flatten(node.keras_inputs)
        if any(id(t) not in values for t in tensors):
            continue  # a node of another model sharing this layer
        if source_is_k3:
            args, kwargs = node.arguments.fill_in(values)
            outs = node.outputs
        else:
            args, kwargs = tf.nest.map_structure(
                lambda v: values[id(v)] if id(v) in values else v, (node.call_args, node.call_kwargs))
            outs = tf.nest.flatten(node.outputs)
        fresh = id(layer) not in made
        if fresh:
            made[id(layer)] = _new_layer(layer, into_tf_keras)
        new = made[id(layer)]
        result = new(*args, **kwargs)
        if fresh:  # built by the call: now it has weights to receive
            source_weights = layer.get_weights()
            if len(source_weights) != len(new.weights):
                raise PrequantKerasError(
                    f"layer '{layer.name}' ({type(layer).__name__}) has {len(source_weights)} weights but "
                    f"its {'tf_keras' if into_tf_keras else 'Keras 3'} copy has {len(new.weights)}")
            new.set_weights(source_weights)
        for original, converted in zip(outs, tf.nest.flatten(result)):
            values[id(original)] = converted
    outputs = [values[id(x)] for x in model.outputs]
    make = tf_keras.Model if into_tf_keras else keras.Model
    out_struct = outputs[0] if len(outputs) == 1 else outputs
    in_struct = new_inputs[0] if len(new_inputs) == 1 else new_inputs
    return make(inputs=in_struct, outputs=out_struct, name=model.name)


def convert_to_keras3(model):
    """The tf_keras functional (or built Sequential) ``model`` as a Keras 3 functional model."""
    if not getattr(model, "_is_graph_network", False):
        raise PrequantKerasError(
            f"{type(model).__name__} '{model.name}' is a subclassed tf_keras model: its layers are "
            f"connected by Python code. Fix: run prequant.keras.prepare_model(model, input_layer="
            f"tf_keras.Input(...)) first, which returns a tf_keras functional model")
    return _convert(model, into_tf_keras=False)


def convert_to_tf_keras(model):
    """The Keras 3 functional ``model`` (built-in layers and BoundedReLU) as a tf_keras model."""
    return _convert(model, into_tf_keras=True)
