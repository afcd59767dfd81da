"""BoundedReLU: ReLU6 followed by a per-channel upper bound — the exact form of ReLU6 after scaling.

Cross-layer scaling divides the channels entering a ReLU6 by s[c]; ReLU6 then no longer
computes the same function unless its bound becomes 6/s[c]. With the 'bound' ReLU6 policy the
engine computes those bounds — normalized so that every bound is at most 6 (a uniform factor on a
scaled pair's scales is free: gauge_clip_bounds.cpp) — and the Keras front end puts this layer
where the ReLU6 was (a ``ReLU(max_value=6)`` layer, an ``Activation('relu6')`` or a conv's fused
``activation='relu6'``), so the equalized model's FP32 output equals the original's.

    y = min(relu6(x), upper[c])     (c: the channel axis, last — channels_last;
                                     clip(x, 0, max_value) when max_value is not 6)

ReLU6 comes first so that the TFLite converter fuses it into the conv before (CONV_2D with a
fused RELU6, then MINIMUM): the conv output's quantized range is [0, 6], not its whole unclipped
range. ``max_value`` None (configs saved before it existed) means a plain ReLU.

The bounds are a non-trainable weight (``upper``), so high-bias absorption can lower them in
place, and they are also in ``get_config()``, so ``from_config`` gives a complete layer. The
class is registered as ``prequant>BoundedReLU``: models holding it save and reload as
``.keras`` in any process that imported ``prequant.keras`` (which imports this module).
"""

from __future__ import annotations

import math

import keras
import numpy as np
from keras import ops

__all__ = ["BoundedReLU"]


@keras.saving.register_keras_serializable(package="prequant")
class BoundedReLU(keras.layers.Layer):
    """ReLU6 (``clip(x, 0, max_value)``) then a per-channel upper bound (channel axis last)."""

    def __init__(self, upper, max_value=None, **kwargs):
        super().__init__(**kwargs)
        if max_value is not None and math.isinf(max_value):
            max_value = None  # the engine's "no outer clip"
        if max_value is not None and not max_value > 0:
            raise ValueError(f"BoundedReLU max_value must be a positive number or None, got {max_value}")
        self.max_value = None if max_value is None else float(max_value)
        values = np.asarray(upper, dtype="float64").reshape(-1)
        if values.size == 0:
            raise ValueError("BoundedReLU needs at least one upper bound")
        if np.isnan(values).any() or (values < 0).any():
            raise ValueError("BoundedReLU bounds must be non-negative numbers")
        self._initial_upper = values
        self.upper = self.add_weight(
            name="upper",
            shape=(values.size,),
            initializer=keras.initializers.Constant(values.astype("float32")),
            trainable=False,
            dtype="float32",
        )

    def build(self, input_shape):
        channels = input_shape[-1]
        if channels is not None and channels != self.upper.shape[0]:
            raise ValueError(
                f"BoundedReLU '{self.name}' has {self.upper.shape[0]} bounds but its input has "
                f"{channels} channels on the last axis"
            )
        self.built = True

    def call(self, inputs):
        upper = ops.cast(self.upper, inputs.dtype)
        if self.max_value is None:
            lower = ops.relu(inputs)
        elif self.max_value == 6.0:
            lower = ops.relu6(inputs)
        else:
            lower = ops.clip(inputs, 0.0, self.max_value)
        return ops.minimum(lower, upper)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config["upper"] = [float(v) for v in np.asarray(self.upper.numpy(), dtype="float64")]
        config["max_value"] = self.max_value
        return config
