"""Which keras.ops and TensorFlow functions in a call() become built-in Keras layers.

Before: ``x + y``, ``keras.ops.concatenate([a, b])``, ``tf.nn.relu6(x)`` inside a custom call().
After:  ``keras.layers.Add``, ``Concatenate``, ``ReLU(max_value=6)`` nodes that downstream
        tools (batch-norm folding, cross-layer equalization) recognise.

A mapping fires only where the layer computes exactly what the function did: the
elementwise merge layers (Add, Subtract, Multiply, Maximum, Minimum, Concatenate) need
tensors of equal rank (a merge layer of unequal ranks inserts axes after the batch axis,
which is not NumPy broadcasting) and of one floating dtype (the layer casts to its dtype).
Everything else stays a generated KerasOpLayer / TFFunctionLayer.

Matching is by class (keras Operations) or by the undecorated function object (TensorFlow),
never by name.
"""

from __future__ import annotations

import inspect

import keras
from keras.src.activations import activations as keras_activations
from keras.src.ops import core as ops_core
from keras.src.ops import nn as ops_nn
from keras.src.ops import numpy as ops_numpy

_MERGE_LAYERS = {
    ops_numpy.Add: keras.layers.Add,
    ops_numpy.Subtract: keras.layers.Subtract,
    ops_numpy.Multiply: keras.layers.Multiply,
    ops_numpy.Maximum: keras.layers.Maximum,
    ops_numpy.Minimum: keras.layers.Minimum,
}


def _activation_layer(op, dtype, name):
    """A built-in activation layer equal to unary Operation ``op``, or None."""
    kind = type(op)
    if kind is ops_nn.Relu:
        return keras.layers.ReLU(dtype=dtype, name=name)
    if kind is ops_nn.Relu6:
        return keras.layers.ReLU(max_value=6.0, dtype=dtype, name=name)
    if kind is keras_activations.ReLU:
        return keras.layers.ReLU(negative_slope=op.negative_slope, max_value=op.max_value,
                                 threshold=op.threshold, dtype=dtype, name=name)
    if kind is ops_nn.LeakyRelu:
        return keras.layers.LeakyReLU(negative_slope=op.negative_slope, dtype=dtype, name=name)
    if kind is ops_nn.Softmax and isinstance(op.axis, int):
        return keras.layers.Softmax(axis=op.axis, dtype=dtype, name=name)
    if kind is ops_nn.Sigmoid:
        return keras.layers.Activation("sigmoid", dtype=dtype, name=name)
    if kind is ops_numpy.Tanh:
        return keras.layers.Activation("tanh", dtype=dtype, name=name)
    if kind is ops_nn.Silu:
        return keras.layers.Activation("silu", dtype=dtype, name=name)
    if kind is ops_nn.HardSilu:
        return keras.layers.Activation("hard_silu", dtype=dtype, name=name)
    if kind is ops_nn.Gelu and not op.approximate:  # no activation name for the tanh form
        return keras.layers.Activation("gelu", dtype=dtype, name=name)
    return None


def identity_operand(op, args, kwargs):
    """The tensor ``op`` would return unchanged (a no-op convert_to_tensor), or None."""
    if type(op) is not ops_core.ConvertToTensor or kwargs or len(args) != 1:
        return None
    x = args[0]
    if not isinstance(x, keras.KerasTensor) or x.sparse or x.ragged:
        return None
    same_dtype = op.dtype is None or keras.backend.standardize_dtype(op.dtype) == x.dtype
    return x if same_dtype and not op.sparse and not op.ragged else None


def builtin_layer_for_operation(op, args, kwargs, name):
    """``(layer, call_input)`` computing what keras Operation ``op`` computes, or None.

    The layer is named ``name``.

    The caller must still be ready for the layer to reject its inputs when called (a merge
    layer checks broadcastability) and fall back to a generated layer then.
    """
    if kwargs:
        return None
    merge_layer = _MERGE_LAYERS.get(type(op))
    if merge_layer is not None and len(args) == 2:
        dtype = _common_float_dtype(args)
        if dtype is not None:
            return merge_layer(dtype=dtype, name=name), list(args)
    if type(op) is ops_numpy.Concatenate and len(args) == 1 and isinstance(args[0], (list, tuple)):
        dtype = _common_float_dtype(args[0])
        if dtype is not None and len(args[0]) >= 2:
            return keras.layers.Concatenate(axis=op.axis, dtype=dtype, name=name), list(args[0])
    if len(args) == 1:
        dtype = _common_float_dtype(args)
        if dtype is not None:
            layer = _activation_layer(op, dtype, name)
            if layer is not None:
                return layer, args[0]
    return None


def _common_float_dtype(tensors):
    """The one floating dtype of ``tensors`` if all are KerasTensors of equal rank, else None."""
    if not all(isinstance(t, keras.KerasTensor) for t in tensors):
        return None
    dtypes = {keras.backend.standardize_dtype(t.dtype) for t in tensors}
    ranks = {len(t.shape) for t in tensors}
    if len(dtypes) != 1 or len(ranks) != 1:
        return None
    dtype = dtypes.pop()
    return dtype if keras.backend.is_float_dtype(dtype) else None


# --- TensorFlow functions re-expressed as keras.ops ------------------------------------
# The keras.ops call then goes through the Operation mapping above. Entries are keyed by
# the undecorated function TensorFlow dispatches, found through the public API object.


def _binary(keras_fn):
    def convert(bound):
        return keras_fn(bound["x"], bound["y"])

    return convert, ("x", "y")


def _unary(keras_fn, argument):
    def convert(bound):
        return keras_fn(bound[argument])

    return convert, (argument,)


def _concat(bound):
    return keras.ops.concatenate(list(bound["values"]), axis=bound["axis"])


def _softmax(bound):
    axis = -1 if bound.get("axis") is None else bound["axis"]
    return keras.ops.softmax(bound["logits"], axis=axis)


def _leaky_relu(bound):
    return keras.ops.leaky_relu(bound["features"], negative_slope=bound["alpha"])


def _tf_conversions():
    import tensorflow as tf

    table = {
        tf.math.add: _binary(keras.ops.add),
        tf.math.subtract: _binary(keras.ops.subtract),
        tf.math.multiply: _binary(keras.ops.multiply),
        tf.math.maximum: _binary(keras.ops.maximum),
        tf.math.minimum: _binary(keras.ops.minimum),
        tf.concat: (_concat, ("values",)),
        tf.nn.relu: _unary(keras.ops.relu, "features"),
        tf.nn.relu6: _unary(keras.ops.relu6, "features"),
        tf.math.sigmoid: _unary(keras.ops.sigmoid, "x"),
        tf.math.tanh: _unary(keras.ops.tanh, "x"),
        tf.nn.softmax: (_softmax, ("logits",)),
        tf.nn.leaky_relu: (_leaky_relu, ("features",)),
    }
    return {inspect.unwrap(fn): entry for fn, entry in table.items()}


_TF_CONVERSIONS = None


def keras_equivalent_of_tf_call(function, args, kwargs):
    """A zero-argument callable doing ``function(*args, **kwargs)`` with keras.ops, or None.

    Only when every tensor operand is a KerasTensor of one dtype: TensorFlow refuses mixed
    dtypes where keras.ops would promote, so the two agree only then.
    """
    global _TF_CONVERSIONS
    if _TF_CONVERSIONS is None:
        _TF_CONVERSIONS = _tf_conversions()
    entry = _TF_CONVERSIONS.get(inspect.unwrap(function))
    if entry is None:
        return None
    convert, tensor_params = entry
    try:
        bound = inspect.signature(function).bind(*args, **kwargs)
    except TypeError:
        return None
    bound.apply_defaults()
    arguments = dict(bound.arguments)
    operands = []
    for param in tensor_params:
        value = arguments.get(param)
        operands.extend(value if isinstance(value, (list, tuple)) else [value])
    if not all(isinstance(t, keras.KerasTensor) for t in operands):
        return None
    if len({keras.backend.standardize_dtype(t.dtype) for t in operands}) != 1:
        return None
    return lambda: convert(arguments)
