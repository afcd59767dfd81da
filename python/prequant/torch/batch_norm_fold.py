"""Batch-norm folding for PyTorch models (where AIMET users look: aimet_torch.batch_norm_fold).

Before: a model with BatchNorm layers after (conv→BN) or before (BN→conv) conv/linear layers.
After:  the same model, in place: each folded BN is an nn.Identity, its layer's weight and bias
        carry the BN (a layer without bias gets one). Which BN folds where, and why others do
        not, is the C++ engine's decision (``prequant._core.fold_batch_norms``); this module only
        translates the model and applies the edits.
"""

from __future__ import annotations

from typing import Iterable

from torch import nn

from prequant import _core
from prequant.torch._engine_graph import apply_folds, build_engine_graph, input_ranks_of

__all__ = ["fold_all_batch_norms", "fold_given_batch_norms", "find_batch_norm_folds"]


def find_batch_norm_folds(model: nn.Module):
    """What fold_all_batch_norms would fold and what it would decline (``.explain()``); changes nothing."""
    return _core.find_batch_norm_folds(build_engine_graph(model).graph)


def fold_all_batch_norms(model: nn.Module, input_shapes=None, dummy_input=None, *, return_result: bool = False):
    """Fold every foldable batch norm of `model` in place.

    Returns the list of (layer, bn) module pairs folded (AIMET's return value); with
    ``return_result=True`` returns ``(pairs, FoldResult)``, whose ``explain()`` lists every BN
    that stayed and why. (prequant.keras returns a new model, prequant.onnx ``(proto, result)``.)
    The graph comes from torch.fx; `input_shapes` / `dummy_input` (AIMET's arguments) are only
    read for the rank of each input: an nn.Linear contracts the last axis, so a Linear and a
    BatchNorm fold together only where the tensor is known to be 2-D. A layer sharing its weight
    with another call is given its own copy in a GraphModule, and declined otherwise.
    """
    eg = build_engine_graph(model, unroll_shared=True, input_ranks=input_ranks_of(dummy_input, input_shapes))
    with eg.restored_on_error():
        result = _core.fold_batch_norms(eg.graph)
    pairs = apply_folds(eg, result)
    return (pairs, result) if return_result else pairs


def fold_given_batch_norms(model: nn.Module, layer_pairs: Iterable[tuple]):
    """Fold the given pairs in place: (layer, bn) or (layer, bn, is_batch_norm_second) tuples,
    where a tuple may also list the BN first ((bn, layer) means BN→conv). An invalid pair raises
    ``InvalidRequestError`` and changes nothing."""
    eg = build_engine_graph(model)
    requests = []
    for pair in layer_pairs:
        a, b = pair[0], pair[1]
        bn_second = pair[2] if len(pair) > 2 else isinstance(b, nn.modules.batchnorm._BatchNorm)
        layer, bn = (a, b) if isinstance(b, nn.modules.batchnorm._BatchNorm) else (b, a)
        requests.append((_node_of(eg, layer), _node_of(eg, bn), "conv_then_bn" if bn_second else "bn_then_conv"))
    result = _core.fold_given_batch_norms(eg.graph, requests)
    return apply_folds(eg, result)


def _node_of(eg, module: nn.Module) -> str:
    for name, m in eg.modules.items():
        if m is module and "#" not in name:
            return name
    raise _core.InvalidRequestError(
        f"{type(module).__name__} module is not called in the model's forward (or not part of it)"
    )
