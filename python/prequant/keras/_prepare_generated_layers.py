"""Layers prepare_model generates for computations that have no built-in Keras layer.

Before: a custom call() computes with a keras.ops function (``x / y``, ``x[:, 0]``), a raw
        TensorFlow function (``tf.shape``, ``tf.range``, ``tf.reshape``) or a constant tensor
        (``tf.range(0, 16)``); none of these is a layer, so a functional model either cannot
        hold them (raw TF on a Keras 3 KerasTensor raises) or hides them from ``model.layers``.
After:  each becomes one layer of these classes, visible in ``model.layers``, saved and
        reloaded by name (they are registered under the package "prequant"):

- ``KerasOpLayer``     runs one keras.ops Operation (its config is the Operation's own);
- ``TFFunctionLayer``  runs one TensorFlow function, stored as module + name;
- ``ConstantLayer``    outputs a fixed tensor kept as a non-trainable weight.

Non-tensor arguments (axes, shapes, slices, dtypes) are kept in an argument template whose
tensor positions are ``TensorSlot`` markers; the layer takes its tensors as one list.
"""

from __future__ import annotations

import importlib
import inspect

import keras
import numpy as np
from keras import tree

_TENSOR_KEY = "__tensor__"


class TensorSlot:
    """Marks where the i-th input tensor of a generated layer goes in its arguments."""

    __slots__ = ("index",)

    def __init__(self, index: int):
        self.index = index

    def __repr__(self) -> str:
        return f"TensorSlot({self.index})"


def split_tensor_arguments(args, kwargs):
    """Replace each KerasTensor in (args, kwargs) by a TensorSlot; return (template, tensors)."""
    tensors = []

    def take(value):
        if isinstance(value, keras.KerasTensor):
            tensors.append(value)
            return TensorSlot(len(tensors) - 1)
        return value

    template = tree.map_structure(take, (list(args), dict(kwargs)))
    return template, tensors


def fill_tensor_arguments(template, tensors):
    """Inverse of split_tensor_arguments: put ``tensors`` back into their slots."""
    filled_args, filled_kwargs = tree.map_structure(
        lambda v: tensors[v.index] if isinstance(v, TensorSlot) else v, template
    )
    return tuple(filled_args), filled_kwargs


# --- argument templates to and from JSON -------------------------------------------------
# Keras' own serializer turns tuples into lists, which changes meaning (a tuple index is a
# multi-axis index, a list index is a gather), so templates use explicit markers.
# The walk is recursive over argument literals only (a few levels), never over model depth.


def encode_template(value):
    """A JSON-ready form of an argument template; raises TypeError for what cannot be stored."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, TensorSlot):
        return {_TENSOR_KEY: value.index}
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, list):
        return [encode_template(v) for v in value]
    if isinstance(value, tuple):
        return {"__tuple__": [encode_template(v) for v in value]}
    if isinstance(value, dict):
        return {"__dict__": [[encode_template(k), encode_template(v)] for k, v in value.items()]}
    if isinstance(value, slice):
        return {"__slice__": [encode_template(value.start), encode_template(value.stop),
                              encode_template(value.step)]}
    if value is Ellipsis:
        return {"__ellipsis__": True}
    dtype_name = _dtype_name(value)
    if dtype_name is not None:
        return {"__dtype__": dtype_name}
    shape = _shape_dims(value)
    if shape is not None:
        return {"__tuple__": shape}
    raise TypeError(f"an argument of type {type(value).__name__} ({value!r}) cannot be saved")


def decode_template(value):
    """Inverse of encode_template."""
    if isinstance(value, list):
        return [decode_template(v) for v in value]
    if not isinstance(value, dict):
        return value
    if _TENSOR_KEY in value:
        return TensorSlot(value[_TENSOR_KEY])
    if "__tuple__" in value:
        return tuple(decode_template(v) for v in value["__tuple__"])
    if "__dict__" in value:
        return {decode_template(k): decode_template(v) for k, v in value["__dict__"]}
    if "__slice__" in value:
        return slice(*(decode_template(v) for v in value["__slice__"]))
    if "__ellipsis__" in value:
        return Ellipsis
    if "__dtype__" in value:
        return value["__dtype__"]
    raise ValueError(f"unknown argument template entry {value!r}")


def _dtype_name(value):
    if isinstance(value, np.dtype):
        return value.name
    if isinstance(value, type) and issubclass(value, np.generic):
        return np.dtype(value).name
    # tf.DType without importing tensorflow here: it has `name` and `as_numpy_dtype`.
    if hasattr(value, "as_numpy_dtype") and hasattr(value, "name"):
        return value.name
    return None


def _shape_dims(value):
    if hasattr(value, "as_list") and hasattr(value, "rank"):  # tf.TensorShape
        return None if value.rank is None else list(value.as_list())
    return None


class _GeneratedLayer(keras.layers.Layer):
    """Shared plumbing: tensors come in as one list and are never cast on the way in."""

    def __init__(self, arguments, **kwargs):
        kwargs.pop("autocast", None)
        super().__init__(autocast=False, **kwargs)
        # The op must see exactly the dtypes the original computation saw.
        self._convert_input_args = False
        self._allow_non_tensor_positional_args = True
        # Live construction passes the raw template; from_config passes the encoded one.
        self.arguments_template = (
            decode_template(arguments["template"]) if _is_encoded(arguments) else arguments
        )

    def _encoded_arguments(self):
        try:
            return {"encoded": True, "template": encode_template(self.arguments_template)}
        except TypeError as err:
            raise TypeError(
                f"Layer '{self.name}' ({type(self).__name__}) cannot be saved: {err}. "
                "Pass that argument as a Python literal, or keep the computation in a "
                "custom layer with get_config()."
            ) from err


def _is_encoded(arguments):
    return isinstance(arguments, dict) and arguments.get("encoded") is True


@keras.saving.register_keras_serializable(package="prequant")
class KerasOpLayer(_GeneratedLayer):
    """Runs one keras.ops Operation, e.g. the ``Divide`` that ``x / y`` records.

    Args:
        operation: a keras Operation instance, or its serialized form.
        arguments: argument template (see module doc) of the original call.
    """

    def __init__(self, operation, arguments, **kwargs):
        super().__init__(arguments, **kwargs)
        if isinstance(operation, dict):
            operation = keras.saving.deserialize_keras_object(operation)
        self.operation = operation

    def call(self, tensors):
        args, kwargs = fill_tensor_arguments(self.arguments_template, list(tensors))
        return self.operation(*args, **kwargs)

    def compute_output_spec(self, tensors):
        # Keras' own shape inference for this op: exactly what the original node had.
        args, kwargs = fill_tensor_arguments(self.arguments_template, list(tensors))
        return self.operation.compute_output_spec(*args, **kwargs)

    def get_config(self):
        config = super().get_config()
        config.update(
            operation=keras.saving.serialize_keras_object(self.operation),
            arguments=self._encoded_arguments(),
        )
        return config


@keras.saving.register_keras_serializable(package="prequant")
class TFFunctionLayer(_GeneratedLayer):
    """Runs one TensorFlow function (``tf.shape``, ``tf.range``, ``tf.reshape``, ...).

    The function is stored as its defining module and name, which is where TensorFlow's
    dispatch found it (for ``tf.shape`` that is ``tensorflow.python.ops.array_ops.shape``).

    Args:
        function: the TensorFlow function, or a ``"module:name"`` string.
        arguments: argument template of the original call.
    """

    def __init__(self, function, arguments, **kwargs):
        super().__init__(arguments, **kwargs)
        if isinstance(function, str):
            self.function_path = function
            self.function = resolve_function(function)
        else:
            self.function = function
            self.function_path = function_path(function)

    def call(self, tensors):
        args, kwargs = fill_tensor_arguments(self.arguments_template, list(tensors))
        return self.function(*args, **kwargs)

    def get_config(self):
        if self.function_path is None:
            raise TypeError(
                f"Layer '{self.name}' cannot be saved: TensorFlow function "
                f"{self.function!r} is not importable by module and name."
            )
        config = super().get_config()
        config.update(function=self.function_path, arguments=self._encoded_arguments())
        return config


def function_path(function) -> str | None:
    """``"module:name"`` under which ``function`` (or its undecorated core) can be imported."""
    module_name = getattr(function, "__module__", None)
    name = getattr(function, "__name__", None)
    if not module_name or not name:
        return None
    try:
        found = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError):
        return None
    # TensorFlow stacks decorators; the module attribute and the dispatched op may be two
    # wrappers of one function, which is as good.
    if inspect.unwrap(found) is not inspect.unwrap(function):
        return None
    return f"{module_name}:{name}"


def resolve_function(path: str):
    module_name, _, name = path.partition(":")
    return getattr(importlib.import_module(module_name), name)


@keras.saving.register_keras_serializable(package="prequant")
class ConstantLayer(keras.layers.Layer):
    """Outputs a fixed tensor, e.g. ``tf.range(0, 16)`` computed inside a custom call().

    Its input is ignored: it only gives the constant a place in the functional graph, so
    that layers applied to the constant (a position embedding) stay layers with weights.

    Args:
        shape: shape of the constant.
        value_dtype: dtype of the constant.
    """

    def __init__(self, shape, value_dtype, **kwargs):
        kwargs.pop("autocast", None)
        super().__init__(autocast=False, **kwargs)
        self._convert_input_args = False
        self.constant_shape = tuple(int(d) for d in shape)
        self.value_dtype = keras.backend.standardize_dtype(value_dtype)
        self.value = self.add_weight(
            name="value",
            shape=self.constant_shape,
            dtype=self.value_dtype,
            initializer="zeros",
            trainable=False,
        )
        self.built = True

    def build(self, input_shape):
        pass

    def call(self, anchor):
        return keras.ops.convert_to_tensor(self.value)

    def compute_output_spec(self, anchor):
        return keras.KerasTensor(self.constant_shape, dtype=self.value_dtype)

    def get_config(self):
        config = super().get_config()
        config.update(shape=list(self.constant_shape), value_dtype=self.value_dtype)
        return config


GENERATED_LAYER_CLASSES = (KerasOpLayer, TFFunctionLayer, ConstantLayer)
