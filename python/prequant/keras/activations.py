"""BoundedReLU: ReLU with a per-channel upper bound — the exact form of ReLU6 after scaling.

Cross-layer scaling divides the channels entering a ReLU6 by s[c]; ReLU6 then no longer
computes the same function unless its bound becomes 6/s[c]. With the 'bound' ReLU6 policy the
engine computes those bounds and the Keras front end puts this layer where the ReLU6 was
(a ``ReLU(max_value=6)`` layer, an ``Activation('relu6')`` or a conv's fused
``activation='relu6'``), so the equalized model's FP32 output equals the original's.

    y = min(max(x, 0), upper[c])     (c: the channel axis, last — channels_last)

The bounds are a non-trainable weight (``upper``), so high-bias absorption can lower them in
place, and they are also in ``get_config()``, so ``from_config`` gives a complete layer. The
class is registered as ``prequant>BoundedReLU``: models holding it save and reload as
``.keras`` in any process that imported ``prequant.keras`` (which imports this module).
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

__all__ = ["BoundedReLU"]


@keras.saving.register_keras_serializable(package="prequant")
class BoundedReLU(keras.layers.Layer):
    """ReLU clipped at a per-channel upper bound (channel axis last)."""

    def __init__(self, upper, **kwargs):
        super().__init__(**kwargs)
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
        return ops.minimum(ops.relu(inputs), upper)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config["upper"] = [float(v) for v in np.asarray(self.upper.numpy(), dtype="float64")]
        return config
