"""Translate a Keras model into the engine's graph, and apply the engine's edits back.

Before: a built Functional (or Sequential) Keras 3 model, channels_last.
After:  an ``EngineGraph``: a ``_core.Graph`` whose parameters are writable NumPy copies of
        the layers' variables, in Keras layout (a depthwise kernel (k..., C, M) is handed over
        as its (k..., 1, C·M) view), and the way back from engine node names to layers. The
        engine edits the copies; nothing reaches the model before the engine call returned, so
        a failing call leaves the model untouched. Then either

        - ``apply_in_place`` assigns the copies back to the variables and makes the few
          structural edits a built Keras layer allows: ReLU6 → ReLU by attribute
          (``ReLU.max_value``, ``Activation.activation``, a conv's fused ``activation``), a new
          bias variable on a conv or dense layer, new bounds on a ``BoundedReLU``; or
        - ``build_model`` builds a new functional model in canonical form: folded batch norms
          are gone, layers the engine changed are new layers holding the engine's arrays,
          every SeparableConv is a DepthwiseConv + 1×1 Conv, every fused activation
          (``Conv2D(..., activation='relu')``) is a layer of its own, ReLU6s the engine
          replaced are ``ReLU``, ReLU6s it bounded are ``BoundedReLU`` and x·g(x) activations
          it scaled through are ``GatedActivation``. Layers the engine
          never writes (pooling, add, opaque custom layers, batch norms that stay) are reused,
          so the new model shares them (and their weights) with the original.

How each Keras layer is translated (exact class match; a subclass may compute something
else, so it is opaque):

    Conv1D/2D/3D            conv, kernel (k..., I/g, O): out axis -1, in axis -2, groups
    DepthwiseConv1D/2D      conv, kernel (k..., C, M) viewed as (k..., 1, C·M), groups C
    SeparableConv1D/2D      two convs: depthwise (as above) → pointwise (1.., C·M, O)
    Conv1D/2D/3DTranspose   conv, kernel (k..., O, I): out axis -2, in axis -1, transposed
    Dense                   linear, kernel (I, O): out axis 1, in axis 0
    BatchNormalization      batch_norm (axis last); absent gamma/beta become ones/zeros
    ReLU                    relu, or clip(0, max_value); negative_slope/threshold ≠ 0: opaque
    Activation              relu / relu6 (clip 0..6) / leaky_relu / linear (identity)
    LeakyReLU, PReLU        leaky_relu (negative_slope), prelu (alpha, any shape)
    BoundedReLU (prequant)  clip with per-channel upper bounds
    Activation swish/silu, hard_swish/hard_silu, gelu (erf; a functools.partial with
    approximate=True: tanh), GatedActivation (prequant)      gated: x·g(s[c]·x)
    ZeroPadding1D/2D/3D     zero_pad
    pooling (max, average, global, adaptive; channels_last)    pool
    Dropout & co., Identity, GaussianNoise, ActivityRegularization: identity (inference)
    a conv's fused activation: its own activation node after the conv
    anything else (Add, Concatenate, Flatten, nested models, ...): opaque

A layer with weights (or a ReLU6, a batch norm) called at several places is opaque: the engine
would have to edit every call alike (``prequant.keras.prepare_model`` unrolls such layers).
The front end decides nothing about folding or scaling: it only says what each node is.
"""

from __future__ import annotations

import functools
import warnings
from collections import Counter
from dataclasses import dataclass, field

import keras
import numpy as np
from keras import tree

from prequant import _core
from prequant.keras._tf_keras import is_tf_keras_object, tf_keras_message
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


# ---- what one Keras node becomes -----------------------------------------------------------

@dataclass
class Param:
    """A variable handed to the engine: its writable copy (Keras layout). `variable` is None for
    a value the front end made up (a BN without gamma/beta); such values are never written back."""

    variable: object
    array: np.ndarray


@dataclass
class Entry:
    """One call of a layer (or Keras operation) in the model, and the engine nodes it became."""

    op: object                  # the Layer / Operation
    node: object                # its Keras Node (this call)
    kind: str                   # conv, depthwise, separable, conv_transpose, dense, batch_norm,
                                # relu, clip, bounded, leaky_relu, prelu, identity, zero_pad,
                                # pool, opaque
    name: str                   # the engine node of the layer (separable: the pointwise part)
    parts: list[str] = field(default_factory=list)  # every engine node made from this call
    depthwise: str | None = None   # separable: the engine node of its depthwise part
    act: str | None = None         # engine node of a fused activation
    reason: str = ""               # opaque: why


@dataclass
class EngineGraph:
    """A model's engine graph and the way back from engine names to layers."""

    graph: _core.Graph
    model: object                  # the model given
    functional: object             # the Functional whose nodes were translated
    entries: list[Entry] = field(default_factory=list)
    by_name: dict[str, Entry] = field(default_factory=dict)   # engine node -> entry
    first_call: dict[int, Entry] = field(default_factory=dict)  # id(layer) -> its first call
    params: dict[tuple[str, str], Param] = field(default_factory=dict)  # (node, role) -> copy
    tensor_names: dict[int, str] = field(default_factory=dict)  # id(KerasTensor) -> name
    taken_names: set[str] = field(default_factory=set)

    def layer(self, node_name: str):
        return self.by_name[node_name].op

    def tensor(self, kt) -> str:
        name = self.tensor_names.get(id(kt))
        if name is None:
            op, node_index, tensor_index = kt._keras_history
            name = f"{op.name}:{node_index}:{tensor_index}"
            self.tensor_names[id(kt)] = name
        return name

    def unique_name(self, base: str) -> str:
        name, k = base, 0
        while name in self.taken_names:
            k += 1
            name = f"{base}_{k}"
        self.taken_names.add(name)
        return name

    def node_of(self, layer, *, position: str = "layer") -> str:
        """The engine node of `layer`'s (single) call. A separable conv is two nodes: `position`
        'first' names its depthwise part (what reads the input), anything else its pointwise
        part (what writes the output)."""
        entry = self.first_call.get(id(layer))
        if entry is None:
            raise _core.InvalidRequestError(
                f"{type(layer).__name__} '{getattr(layer, 'name', layer)}' is not a layer of model "
                f"'{self.model.name}' (pass layers of the model given, e.g. model.get_layer(name))")
        if entry.kind == "opaque":
            raise _core.InvalidRequestError(
                f"{type(layer).__name__} '{layer.name}' is opaque to the engine: {entry.reason}")
        if entry.kind == "separable" and position == "first":
            return entry.depthwise
        return entry.name


def functional_of(model):
    """The Functional model whose nodes describe `model`."""
    if is_tf_keras_object(model):
        raise PrequantKerasError(tf_keras_message(model, "the Keras front end"))
    if isinstance(model, keras.Sequential):
        functional = getattr(model, "_functional", None)
        if functional is None:
            raise PrequantKerasError(
                f"Sequential model '{model.name}' is not built: give it an Input "
                f"(keras.Input(shape=...) as its first layer) or call model.build(input_shape) first")
        return functional
    if isinstance(model, keras.Model) and hasattr(model, "_nodes_by_depth") and hasattr(model, "_inputs_struct"):
        return model
    raise PrequantKerasError(
        f"{type(model).__name__} '{getattr(model, 'name', model)}' is a subclassed model: its layers are "
        f"connected by Python code the front end cannot see — run prequant.keras.prepare_model(model) "
        f"first, which returns a functional model")


def _nodes_in_order(functional) -> list:
    """The model's non-input nodes in Keras' own execution order (deepest first)."""
    by_depth = functional._nodes_by_depth
    return [
        node
        for depth in sorted(by_depth, reverse=True)
        for node in by_depth[depth]
        if node.operation is not None and not node.is_input
    ]


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


# ---- building the engine graph ---------------------------------------------------------------

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


def build_engine_graph(model) -> EngineGraph:
    """Translate `model` into an engine graph over copies of its weights."""
    functional = functional_of(model)
    nodes = _nodes_in_order(functional)
    calls = Counter(id(n.operation) for n in nodes)
    eg = EngineGraph(_core.Graph(), model, functional)
    eg.taken_names = {op.name for op in functional._operations} | {model.name}
    g = eg.graph
    g.graph_inputs = [eg.tensor(x) for x in functional.inputs]
    seen: Counter = Counter()
    for node in nodes:
        op = node.operation
        k = seen[id(op)]
        seen[id(op)] += 1
        name = op.name if k == 0 else eg.unique_name(f"{op.name}#{k}")
        kind, reason = _classify(op, node, calls[id(op)])
        entry = Entry(op, node, kind, name, reason=reason)
        _translate(eg, entry)
        eg.entries.append(entry)
        for part in entry.parts:
            eg.by_name[part] = entry
        if k == 0:
            eg.first_call[id(op)] = entry
    g.graph_outputs = [eg.tensor(x) for x in functional.outputs]
    g.lint()
    for e in eg.entries:  # the engine's own reasons call these only "Opaque": say why
        if e.kind == "opaque" and eg.first_call.get(id(e.op)) is e and "places" in e.reason:
            warnings.warn(f"'{e.op.name}': {e.reason}; the engine leaves it, and what it feeds or "
                          f"reads, as it is", stacklevel=3)
    return eg


def _param(eg: EngineGraph, node: str, role: str, variable, view_shape=None):
    array = _variable_copy(variable)
    eg.params[(node, role)] = Param(variable, array)
    return array if view_shape is None else array.reshape(view_shape)


def _made_up(eg: EngineGraph, node: str, role: str, array: np.ndarray) -> np.ndarray:
    eg.params[(node, role)] = Param(None, array)
    return array


def _translate(eg: EngineGraph, e: Entry) -> None:
    g, op, node = eg.graph, e.op, e.node
    ins = [eg.tensor(t) for t in node.input_tensors]
    outs = [eg.tensor(t) for t in tree.flatten(node.outputs)]
    kind = e.kind
    if kind == "opaque":
        e.parts = [e.name]
        g.add_opaque(e.name, e.reason, ins, outs)
        return
    data_in = ins[:1]
    op_type = type(op).__name__
    if kind in ("add", "concat"):
        e.parts = [e.name]
        g.add_activation(e.name, kind, ins, outs, op_type=op_type)
        return
    if kind in ("conv", "depthwise", "separable", "conv_transpose", "dense"):
        fused = getattr(op, "activation", None)
        act_kind, act_args = _activation_kind(fused)
        layer_out = outs
        if act_kind != "identity":
            e.act = eg.unique_name(f"{op.name}_{_activation_name(fused)}")
            layer_out = [f"{e.name}:pre_activation"]
        if kind == "separable":
            e.depthwise = eg.unique_name(f"{op.name}_depthwise")
            pointwise = eg.unique_name(f"{op.name}_pointwise")
            e.name = pointwise
            _add_depthwise(eg, e.depthwise, op, op.depthwise_kernel, None, data_in,
                           [f"{e.depthwise}:out"], op_type=f"{op_type} (depthwise part)")
            pw = op.pointwise_kernel
            g.add_conv(pointwise, [f"{e.depthwise}:out"], layer_out,
                       _param(eg, pointwise, "weight", pw), (-1, -2, 1, False),
                       _param(eg, pointwise, "bias", op.bias) if op.use_bias else None,
                       has_padding=False, spatial_rank=len(pw.shape) - 2, kind="conv",
                       op_type=f"{op_type} (pointwise part)",
                       names={"weight": pw.path, "bias": f"{op.name}/bias"})
            e.parts = [e.depthwise, pointwise]
        else:
            kernel, view, layout, engine_kind = layer_weight(op)
            spatial = 0 if engine_kind == "linear" else len(kernel.shape) - 2
            g.add_conv(e.name, data_in, layer_out, _param(eg, e.name, "weight", kernel, view), layout,
                       _param(eg, e.name, "bias", op.bias) if op.use_bias else None,
                       has_padding=_has_padding(op, tuple(kernel.shape)[:spatial]), spatial_rank=spatial,
                       kind=engine_kind, op_type=op_type,
                       names={"weight": kernel.path, "bias": f"{op.name}/bias"})
            e.parts = [e.name]
        if e.act is not None:
            _add_activation(eg, e.act, act_kind, act_args, layer_out, outs,
                            op_type=f"fused activation='{_activation_name(fused)}' of {op_type} '{op.name}'",
                            reason=f"fused activation '{_activation_name(fused)}' of '{op.name}'")
            e.parts.append(e.act)
        return
    e.parts = [e.name]
    if kind == "batch_norm":
        mean = _param(eg, e.name, "mean", op.moving_mean)
        var = _param(eg, e.name, "var", op.moving_variance)
        gamma = _param(eg, e.name, "gamma", op.gamma) if op.gamma is not None else \
            _made_up(eg, e.name, "gamma", np.ones_like(mean))
        beta = _param(eg, e.name, "beta", op.beta) if op.beta is not None else \
            _made_up(eg, e.name, "beta", np.zeros_like(mean))
        g.add_batch_norm(e.name, data_in, outs, gamma, beta, mean, var, eps=float(op.epsilon),
                         op_type=op_type, names={"gamma": f"{op.name}/gamma", "beta": f"{op.name}/beta",
                                                 "mean": op.moving_mean.path, "var": op.moving_variance.path})
        return
    if kind == "bounded":
        top = getattr(op, "max_value", None)
        g.add_activation(e.name, "clip", data_in, outs, clip_min=0.0,
                         clip_max=float("inf") if top is None else float(top),
                         clip_max_per_channel=np.asarray(op.upper.numpy(), "float64").tolist(),
                         op_type=op_type)
        return
    if kind == "relu" or kind == "clip":
        if type(op) is L.ReLU:
            args = {} if kind == "relu" else {"clip_min": 0.0, "clip_max": float(op.max_value)}
        else:
            _, args = _activation_kind(op.activation)
        _add_activation(eg, e.name, kind, args, data_in, outs, op_type=op_type)
        return
    if kind == "gated":
        if type(op) is GatedActivation:
            g.add_gated_activation(e.name, op.gate, data_in, outs,
                                   gate_scale=np.asarray(op.gate_scale.numpy(), "float64").tolist(), op_type=op_type)
        else:
            _add_activation(eg, e.name, kind, _activation_kind(op.activation)[1], data_in, outs, op_type=op_type)
        return
    if kind == "leaky_relu":
        alpha = float(op.negative_slope) if type(op) is L.LeakyReLU else 0.2
        g.add_activation(e.name, "leaky_relu", data_in, outs, alpha=alpha, op_type=op_type)
        return
    if kind == "prelu":
        g.add_activation(e.name, "prelu", data_in, outs, slope=_param(eg, e.name, "slope", op.alpha),
                         op_type=op_type)
        return
    pool_kind = ("max" if isinstance(op, _MAX_POOL) else "average") if kind == "pool" else ""
    g.add_activation(e.name, kind, data_in, outs, op_type=op_type, pool_kind=pool_kind)  # identity, zero_pad, pool


def _add_depthwise(eg, name, op, kernel, bias, ins, outs, op_type):
    shape = tuple(kernel.shape)  # (k..., C, M)
    channels, multiplier = shape[-2], shape[-1]
    view = shape[:-2] + (1, channels * multiplier)
    eg.graph.add_conv(name, ins, outs, _param(eg, name, "weight", kernel, view), (-1, -2, channels, False),
                      None if bias is None else _param(eg, name, "bias", bias),
                      has_padding=_has_padding(op, shape[:-2]), spatial_rank=len(shape) - 2, kind="conv",
                      op_type=op_type, names={"weight": kernel.path, "bias": f"{op.name}/bias"})


def _add_activation(eg, name, kind, args, ins, outs, op_type, reason=None):
    if kind == "opaque":
        eg.graph.add_opaque(name, reason or op_type, ins, outs)
    elif kind == "gated":
        eg.graph.add_gated_activation(name, args["gate"], ins, outs, op_type=op_type)
    else:
        eg.graph.add_activation(name, kind, ins, outs, op_type=op_type, **args)


# ---- applying the engine's edits in place ----------------------------------------------------

_EDIT_WHAT = {"replaced_with_relu": "relu", "bounded_per_channel": "bounded", "gate_scaled": "gated"}


def _edit_map(edits) -> dict[str, tuple[str, np.ndarray]]:
    """{engine activation node: ('relu' | 'bounded' | 'gated', upper bounds)}; later edits win.
    Final bounds and gate scales are read from the engine graph (later passes move them)."""
    out = {}
    for edit in edits:
        out[edit.node] = (_EDIT_WHAT[edit.kind], np.asarray(edit.upper_bound, dtype="float64"))
    return out


def _bias_slot(eg: EngineGraph, node_name: str):
    """(layer, how) for giving engine node `node_name` a bias in place, or (layer, None)."""
    e = eg.by_name[node_name]
    if e.kind == "separable" and node_name == e.depthwise:
        return e.op, None
    return e.op, e.kind


def apply_in_place(eg: EngineGraph, *, edits=(), bias_added=(), bounds_changed: bool = False) -> None:
    """Write the engine's arrays back into the model's variables and make the edits a built
    layer allows. Every edit is checked before anything is written: an edit that would need a
    new layer raises PrequantKerasError and leaves the model untouched."""
    edit_map = _edit_map(edits)
    plan = []
    for node_name, (what, _) in edit_map.items():
        e = eg.by_name[node_name]
        if what == "relu":
            if node_name == e.act or (e.kind == "clip" and type(e.op) in (L.ReLU, L.Activation)):
                plan.append(("relu", e, node_name))
                continue
        elif what == "bounded" and e.kind == "bounded":
            plan.append(("bounds", e, node_name))
            continue
        elif what == "gated" and type(e.op) is GatedActivation and node_name == e.name:
            plan.append(("gate", e, node_name))
            continue
        where = f"fused activation of '{e.op.name}'" if node_name == e.act else f"'{e.op.name}'"
        new = {"relu": "ReLU", "bounded": "a per-channel BoundedReLU", "gated": "a GatedActivation"}[what]
        raise PrequantKerasError(
            f"the engine would turn {where} ({type(e.op).__name__}) into {new}, which needs a new layer "
            f"that cannot be put into a built model in place. Use equalize_model (it returns a new "
            f"model with BoundedReLU layers), or relu6='replace' / 'skip', or "
            f"replace_relu6_with_relu(model) first")
    _refuse_split_shared_variables(eg)
    for node_name in bias_added:
        layer, how = _bias_slot(eg, node_name)
        if how is None:
            raise PrequantKerasError(
                f"the engine gave the depthwise part of SeparableConv '{layer.name}' a bias, which a "
                f"SeparableConv layer has no place for. Split it first: fold_all_batch_norms and "
                f"equalize_model return models whose SeparableConvs are DepthwiseConv + Conv layers")
        plan.append(("bias", eg.by_name[node_name], node_name))
    # Nothing can fail from here on but Keras itself.
    for param in eg.params.values():
        if param.variable is not None:
            param.variable.assign(param.array)
    for what, e, node_name in plan:
        if what == "relu":
            if node_name == e.act:
                e.op.activation = keras.activations.relu
            elif type(e.op) is L.ReLU:
                e.op.max_value = None
            else:
                e.op.activation = keras.activations.relu
        elif what == "bounds":
            _assign_bounds(e.op, eg.graph.node(node_name))
        elif what == "gate":
            e.op.gate_scale.assign(np.asarray(eg.graph.node(node_name).gate_scale, "float32"))
        else:
            add_bias_variable(e.op, eg.graph.added_bias(node_name))
    if bounds_changed:
        for e in eg.entries:
            if e.kind == "bounded":
                _assign_bounds(e.op, eg.graph.node(e.name))


def _assign_bounds(layer: BoundedReLU, node) -> None:
    """The engine's bounds (≤ its clip_max) and the outer clip into an existing BoundedReLU."""
    layer.upper.assign(np.asarray(node.clip_max_per_channel, "float32"))
    layer.max_value = None if np.isinf(node.clip_max) else float(node.clip_max)


def _refuse_split_shared_variables(eg: EngineGraph) -> None:
    """A variable held by several layers (``layer2._kernel = layer1._kernel``) reaches the engine
    as one copy per layer, which the engine may change differently; written back in place, the
    last copy would silently win over the others. Raise (before anything is written) when the
    engine changed a copy of such a variable."""
    copies: dict[int, list[tuple[str, Param]]] = {}
    for (node_name, _), param in eg.params.items():
        if param.variable is not None:
            copies.setdefault(id(param.variable), []).append((node_name, param))
    for group in copies.values():
        if len(group) < 2:
            continue
        variable = group[0][1].variable
        current = np.asarray(variable.numpy())
        if all(np.array_equal(p.array.reshape(current.shape), current) for _, p in group):
            continue
        layers = sorted({eg.by_name[n].op.name for n, _ in group})
        raise PrequantKerasError(
            f"variable '{variable.path}' is shared by layers {layers}, and the engine changed it for "
            f"one of them: written back in place it would change the others too. Use equalize_model "
            f"(it writes each layer's copy into a new model), or run prequant.keras.prepare_model "
            f"first (it gives every layer its own variables)", node=layers[0])


def add_bias_variable(layer, values: np.ndarray) -> None:
    """Give a built conv/dense layer without a bias one, holding `values` (Keras locks a built
    layer's state; this unlocks it for the one variable, as the layer's build() would create it)."""
    layer._tracker.unlock()
    try:
        layer.bias = layer.add_weight(
            name="bias", shape=(int(values.size),), initializer="zeros",
            regularizer=getattr(layer, "bias_regularizer", None),
            constraint=getattr(layer, "bias_constraint", None), trainable=True)
    finally:
        layer._tracker.lock()
    layer.use_bias = True
    layer.bias.assign(np.asarray(values).astype(layer.bias.dtype))


# ---- building the new model --------------------------------------------------------------------

def build_model(eg: EngineGraph, *, removed=(), bias_added=(), edits=()):
    """A new functional model in canonical form with the engine's results (see module doc).

    removed: engine names of folded batch norms; bias_added: engine names of layers the engine
    gave a bias; edits: the ActivationEdits of the ReLU6 policy. BoundedReLU bounds are read from
    the engine graph (high-bias absorption may have lowered them).
    """
    removed, bias_added, edit_map = set(removed), set(bias_added), _edit_map(edits)
    functional = eg.functional
    new_inputs = [
        keras.Input(batch_shape=x.shape, dtype=x.dtype, sparse=x.sparse, name=x._keras_history.operation.name)
        for x in functional.inputs
    ]
    values = {id(x): y for x, y in zip(functional.inputs, new_inputs, strict=True)}

    def bias_of(node_name):
        p = eg.params.get((node_name, "bias"))
        if p is not None:
            return p.array
        return eg.graph.added_bias(node_name) if node_name in bias_added else None

    for e in eg.entries:
        node = e.node
        outs = tree.flatten(node.outputs)
        if e.kind in ("conv", "depthwise", "separable", "conv_transpose", "dense"):
            x = values[id(node.input_tensors[0])]
            y = _new_layer_call(eg, e, x, bias_of)
            if e.act is not None:
                y = _activation_layer(eg, e, e.act, edit_map)(y)
            values[id(outs[0])] = y
            continue
        if e.kind == "batch_norm" and e.name in removed:
            values[id(outs[0])] = values[id(node.input_tensors[0])]
            continue
        if e.kind in ("clip", "relu", "bounded", "gated") and (e.name in edit_map or e.kind in ("bounded", "gated")):
            values[id(outs[0])] = _activation_layer(eg, e, e.name, edit_map)(values[id(node.input_tensors[0])])
            continue
        args, kwargs = node.arguments.fill_in(values)
        result = e.op(*args, **kwargs)
        for original, new in zip(outs, tree.flatten(result), strict=True):
            values[id(original)] = new
    outputs = [values[id(x)] for x in functional.outputs]
    return keras.Model(
        inputs=tree.pack_sequence_as(functional._inputs_struct, new_inputs),
        outputs=tree.pack_sequence_as(functional._outputs_struct, outputs),
        name=eg.model.name,
    )


def _activation_layer(eg: EngineGraph, e: Entry, node_name: str, edit_map):
    """The layer computing activation node `node_name` in the new model."""
    layer_name = e.op.name if node_name == e.name else node_name
    edit = edit_map.get(node_name)
    dtype = e.op.dtype_policy
    if edit is not None and edit[0] == "relu":
        return L.ReLU(name=layer_name, dtype=dtype)
    if (edit is not None and edit[0] == "gated") or (node_name == e.name and e.kind == "gated" and
                                                     type(e.op) is GatedActivation):
        node = eg.graph.node(node_name)  # the final scales (later rounds moved them)
        scale = np.asarray(node.gate_scale, "float64")
        return GatedActivation(node.gate, scale if scale.size else np.ones(_channels(e, node_name)),
                               name=layer_name, dtype=dtype)
    if node_name == e.name and e.kind == "gated":
        return e.op  # an unscaled Activation('swish') & co.: reused as it is
    if edit is not None or (node_name == e.name and e.kind == "bounded"):
        node = eg.graph.node(node_name)
        bounds = np.asarray(node.clip_max_per_channel, "float64")
        top = None if np.isinf(node.clip_max) else float(node.clip_max)
        return BoundedReLU(bounds, max_value=top, name=layer_name, dtype=dtype)
    return L.Activation(e.op.activation, name=layer_name, dtype=dtype)  # a fused activation


def _channels(e: Entry, node_name: str) -> int:
    """Channels (last axis) of the tensor activation node `node_name` of `e` writes."""
    return int(tree.flatten(e.node.outputs)[0].shape[-1])


def _call_holding(layer, x, kernel: np.ndarray, bias):
    """Call the new, unbuilt `layer` on x and give it `kernel` and `bias`. Its kernel initializer
    is swapped for zeros while it builds (drawing random values only to overwrite them is most of
    a large model's rebuild time) and restored, so its config is the original's."""
    attrs = [a for a in ("kernel_initializer", "depthwise_initializer") if hasattr(layer, a)]
    saved = {a: getattr(layer, a) for a in attrs}
    for a in attrs:
        setattr(layer, a, keras.initializers.Zeros())
    try:
        y = layer(x)
    finally:
        for a, value in saved.items():
            setattr(layer, a, value)
    kernel_variable(layer).assign(kernel)
    if bias is not None:
        layer.bias.assign(bias)
    return y


def _new_layer_call(eg: EngineGraph, e: Entry, x, bias_of):
    """Call fresh copies of conv/dense layer `e.op` on x, holding the engine's arrays."""
    op = e.op
    if e.kind != "separable":
        bias = bias_of(e.name)
        config = op.get_config()
        config.update(activation="linear", use_bias=bias is not None)
        return _call_holding(type(op).from_config(config), x, eg.params[(e.name, "weight")].array, bias)
    dw_bias, pw_bias = bias_of(e.depthwise), bias_of(e.name)
    cfg = op.get_config()
    dw = _DEPTHWISE_OF[type(op)](
        kernel_size=cfg["kernel_size"], strides=cfg["strides"], padding=cfg["padding"],
        depth_multiplier=cfg["depth_multiplier"], data_format=cfg["data_format"],
        dilation_rate=cfg["dilation_rate"], use_bias=dw_bias is not None,
        depthwise_initializer=cfg["depthwise_initializer"],
        depthwise_regularizer=cfg["depthwise_regularizer"],
        depthwise_constraint=cfg["depthwise_constraint"],
        name=e.depthwise, dtype=op.dtype_policy, trainable=op.trainable)
    y = _call_holding(dw, x, eg.params[(e.depthwise, "weight")].array, dw_bias)
    pw = _POINTWISE_OF[type(op)](
        filters=cfg["filters"], kernel_size=1, data_format=cfg["data_format"],
        use_bias=pw_bias is not None, kernel_initializer=cfg["pointwise_initializer"],
        bias_initializer=cfg["bias_initializer"], kernel_regularizer=cfg["pointwise_regularizer"],
        bias_regularizer=cfg["bias_regularizer"], activity_regularizer=cfg["activity_regularizer"],
        kernel_constraint=cfg["pointwise_constraint"], bias_constraint=cfg["bias_constraint"],
        name=e.name, dtype=op.dtype_policy, trainable=op.trainable)
    return _call_holding(pw, y, eg.params[(e.name, "weight")].array, pw_bias)


# ---- helpers for the passes' front ends --------------------------------------------------------

def warn_fused_activation_before_bn(eg: EngineGraph, declined) -> None:
    """Say why a BN right after a layer with a fused activation stayed, and the fix: the
    activation runs inside the layer, before the BN, so the BN does not read the layer's output."""
    for d in declined:
        for bn in d.nodes:
            e = eg.by_name.get(bn)
            if e is None or e.kind != "batch_norm":
                continue
            producer = e.node.input_tensors[0]._keras_history.operation
            layer = eg.first_call.get(id(producer))
            if layer is not None and layer.act is not None:
                warnings.warn(
                    f"BatchNormalization '{bn}' follows {type(layer.op).__name__} '{layer.op.name}', whose "
                    f"fused activation='{_activation_name(layer.op.activation)}' runs before the BN: the BN "
                    f"cannot be folded into it. Build the layer with activation=None and put the activation "
                    f"after the BN to make it foldable.", stacklevel=3)
