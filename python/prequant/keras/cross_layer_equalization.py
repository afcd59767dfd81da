"""Cross-layer equalization for Keras (where AIMET users look: aimet_tensorflow.keras.cross_layer_equalization).

Before: a built functional (or Sequential) Keras model.
After:  the same function with per-channel weight ranges equalized across layers: batch norms
        folded, cross-layer scaling (pairs and conv → depthwise → conv triples, iterated to
        convergence over overlapping sets), high-bias absorption, and ReLU6 handled by a policy.

Every decision and all weight math happen in the C++ engine, on NumPy copies of the layers'
variables; this module translates the model and applies what the engine did. Nothing is
written to a model before the engine call returned, so a failing call leaves it untouched.

Two kinds of functions, because a built Keras model's structure cannot change in place:

- ``equalize_model`` and ``replace_relu6_with_relu`` (like ``batch_norm_fold.fold_*``) return a
  NEW functional model and leave the model given unchanged. ``equalize_model``'s default ReLU6
  policy 'bound' puts a ``BoundedReLU`` (per-channel clip, ``prequant.keras.activations``) where a
  ReLU6 was, so (with ``absorb_high_bias=False``, the default) the FP32 output equals the original's;
  'replace' uses ``ReLU`` for the ReLU6s between scaled layers only (as aimet-onnx does), which
  changes the FP32 function wherever activations exceed 6: before that scope was narrowed, on the
  pretrained EfficientNet-Lite0 it collapsed FP32 top-1 from 88.8 % to 57.5 % (FP32 SQNR 0.2 dB;
  docs/BENCHMARKS.md), so use it only for a model trained with ReLU; 'skip' leaves pairs with a
  ReLU6 between unscaled.
- ``CrossLayerScaling.scale_model``, ``CrossLayerScaling.scale_cls_sets`` and
  ``HighBiasFold.bias_fold`` work IN PLACE on the layers given (AIMET's contract): weights are
  assigned back; a layer without bias that the engine gives one gets a bias variable. They
  cannot put a BoundedReLU where a ReLU6 layer is, so their ReLU6 policy defaults to 'skip'
  ('replace' works in place: ``ReLU.max_value`` becomes None; 'bound' works only where the
  clip already is a BoundedReLU, and otherwise raises before changing anything). Use them on a
  model without batch norms (``fold_all_batch_norms``' new model): a BN between two layers
  blocks their scaling.

    CrossLayerScaling.scale_model(model, relu6='skip')               -> [ClsSetInfo]
    CrossLayerScaling.scale_cls_sets(cls_sets, model=None)           -> [scale | (scale12, scale23)]
    CrossLayerScaling.create_cls_set_info_list(cls_sets, scale_factors, is_relu_activation_in_cls_sets)
    HighBiasFold.bias_fold(cls_set_info_list, bn_layers)
    replace_relu6_with_relu(model)                                   -> (new_model, ActivationResult)
    equalize_model(model, relu6='bound', absorb_high_bias=False)     -> new_model
    equalize_model(..., return_result=True)                          -> (new_model, EqualizeResult)

Manual sets without a model (``scale_cls_sets(sets)``, ``bias_fold`` of
``create_cls_set_info_list``'s infos) work on an engine graph of the given layers only, each
set's layers connected in order: adjacency is then the caller's promise, as in AIMET. Pass
``model=`` to ``scale_cls_sets`` to have the sets checked against the model's graph.
"""

from __future__ import annotations

from typing import Sequence

import keras
import numpy as np

from prequant import _core, _manual_cls
from prequant._cls_info import ClsSetInfo, ClsSetLayerPairInfo, cls_set_infos
from prequant.keras import activations as _activations  # noqa: F401  (registers BoundedReLU, GatedActivation)
from prequant.keras._engine_graph import (
    Param,
    _has_padding,
    add_bias_variable,
    apply_in_place,
    build_engine_graph,
    build_model,
    layer_weight,
    warn_fused_activation_before_bn,
)
from prequant.keras._tf_keras import is_tf_keras_object

__all__ = [
    "ClsSetInfo",
    "ClsSetLayerPairInfo",
    "CrossLayerScaling",
    "HighBiasFold",
    "equalize_model",
    "replace_relu6_with_relu",
]

DEFAULT_MAX_ITERATIONS = _core.DEFAULT_MAX_ITERATIONS  # the engine's one default (passes.h)
L = keras.layers


# ---- the manual APIs' translation (the bookkeeping is prequant._manual_cls) -----------------------

class _ChainLayers:
    """The Keras side of a chain graph of given layers: NumPy copies of their variables, assigned
    back once the engine returned (so a failing call changes nothing)."""

    def __init__(self):
        self.params: dict[tuple[str, str], Param] = {}

    @staticmethod
    def node_name(layer, index: int, taken) -> str:
        name = str(getattr(layer, "name", "layer"))
        while name in taken:  # layers of different models may share a name
            name = f"{name}#{len(taken)}"
        return name

    def _copy(self, name, role, variable, view_shape=None):
        array = np.array(variable.numpy(), copy=True, order="C")
        self.params[(name, role)] = Param(variable, array)
        return array if view_shape is None else array.reshape(view_shape)

    def add_layer(self, graph: _core.Graph, name: str, layer, inp: str, out: str) -> None:
        t = type(layer)
        if not getattr(layer, "built", False):
            raise _core.InvalidRequestError(f"{t.__name__} '{layer.name}' is not built")
        spec = layer_weight(layer)
        if spec is None and t in (L.SeparableConv1D, L.SeparableConv2D):
            raise _core.InvalidRequestError(
                f"{t.__name__} '{layer.name}' is two layers (depthwise, pointwise): split it first — "
                f"fold_all_batch_norms and equalize_model return models whose SeparableConvs are "
                f"DepthwiseConv + Conv layers")
        if spec is None:
            raise _core.InvalidRequestError(
                f"{t.__name__} '{getattr(layer, 'name', layer)}' cannot be cross-layer scaled; CLS sets hold "
                f"Conv, DepthwiseConv, ConvTranspose and Dense layers")
        kernel, view, layout, kind = spec
        weight = self._copy(name, "weight", kernel, view)
        bias = self._copy(name, "bias", layer.bias) if layer.use_bias else None
        # Padding as the model translation marks it: the engine declines bias moves into a padded layer.
        padded = _has_padding(layer, tuple(kernel.shape)[:-2])
        graph.add_conv(name, [inp], [out], weight, layout, bias, has_padding=padded, kind=kind,
                       op_type=t.__name__)

    def write_back(self, graph: _core.Graph, layers: dict, bias_added) -> None:
        for param in self.params.values():
            param.variable.assign(param.array)
        for name in bias_added:
            add_bias_variable(layers[name], graph.added_bias(name))

    @staticmethod
    def bn_stats(layer, bn):
        return _bn_stats(bn)


class _ModelLayers:
    """The Keras side of high-bias absorption on a model's own graph."""

    def __init__(self, model: keras.Model):
        self.eg = build_engine_graph(model)
        self.graph = self.eg.graph

    def name_of(self, layer) -> str | None:
        entry = self.eg.first_call.get(id(layer))
        return None if entry is None else entry.name

    @staticmethod
    def bn_stats(layer, bn):
        return _bn_stats(bn)

    def apply_high_bias(self, result) -> None:
        apply_in_place(self.eg, bias_added=[a.layer2 for a in result.absorbed if a.bias_added], bounds_changed=True)


def _bn_stats(bn):
    """γ and β of a BatchNormalization (ones / zeros where it has no scale / center), else None."""
    if not isinstance(bn, L.BatchNormalization):
        return None
    c = int(bn.moving_mean.shape[0])
    gamma = np.ones(c) if bn.gamma is None else np.asarray(bn.gamma.numpy(), "float64")
    beta = np.zeros(c) if bn.beta is None else np.asarray(bn.beta.numpy(), "float64")
    return gamma, beta


# ---- public API ---------------------------------------------------------------------------------

class CrossLayerScaling:
    """Cross-layer scaling, in place: automatic (scale_model) or on given sets (scale_cls_sets)."""

    last_result = None

    @staticmethod
    def scale_model(model: keras.Model, *, relu6: str = "skip",
                    max_iterations: int = DEFAULT_MAX_ITERATIONS) -> list[ClsSetInfo]:
        """Find and scale every CLS set of `model` in place; returns one ClsSetInfo per set.
        ``CrossLayerScaling.last_result.explain()`` says which layers start no set and why."""
        eg = build_engine_graph(model)
        result = _core.scale_model(eg.graph, relu6=relu6, max_iterations=max_iterations)
        apply_in_place(eg, edits=result.activation_edits)
        CrossLayerScaling.last_result = result
        # the model lets bias_fold see what sits between (a BoundedReLU to lower)
        return _manual_cls.infos_from_result(result.sets, eg.layer, eg.model, keep_names=True)

    @staticmethod
    def scale_cls_sets(cls_sets: Sequence[Sequence], model: keras.Model | None = None, *, relu6: str = "skip",
                       max_iterations: int = DEFAULT_MAX_ITERATIONS) -> list:
        """Scale the given sets in place — (layer1, layer2) pairs and (conv, depthwise, conv)
        triples, in the order they appear in the model. Returns per set its scale factors (a
        pair) or a tuple (scale12, scale23) (a triple). With `model`, the sets are checked
        against the model's graph (adjacency, what sits between); without it, adjacency is the
        caller's promise: only the given layers are scaled, whatever else reads their outputs."""
        cls_sets = [list(s) for s in cls_sets]
        if model is not None:
            eg = build_engine_graph(model)
            specs = [[eg.node_of(layer, position="first" if i else "last") for i, layer in enumerate(s)]
                     for s in cls_sets]
            result = _core.scale_cls_sets(eg.graph, specs, relu6=relu6, max_iterations=max_iterations)
            apply_in_place(eg, edits=result.activation_edits)
        else:
            result = _manual_cls.scale_cls_sets_on_chain(cls_sets, _ChainLayers(), relu6=relu6,
                                                         max_iterations=max_iterations)
        CrossLayerScaling.last_result = result
        return _manual_cls.scales_of(result)

    @staticmethod
    def create_cls_set_info_list(cls_sets, scale_factors, is_relu_activation_in_cls_sets) -> list[ClsSetInfo]:
        """ClsSetInfo objects for sets scaled by scale_cls_sets. The relu flags are one bool per
        pair set, or a (bool, bool) tuple per triple. Sets without a flag (AIMET's manual example
        passes an empty list, to be "filled in manually") count as having a ReLU between: high-bias
        absorption then moves only what the 3σ rule allows, which is exact when nothing nonlinear
        sits between and the usual approximation when a ReLU does."""
        if len(cls_sets) != len(scale_factors):
            raise _core.InvalidRequestError(
                f"cls_sets ({len(cls_sets)}) and scale_factors ({len(scale_factors)}) must have one entry per set")
        flags = list(is_relu_activation_in_cls_sets)
        if len(flags) > len(cls_sets):
            raise _core.InvalidRequestError(
                f"is_relu_activation_in_cls_sets has {len(flags)} entries for {len(cls_sets)} sets")
        flags += [True] * (len(cls_sets) - len(flags))
        return cls_set_infos(cls_sets, scale_factors, flags)


class HighBiasFold:
    """High-bias absorption after cross-layer scaling, in place."""

    last_result = None

    @staticmethod
    def bias_fold(cls_set_info_list: Sequence[ClsSetInfo], bn_layers) -> None:
        """Move bias above 3σ of each scaled pair's layer1 into layer2, in place. `bn_layers` maps
        a layer to the BN folded after it — a dict, or (layer, bn) pairs as AIMET's manual example
        passes; its γ and β give layer1's output statistics. A BN folded *before* its layer (BN→conv)
        says nothing about that layer's output and is ignored. ``HighBiasFold.last_result`` holds
        the engine's HighBiasResult."""
        HighBiasFold.last_result = _manual_cls.bias_fold(cls_set_info_list, bn_layers, model_layers=_ModelLayers,
                                                         chain_layers=_ChainLayers)


def replace_relu6_with_relu(model: keras.Model):
    """A new model with every ReLU6 (``ReLU(max_value=m)``, ``Activation('relu6')``, a fused
    ``activation='relu6'``, a BoundedReLU) replaced by ``ReLU``. Returns ``(new_model,
    ActivationResult)``; the model given is unchanged."""
    eg = build_engine_graph(model)
    result = _core.replace_relu6_with_relu(eg.graph)
    return build_model(eg, edits=result.edits), result


def equalize_model(model: keras.Model, *, relu6: str = "bound", max_iterations: int = DEFAULT_MAX_ITERATIONS,
                   absorb_high_bias: bool = False, return_result: bool = False, bias_correction: bool = False,
                   bias_correction_bits: int = 8, bias_correction_per_channel: bool = False,
                   bias_correction_symmetric: bool = True, regions: bool = False,
                   gated_activations: bool = False, scale_criterion: str = "weights_and_activations",
                   weight_quantization: str = "per_tensor"):
    """Fold batch norms, handle ReLU6, scale CLS sets (with ``regions=True`` also equalization
    regions: Add, Concatenate, fan-out; and, with ``absorb_high_bias=True``, absorb
    high bias: an approximation, off by default — docs/BENCHMARKS.md) in one atomic engine
    call; returns the new, equalized model (``(new_model, EqualizeResult)`` with
    ``return_result=True``; ``.explain()`` prints every decision). The model given is unchanged.

    With relu6='bound' and absorb_high_bias=False the new model's FP32 output equals the
    original's; high-bias absorption (the 3σ rule) is an approximation.

    Conventions across front ends (each follows AIMET's for its framework): Keras returns a new
    model (a built Keras model's structure cannot change in place), PyTorch edits the module in
    place and returns the result, ONNX returns ``(proto, result)``. ``return_result=True`` gives
    the engine's EqualizeResult as the last element everywhere. A layer sharing a variable with
    another gets its own copy in the new model; a layer called at several places is left as it
    is (with a warning; ``prepare_model`` unrolls it).

    ``bias_correction=True`` adds analytic bias correction (DFQ §4.2) for the weight quantizer
    ``bias_correction_bits`` / ``_per_channel`` / ``_symmetric``: it changes the FP32 output on
    purpose, to cancel the mean shift weight quantization causes (``result.bias_correction``).

    ``gated_activations=True`` also scales through x·g(x) activations (``Activation('swish')`` /
    'silu', 'hard_swish' / 'hard_silu', 'gelu', and a layer's fused ``activation=`` of these):
    each one scaled through becomes a ``prequant.keras.activations.GatedActivation`` computing
    x·g(s[c]·x), which keeps the FP32 output exact. Off by default (docs/BENCHMARKS.md).

    ``scale_criterion``: ``"weights_and_activations"`` (default), ``"weights"`` (DFQ),
    ``"activations"`` (for per-channel) or ``"quantization_noise"`` (the modelled INT8 noise for
    ``weight_quantization``: ``"per_tensor"`` or ``"per_channel"``): see prequant.torch's
    equalize_model.

    A tf_keras (Keras 2) functional model gives a tf_keras model back (``_tf_keras_cle``)."""
    if is_tf_keras_object(model):
        from prequant.keras._tf_keras_cle import equalize_tf_keras_model

        return equalize_tf_keras_model(
            model, relu6=relu6, max_iterations=max_iterations, absorb_high_bias=absorb_high_bias,
            return_result=return_result, bias_correction=bias_correction,
            bias_correction_bits=bias_correction_bits, bias_correction_per_channel=bias_correction_per_channel,
            bias_correction_symmetric=bias_correction_symmetric, regions=regions,
            gated_activations=gated_activations, scale_criterion=scale_criterion,
            weight_quantization=weight_quantization)
    eg = build_engine_graph(model)
    result = _core.equalize_model(eg.graph, relu6=relu6, max_iterations=max_iterations,
                                  absorb_high_bias=absorb_high_bias, bias_correction=bias_correction,
                                  bias_correction_bits=bias_correction_bits,
                                  bias_correction_per_channel=bias_correction_per_channel,
                                  bias_correction_symmetric=bias_correction_symmetric,
                                  regions=regions, gated_activations=gated_activations,
                                  scale_criterion=scale_criterion,
                                  weight_quantization=weight_quantization)
    warn_fused_activation_before_bn(eg, result.fold.declined)
    new_model = build_model(
        eg,
        removed=[f.request.bn for f in result.fold.folded],
        bias_added=[f.request.layer for f in result.fold.folded if f.bias_added]
        + [a.layer2 for a in result.high_bias.absorbed if a.bias_added]
        + [c.layer for c in result.bias_correction.corrected if c.bias_added],
        edits=list(result.activations.edits) + list(result.cls.activation_edits)
        + list(result.regions.activation_edits),
    )
    return (new_model, result) if return_result else new_model
