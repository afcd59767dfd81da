"""What a Keras layer is to the engine: the layer facts the Keras front end's translation reads.

Before: a layer (or a Keras Operation) met in a functional model's graph.
After:  its engine kind and the reason when it is opaque (``_classify``), the kind and arguments
        of an activation function (``_activation_kind``: relu, clip, leaky_relu, gated), and
        writable NumPy copies of its kernel in Keras layout (``layer_weight``). Exact class
        matches only: a subclass may compute something else. Nothing is built or changed here;
        ``_engine_graph`` builds the engine graph from these facts.
"""

from __future__ import annotations

import functools

import keras
import numpy as np

from prequant import _core
from prequant.keras.activations import BoundedReLU, GatedActivation

L = keras.layers

_CONV = (L.Conv1D, L.Conv2D, L.Conv3D)
_DEPTHWISE = (L.DepthwiseConv1D, L.DepthwiseConv2D)
_SEPARABLE = (L.SeparableConv1D, L.SeparableConv2D)
_CONV_T = (L.Conv1DTranspose, L.Conv2DTranspose, L.Conv3DTranspose)
_WEIGHTED = _CONV + _DEPTHWISE + _SEPARABLE + _CONV_T + (L.Dense,)
_ZERO_PAD = (L.ZeroPadding1D, L.ZeroPadding2D, L.ZeroPadding3D)
_POOL = (
    L.MaxPooling1D, L.MaxPooling2D, L.MaxPooling3D,
    L.AveragePooling1D, L.AveragePooling2D, L.AveragePooling3D,
    L.GlobalAveragePooling1D, L.GlobalAveragePooling2D, L.GlobalAveragePooling3D,
    L.GlobalMaxPooling1D, L.GlobalMaxPooling2D, L.GlobalMaxPooling3D,
    L.AdaptiveAveragePooling1D, L.AdaptiveAveragePooling2D, L.AdaptiveAveragePooling3D,
    L.AdaptiveMaxPooling1D, L.AdaptiveMaxPooling2D, L.AdaptiveMaxPooling3D,
)
_MAX_POOL = (
    L.MaxPooling1D, L.MaxPooling2D, L.MaxPooling3D, L.GlobalMaxPooling1D, L.GlobalMaxPooling2D, L.GlobalMaxPooling3D,
    L.AdaptiveMaxPooling1D, L.AdaptiveMaxPooling2D, L.AdaptiveMaxPooling3D,
)
_IDENTITY = (
    L.Dropout, L.SpatialDropout1D, L.SpatialDropout2D, L.SpatialDropout3D, L.AlphaDropout,
    L.GaussianDropout, L.GaussianNoise, L.Identity, L.ActivityRegularization,
)
# Replacing the split parts of a separable conv in the new model.
_DEPTHWISE_OF = {L.SeparableConv1D: L.DepthwiseConv1D, L.SeparableConv2D: L.DepthwiseConv2D}
_POINTWISE_OF = {L.SeparableConv1D: L.Conv1D, L.SeparableConv2D: L.Conv2D}

_UNROLL_FIX = "run prequant.keras.prepare_model to unroll it"


class PrequantKerasError(_core.UnsupportedError):
    """A Keras model the engine cannot work on as it is; the message says the fix."""

# ---- classification ------------------------------------------------------------------------

def _activation_kind(fn) -> tuple[str, dict]:
    """A Keras activation function as an engine activation kind."""
    acts = keras.activations
    if fn is None or fn is acts.linear:
        return "identity", {}
    if fn is acts.relu:
        return "relu", {}
    if fn is acts.relu6:
        return "clip", {"clip_min": 0.0, "clip_max": 6.0}
    if fn is acts.leaky_relu:  # keras.activations.leaky_relu's default slope
        return "leaky_relu", {"alpha": 0.2}
    gate = _gate_of(fn)
    if gate is not None:
        return "gated", {"gate": gate}
    return "opaque", {}


def _gate_of(fn) -> str | None:
    """The engine gate of an x·g(x) activation function (swish/silu, hard_swish/hard_silu, gelu
    and functools.partial(gelu, approximate=...)), else None."""
    acts = keras.activations
    if fn is acts.silu:  # also keras.activations.swish
        return "sigmoid"
    if fn is acts.hard_silu:  # also keras.activations.hard_swish
        return "hard_sigmoid"
    approximate = False
    if isinstance(fn, functools.partial) and fn.func is acts.gelu and not fn.args and \
            set(fn.keywords) <= {"approximate"}:
        approximate, fn = bool(fn.keywords.get("approximate", False)), fn.func
    if fn is acts.gelu:
        return "gelu_tanh" if approximate else "gelu_erf"
    return None


def _activation_name(fn) -> str:
    try:
        return str(keras.activations.serialize(fn))
    except Exception:  # a custom callable
        return getattr(fn, "__name__", "activation")


def _data_format_ok(layer) -> bool:
    return getattr(layer, "data_format", "channels_last") == "channels_last"


def _classify(op, node, calls: int) -> tuple[str, str]:
    """(kind, reason-if-opaque) of one call of `op`."""
    if not isinstance(op, L.Layer):
        return "opaque", f"keras operation {type(op).__name__}"
    cls = type(op)
    cls_name = cls.__name__
    if isinstance(op, keras.Model):
        return "opaque", f"nested model {cls_name} '{op.name}' (run prequant.keras.prepare_model to flatten it)"
    n_inputs = len(node.input_tensors)
    if cls in _WEIGHTED + (L.BatchNormalization, BoundedReLU, GatedActivation) or (
            cls in (L.ReLU, L.Activation) and _is_relu6_like(op)) or (
            cls is L.Activation and _gate_of(op.activation) is not None):
        if calls > 1:
            return "opaque", f"{cls_name} called at {calls} places ({_UNROLL_FIX})"
    if cls in _WEIGHTED:
        if n_inputs != 1:
            return "opaque", f"{cls_name} called on {n_inputs} tensors"
        if not _data_format_ok(op):
            return "opaque", f"{cls_name} with data_format='{op.data_format}' (only channels_last is handled)"
        if getattr(op, "lora_enabled", False):
            return "opaque", f"{cls_name} with LoRA enabled (merge the LoRA weights first)"
        if getattr(op, "quantization_mode", None):
            return "opaque", f"{cls_name} quantized ({op.quantization_mode})"
        if cls in _CONV:
            return "conv", ""
        if cls in _DEPTHWISE:
            return "depthwise", ""
        if cls in _SEPARABLE:
            return "separable", ""
        if cls in _CONV_T:
            return "conv_transpose", ""
        return "dense", ""
    if cls is L.Add and n_inputs >= 2:
        return "add", ""
    if cls is L.Concatenate:
        rank = len(node.input_tensors[0].shape)
        if op.axis not in (-1, rank - 1):
            return "opaque", f"Concatenate on axis {op.axis} (only the channel axis -1 is a region node)"
        return "concat", ""
    if n_inputs != 1:
        return "opaque", f"{cls_name} called on {n_inputs} tensors"
    if cls in (L.UpSampling1D, L.UpSampling2D, L.UpSampling3D):
        if not _data_format_ok(op):
            return "opaque", f"{cls_name} with data_format='{op.data_format}'"
        return "resize", ""
    if cls is L.BatchNormalization:
        rank = len(node.input_tensors[0].shape)
        axis = op.axis if isinstance(op.axis, int) else None
        if axis is None or axis not in (-1, rank - 1):
            return "opaque", f"BatchNormalization over axis {op.axis} (only the last axis is handled)"
        if getattr(op, "renorm", False):
            return "opaque", "BatchNormalization with renorm"
        return "batch_norm", ""
    if cls is BoundedReLU:
        return "bounded", ""
    if cls is GatedActivation:
        return "gated", ""
    if cls is L.ReLU:
        if op.negative_slope or op.threshold:
            return "opaque", f"ReLU(negative_slope={op.negative_slope}, threshold={op.threshold})"
        return ("relu" if op.max_value is None else "clip"), ""
    if cls is L.Activation:
        kind, _ = _activation_kind(op.activation)
        return kind, ("" if kind != "opaque" else f"Activation('{_activation_name(op.activation)}')")
    if cls is L.LeakyReLU:
        return "leaky_relu", ""
    if cls is L.PReLU:
        return "prelu", ""
    if cls in _ZERO_PAD:
        return "zero_pad", ""
    if cls in _POOL:
        if not _data_format_ok(op):
            return "opaque", f"{cls_name} with data_format='{op.data_format}'"
        # No has_padding: Keras' 'same' average pooling divides by the real inputs only and max
        # pooling pads with -inf, so a shift of the input is a shift of the output everywhere
        # (measured: tests/keras/test_keras_engine_safety.py).
        return "pool", ""
    if cls in _IDENTITY:
        return "identity", ""
    return "opaque", cls_name


def _is_relu6_like(op) -> bool:
    if type(op) is L.ReLU:
        return op.max_value is not None
    return op.activation is keras.activations.relu6

# ---- the layers' variables ---------------------------------------------------------------

def _variable_copy(variable) -> np.ndarray:
    return np.array(variable.numpy(), copy=True, order="C")


def kernel_variable(layer):
    """The kernel Variable of a conv/dense layer (Conv and Dense keep it as `_kernel` behind a
    `kernel` property)."""
    var = getattr(layer, "_kernel", None)
    return layer.kernel if var is None else var


def layer_weight(layer):
    """(kernel variable, shape to view it as or None, layout, engine kind) of a Conv,
    DepthwiseConv, ConvTranspose or Dense layer, per the table in the module docstring; None for
    any other layer."""
    t = type(layer)
    if t in _CONV:
        return kernel_variable(layer), None, (-1, -2, layer.groups, False), "conv"
    if t in _DEPTHWISE:
        shape = tuple(layer.kernel.shape)  # (k..., C, M) -> (k..., 1, C·M), groups C
        return layer.kernel, shape[:-2] + (1, shape[-2] * shape[-1]), (-1, -2, shape[-2], False), "conv"
    if t in _CONV_T:
        return layer.kernel, None, (-2, -1, 1, True), "conv"
    if t is L.Dense:
        return kernel_variable(layer), None, (1, 0, 1, False), "linear"
    return None


def _has_padding(layer, kernel_shape) -> bool:
    padding = getattr(layer, "padding", "valid")
    return padding != "valid" and any(k > 1 for k in kernel_shape)

