"""Batch-norm folding for Keras models (where AIMET users look: aimet_tensorflow.keras.batch_norm_fold).

Before: a built functional (or Sequential) Keras model with BatchNormalization layers after
        (conv→BN) or before (BN→conv) Conv/DepthwiseConv/SeparableConv/ConvTranspose/Dense layers.
After:  a NEW functional model without the folded batch norms: the layers they folded into are
        new layers whose kernel and bias carry the BN (a layer without bias gets one). The model
        given is not changed. The new model is in the canonical form described in
        ``prequant.keras._engine_graph``: SeparableConvs are split into DepthwiseConv + 1×1 Conv,
        fused activations are layers of their own.

Which BN folds where, and why the others stay, is the C++ engine's decision
(``prequant._core.fold_batch_norms``); this module only translates the model and builds the
new one. A fused activation runs before any BN that follows its layer, so
``Conv2D(..., activation='relu') → BatchNormalization`` is not foldable: the engine reports
"its input comes from relu '<conv>_relu'" (the fused activation's node).

    fold_all_batch_norms(model) -> (pairs, new_model)
    fold_given_batch_norms(model, layer_pairs) -> new_model
    find_batch_norm_folds(model) -> FoldResult (changes nothing; .explain())
"""

from __future__ import annotations

from typing import Iterable

import keras

from prequant import _core
from prequant._manual_cls import record_folded_before
from prequant.keras._engine_graph import (
    EngineGraph,
    build_engine_graph,
    build_model,
    warn_fused_activation_before_bn,
)
from prequant.keras._tf_keras import is_tf_keras_object

__all__ = ["fold_all_batch_norms", "fold_given_batch_norms", "find_batch_norm_folds"]

def find_batch_norm_folds(model: keras.Model):
    """What fold_all_batch_norms would fold and what it would decline (``.explain()``); changes nothing."""
    return _core.find_batch_norm_folds(build_engine_graph(model).graph)


def fold_all_batch_norms(model: keras.Model, *, return_result: bool = False):
    """Fold every foldable batch norm of `model` into a new model.

    Returns ``(pairs, new_model)``: `pairs` lists ``(layer, bn)`` per fold, `layer` being the
    new model's layer that absorbed the BN and `bn` the original BatchNormalization (still
    holding its γ and β, which HighBiasFold.bias_fold reads). With ``return_result=True``
    returns ``(pairs, new_model, FoldResult)``, whose ``explain()`` lists every BN that stayed
    and why: AIMET's return value with the engine's result last, as in every front end (PyTorch
    folds in place and returns ``(pairs, result)``; ONNX returns ``(proto, result)``).
    A tf_keras (Keras 2) functional model gives a tf_keras model back (``_tf_keras_cle``).
    """
    if is_tf_keras_object(model):
        from prequant.keras._tf_keras_cle import fold_all_batch_norms_tf_keras

        return fold_all_batch_norms_tf_keras(model, return_result=return_result)
    eg = build_engine_graph(model)
    result = _core.fold_batch_norms(eg.graph)
    pairs, new_model = _apply(eg, result)
    warn_fused_activation_before_bn(eg, result.declined)
    return (pairs, new_model, result) if return_result else (pairs, new_model)


def fold_given_batch_norms(model: keras.Model, layer_pairs: Iterable[tuple], *, return_result: bool = False):
    """Fold the given pairs into a new model and return it (``(new_model, FoldResult)`` with
    ``return_result=True``).

    Each pair is ``(layer, bn, is_batch_norm_second)`` or ``(bn, layer, is_batch_norm_second)``
    (AIMET's form; the flag True means the BN follows the layer, conv→BN), or a plain
    ``(layer, bn)`` / ``(bn, layer)`` whose order gives the direction. An invalid pair raises
    ``InvalidRequestError`` and nothing is built. The model given is not changed.

    Each BatchNormalization given gets an attribute ``op`` referring to itself: AIMET's manual
    CLE example reads ``bn.op`` from the pairs it passed here.
    """
    eg = build_engine_graph(model)
    requests, bns = [], []
    for pair in layer_pairs:
        if len(pair) not in (2, 3):
            raise _core.InvalidRequestError(
                f"each layer pair is (layer, bn[, is_batch_norm_second]) or (bn, layer[, flag]), got {pair!r}")
        a, b = pair[0], pair[1]
        b_is_bn = isinstance(b, keras.layers.BatchNormalization)
        if b_is_bn == isinstance(a, keras.layers.BatchNormalization):
            raise _core.InvalidRequestError(
                f"a layer pair must hold exactly one BatchNormalization, got "
                f"({type(a).__name__}, {type(b).__name__})")
        layer, bn = (a, b) if b_is_bn else (b, a)
        bn_second = bool(pair[2]) if len(pair) == 3 else b_is_bn
        requests.append((eg.node_of(layer, position="last" if bn_second else "first"), eg.node_of(bn),
                         "conv_then_bn" if bn_second else "bn_then_conv"))
        bns.append(bn)
    result = _core.fold_given_batch_norms(eg.graph, requests)
    _, new_model = _apply(eg, result)
    for bn in bns:
        object.__setattr__(bn, "op", bn)  # plain attribute: Keras would track a layer as a sublayer
    return (new_model, result) if return_result else new_model


def _apply(eg: EngineGraph, result) -> tuple[list, keras.Model]:
    removed = [f.request.bn for f in result.folded]
    bias_added = [f.request.layer for f in result.folded if f.bias_added]
    new_model = build_model(eg, removed=removed, bias_added=bias_added)
    pairs = []
    for f in result.folded:
        new_layer = new_model.get_layer(f.request.layer)
        bn = eg.layer(f.request.bn)
        if f.request.direction == "bn_then_conv":  # high-bias absorption must not read it
            record_folded_before(new_layer, bn)
        pairs.append((new_layer, bn))
    return pairs, new_model

