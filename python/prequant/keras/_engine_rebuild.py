"""Build a new functional Keras model in canonical form from the engine's results.

Before: an ``EngineGraph`` whose NumPy copies the engine has edited; the BNs it removed, the
        layers it gave a bias, its activation edits.
After:  a new model: folded batch norms gone, changed layers new layers holding the engine's
        arrays, every SeparableConv a DepthwiseConv + 1×1 Conv, every fused activation a layer of
        its own, ReLU6s replaced (``ReLU``) or bounded (``BoundedReLU``), scaled x·g(x)
        activations ``GatedActivation``. Layers the engine never writes are reused (shared with
        the original model). The original model is not changed.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import tree

from prequant.keras._engine_apply import _edit_map
from prequant.keras._engine_layers import _DEPTHWISE_OF, _POINTWISE_OF, L, kernel_variable
from prequant.keras.activations import BoundedReLU, GatedActivation
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from prequant.keras._engine_graph import EngineGraph, Entry

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


