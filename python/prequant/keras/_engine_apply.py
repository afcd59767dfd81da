"""Apply the engine's results to a Keras model in place: the variables get the engine's arrays.

Before: an ``EngineGraph`` whose NumPy copies the engine has edited, and the engine's edits.
After:  each variable the engine changed holds its new value; ReLU6 → ReLU by attribute, new
        bias variables, new bounds on a ``BoundedReLU`` (the structural edits a built layer
        allows). A variable shared by two engine nodes whose copies now differ is refused
        before anything is written (``PrequantKerasError``), so the model stays as it was.
Also the warning the passes' front ends print for a fused activation before a BN.
"""

from __future__ import annotations

import warnings

import keras
import numpy as np

from prequant.keras._engine_layers import L, PrequantKerasError, _activation_name
from prequant.keras.activations import BoundedReLU, GatedActivation
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from prequant.keras._engine_graph import EngineGraph, Param

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
