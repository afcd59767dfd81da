"""BoundedReLU: ReLU6 followed by a per-channel upper bound — the exact form of ReLU6 after scaling.
GatedActivation: x·g(s[c]·x), the exact form of SiLU / HardSwish / GELU after scaling through them.

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
GatedActivation (``prequant>GatedActivation``) keeps its gate scales the same way; its class
docstring says how it is written for the TFLite converter.
"""

from __future__ import annotations

import math

import keras
import numpy as np
from keras import ops

__all__ = ["BoundedReLU", "GatedActivation"]


def _add_channel_constant(layer, name: str, values: np.ndarray):
    """A non-trainable float32 weight holding one value per channel (saved with the layer)."""
    return layer.add_weight(name=name, shape=(values.size,), trainable=False, dtype="float32",
                            initializer=keras.initializers.Constant(values.astype("float32")))


def _check_channels(layer, weight, what: str, input_shape) -> None:
    """The per-channel constant must match the input's channels (the last axis)."""
    channels = input_shape[-1]
    if channels is not None and channels != weight.shape[0]:
        raise ValueError(f"{type(layer).__name__} '{layer.name}' has {weight.shape[0]} {what} but its "
                         f"input has {channels} channels on the last axis")


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
        self.upper = _add_channel_constant(self, "upper", values)

    def build(self, input_shape):
        _check_channels(self, self.upper, "bounds", input_shape)
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


def _scale_channels(x, factors, bias=None):
    """x[..., c]·factors[c] (+ bias) as a 1×1 depthwise convolution: the TFLite converter fuses the
    bias (and a ReLU6 after it) into one DEPTHWISE_CONV_2D and quantizes the factors per channel.
    Rank 2 and 3 get unit axes (batch, 1, 1, C) / (batch, 1, L, C); other ranks multiply."""
    rank = len(x.shape)
    if rank not in (2, 3, 4):
        y = x * factors
        return y if bias is None else y + bias
    x4 = x if rank == 4 else ops.expand_dims(x, 1 if rank == 3 else (1, 2))
    y = ops.depthwise_conv(x4, ops.reshape(factors, (1, 1, -1, 1)), strides=1, padding="valid")
    if bias is not None:
        y = y + bias
    return y if rank == 4 else ops.squeeze(y, 1 if rank == 3 else (1, 2))


_GATES = ("sigmoid", "hard_sigmoid", "gelu_erf", "gelu_tanh")


@keras.saving.register_keras_serializable(package="prequant")
class GatedActivation(keras.layers.Layer):
    """x·g(s[c]·x) (channel axis last): SiLU / Swish (gate 'sigmoid'), HardSwish
    ('hard_sigmoid': relu6(z + 3)/6) or GELU ('gelu_erf': Φ(z); 'gelu_tanh': its tanh
    approximation) with a per-channel gate scale s, the exact form of the activation after
    cross-layer scaling through it.

    Scaling divides the producer's channel c by s[c] and multiplies the consumer's by s[c];
    x·g(x) at x = s·x' is s·(x'·g(s·x')), so the activation becomes x'·g(s·x') and the FP32
    output is unchanged (``equalize_model(..., gated_activations=True)`` puts this layer where
    ``Activation('swish' | 'hard_swish' | 'gelu')`` or a layer's fused activation was).

    Written for the TFLite converter, whose INT8 quantizer gives a constant MUL operand one scale
    for the whole tensor but a depthwise kernel one per channel: the per-channel factors (s, and
    1/s or 1/6) are 1×1 depthwise convolutions (DEPTHWISE_CONV_2D, per-channel quantized), so
    a factor two decades below the largest is not rounded to zero. 'sigmoid':
    x·sigmoid(dw_s(x)) (LOGISTIC, MUL); 'hard_sigmoid': dw_{1/6}(x)·relu6(dw_s(x) + 3) (the +3 is
    the depthwise bias, ReLU6 fused into it; MUL) — the forms x·relu6(·)/6 and x·hard_sigmoid(·)
    match the converter's hard-swish pattern and quantize wrongly (0.2 dB); GELU:
    dw_{1/s}(gelu(dw_s(x))) (GELU; an Erf would need TF Select ops). The same function for s > 0,
    which the engine guarantees (its scales are clamped to [1e-6, 1e6]); in FP32 each product is
    the one an elementwise multiply computes. Inputs of rank 2 to 4 go through the depthwise conv
    (rank 2 and 3 with unit axes added); other ranks multiply elementwise.
    ``gate_scale`` is a non-trainable weight and a config entry; registered as
    ``prequant>GatedActivation`` (a .keras file reloads in a process that imported prequant.keras).
    """

    def __init__(self, gate, gate_scale, **kwargs):
        super().__init__(**kwargs)
        if gate not in _GATES:
            raise ValueError(f"GatedActivation gate must be one of {_GATES}, got {gate!r}")
        values = np.asarray(gate_scale, dtype="float64").reshape(-1)
        if values.size == 0:
            raise ValueError("GatedActivation needs at least one gate scale")
        if not (np.isfinite(values).all() and (values > 0).all()):
            raise ValueError("GatedActivation gate scales must be positive finite numbers")
        self.gate = gate
        self.gate_scale = _add_channel_constant(self, "gate_scale", values)

    def build(self, input_shape):
        _check_channels(self, self.gate_scale, "gate scales", input_shape)
        self.built = True

    def call(self, inputs):
        scale = ops.cast(self.gate_scale, inputs.dtype)
        if self.gate == "sigmoid":
            return inputs * ops.sigmoid(_scale_channels(inputs, scale))
        if self.gate == "hard_sigmoid":
            gate6 = ops.relu6(_scale_channels(inputs, scale, bias=3.0))
            return _scale_channels(inputs, ops.full_like(scale, 1.0 / 6.0)) * gate6
        z = _scale_channels(inputs, scale)
        return _scale_channels(ops.gelu(z, approximate=self.gate == "gelu_tanh"), ops.divide(1.0, scale))

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config["gate"] = self.gate
        config["gate_scale"] = [float(v) for v in np.asarray(self.gate_scale.numpy(), dtype="float64")]
        return config
