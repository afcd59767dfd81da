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

This module holds the engine graph and builds it; what a layer is to the engine is in
``_engine_layers``, the way back in ``_engine_apply`` (in place) and ``_engine_rebuild`` (a new
model), all re-exported here, the import path the rest of the package uses.
"""

from __future__ import annotations

import warnings
from collections import Counter
from dataclasses import dataclass, field

import keras
import numpy as np
from keras import tree

from prequant import _core
from prequant.keras._tf_keras import is_tf_keras_object, tf_keras_message
from prequant.keras.activations import GatedActivation
from prequant.keras._engine_apply import (  # noqa: F401  (re-exported)
    add_bias_variable,
    apply_in_place,
    warn_fused_activation_before_bn,
)
from prequant.keras._engine_layers import (  # noqa: F401  (some re-exported)
    _MAX_POOL,
    L,
    PrequantKerasError,
    _activation_kind,
    _activation_name,
    _classify,
    _has_padding,
    _variable_copy,
    kernel_variable,
    layer_weight,
)
from prequant.keras._engine_rebuild import build_model  # noqa: F401  (re-exported)


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
