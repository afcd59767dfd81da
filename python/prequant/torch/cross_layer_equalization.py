"""Cross-layer equalization for PyTorch (where AIMET users look: aimet_torch.cross_layer_equalization).

Before: a model in eval mode (``prepare_model`` output is ideal: every activation a module).
After:  in place, the same function with per-channel weight ranges equalized across layers:
        batch norms folded, cross-layer scaling (pairs and conv → depthwise → conv triples,
        iterated to convergence over overlapping sets), high-bias absorption, and ReLU6 handled
        by a policy: 'bound' (default; ReLU6 becomes a per-channel BoundedReLU so the FP32 output
        is unchanged), 'replace' (a ReLU6 between scaled layers becomes ReLU, as aimet-onnx does; other
        ReLU6s and output clamps stay), or 'skip'.

Every decision and all weight math happen in the C++ engine on zero-copy views of the
parameters; this module translates the model, and applies the structural edits.

    CrossLayerScaling.scale_model(model)          -> [ClsSetInfo]
    CrossLayerScaling.scale_cls_sets(cls_sets)    -> [scale | (scale12, scale23)]
    CrossLayerScaling.create_cls_set_info_list(cls_sets, scale_factors, is_relu_activation_in_cls_sets)
    HighBiasFold.bias_fold(cls_set_info_list, bn_layers)
    replace_relu6_with_relu(model)
    equalize_model(model, input_shapes=None, dummy_input=None, relu6="bound", verify=False) -> EqualizeResult
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from prequant import _core, _manual_cls
from prequant._cls_info import ClsSetInfo, ClsSetLayerPairInfo, cls_set_infos
from prequant.torch._engine_graph import (
    EngineGraph,
    _has_padding,
    _view,
    apply_activation_edits,
    apply_equalize,
    apply_high_bias,
    build_engine_graph,
    input_ranks_of,
)

__all__ = [
    "ClsSetInfo",
    "ClsSetLayerPairInfo",
    "CrossLayerScaling",
    "HighBiasFold",
    "equalize_model",
    "replace_relu6_with_relu",
]

DEFAULT_MAX_ITERATIONS = _core.DEFAULT_MAX_ITERATIONS  # the engine's one default (passes.h)


# ---- the manual APIs' translation (the bookkeeping is prequant._manual_cls) --------------------------

class _ChainLayers:
    """The PyTorch side of a chain graph of given modules: zero-copy views, so only an added
    bias needs writing back."""

    @staticmethod
    def node_name(module: nn.Module, index: int, taken) -> str:
        return f"layer{index}"

    @staticmethod
    def add_layer(g: _core.Graph, name: str, m: nn.Module, inp: str, out: str) -> None:
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            layout, kind = (0, 1, m.groups, False), "conv"
        elif isinstance(m, (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)):
            layout, kind = (1, 0, m.groups, True), "conv"
        elif isinstance(m, nn.Linear):
            layout, kind = (0, 1, 1, False), "linear"
        else:
            raise _core.InvalidRequestError(
                f"{type(m).__name__} cannot be cross-layer scaled; CLS sets hold Conv, ConvTranspose and Linear layers")
        # Padding as the model translation marks it: the engine declines bias moves into a padded layer.
        g.add_conv(name, [inp], [out], _view(m.weight, name, "weight"), layout,
                   None if m.bias is None else _view(m.bias, name, "bias"),
                   has_padding=kind == "conv" and _has_padding(m), kind=kind, op_type=type(m).__name__)

    @staticmethod
    def write_back(g: _core.Graph, layers: dict, bias_added) -> None:
        for n in bias_added:
            m = layers[n]
            if m.bias is None:
                m.bias = nn.Parameter(torch.from_numpy(g.added_bias(n)).to(m.weight.dtype),
                                      requires_grad=m.weight.requires_grad)

    @staticmethod
    def bn_stats(layer, bn):
        return _bn_stats(bn)


class _ModelLayers:
    """The PyTorch side of high-bias absorption on a model's own graph."""

    def __init__(self, model: nn.Module):
        self.eg = build_engine_graph(model)
        self.graph = self.eg.graph

    def name_of(self, module: nn.Module) -> str | None:
        return next((n for n, m in self.eg.modules.items() if m is module and "#" not in n), None)

    @staticmethod
    def bn_stats(layer, bn):
        return _bn_stats(bn)

    def apply_high_bias(self, result) -> None:
        apply_high_bias(self.eg, result)


def _bn_stats(bn):
    """γ and β of an affine batch norm (None for anything else)."""
    if isinstance(bn, nn.modules.batchnorm._BatchNorm) and bn.affine:
        return bn.weight.detach().double().numpy(), bn.bias.detach().double().numpy()
    return None


# ---- public API ------------------------------------------------------------------------------

class CrossLayerScaling:
    """Cross-layer scaling: automatic (scale_model) or on given sets (scale_cls_sets)."""

    @staticmethod
    def scale_model(model: nn.Module, input_shapes=None, dummy_input=None, *, relu6: str = "bound",
                    max_iterations: int = DEFAULT_MAX_ITERATIONS) -> list[ClsSetInfo]:
        """Find and scale every CLS set of `model` in place; returns one ClsSetInfo per set.
        (`input_shapes`/`dummy_input` are accepted for AIMET compatibility; torch.fx needs neither.)"""
        eg = build_engine_graph(model, unroll_shared=True, input_ranks=input_ranks_of(dummy_input, input_shapes))
        with eg.restored_on_error():
            result = _core.scale_model(eg.graph, relu6=relu6, max_iterations=max_iterations)
        apply_activation_edits(eg, result.activation_edits)
        # the model lets bias_fold see what sits between (e.g. a BoundedReLU to lower)
        infos = _manual_cls.infos_from_result(result.sets, eg.modules.__getitem__, model, keep_names=False)
        CrossLayerScaling.last_result = result
        return infos

    @staticmethod
    def scale_cls_sets(cls_sets: Sequence[Sequence[nn.Module]], model: nn.Module | None = None, *,
                       max_iterations: int = DEFAULT_MAX_ITERATIONS) -> list:
        """Scale the given sets — (layer1, layer2) pairs and (conv, depthwise, conv) triples, in the
        order they appear in the model. Returns per set its scale factors (a pair) or a tuple
        (scale12, scale23) (a triple). With `model`, the sets are checked against the model's
        graph (adjacency, what sits between); without it, adjacency is the caller's promise."""
        if model is not None:
            eg = build_engine_graph(model)
            specs = [[_node_name(eg, m) for m in s] for s in cls_sets]
            result = _core.scale_cls_sets(eg.graph, specs, relu6="bound", max_iterations=max_iterations)
            apply_activation_edits(eg, result.activation_edits)
        else:
            result = _manual_cls.scale_cls_sets_on_chain(cls_sets, _ChainLayers(), relu6="bound",
                                                         max_iterations=max_iterations)
        return _manual_cls.scales_of(result)

    @staticmethod
    def create_cls_set_info_list(cls_sets, scale_factors, is_relu_activation_in_cls_sets) -> list[ClsSetInfo]:
        """ClsSetInfo objects for sets scaled by scale_cls_sets; the relu flags are one bool per
        pair set, or a (bool, bool) tuple per triple."""
        if not (len(cls_sets) == len(scale_factors) == len(is_relu_activation_in_cls_sets)):
            raise _core.InvalidRequestError(
                f"cls_sets ({len(cls_sets)}), scale_factors ({len(scale_factors)}) and "
                f"is_relu_activation_in_cls_sets ({len(is_relu_activation_in_cls_sets)}) must have one entry per set")
        return cls_set_infos(cls_sets, scale_factors, is_relu_activation_in_cls_sets)


class HighBiasFold:
    """High-bias absorption after cross-layer scaling."""

    @staticmethod
    def bias_fold(cls_set_info_list: Sequence[ClsSetInfo], bn_layers: dict) -> None:
        """Move bias above 3σ of each scaled pair's layer1 into layer2, in place. `bn_layers` maps
        a layer to the BN that was folded after it (its γ and β give layer1's output statistics)."""
        HighBiasFold.last_result = _manual_cls.bias_fold(cls_set_info_list, bn_layers, model_layers=_ModelLayers,
                                                         chain_layers=_ChainLayers)


def replace_relu6_with_relu(model: nn.Module) -> nn.Module:
    """Replace every ReLU6 module (and Hardtanh(0, m)) with nn.ReLU, in place; returns the model."""
    eg = build_engine_graph(model)
    result = _core.replace_relu6_with_relu(eg.graph)
    apply_activation_edits(eg, result.edits)
    return model


def equalize_model(model: nn.Module, input_shapes=None, dummy_input=None, *, relu6: str = "bound",
                   max_iterations: int = DEFAULT_MAX_ITERATIONS, absorb_high_bias: bool = False,
                   bias_correction: bool = False, bias_correction_bits: int = 8,
                   bias_correction_per_channel: bool = False, bias_correction_symmetric: bool = True,
                   regions: bool = False, gated_activations: bool = False,
                   scale_criterion: str = "weights_and_activations", weight_quantization: str = "per_tensor",
                   verify: bool = False):
    """Fold batch norms, handle ReLU6, scale CLS sets (with ``regions=True`` also equalization
    regions: residual adds, concats, splits, fan-out; and, with ``absorb_high_bias=True``,
    absorb high bias: an approximation, off by default — docs/BENCHMARKS.md) — in place, in one
    atomic engine call. Returns the engine's EqualizeResult (``.explain()`` prints every
    decision). Conventions differ by framework: AIMET's torch ``equalize_model`` returns None;
    prequant's edits in place too but returns the result; prequant.keras returns a new model,
    prequant.onnx ``(proto, result)``.

    A layer sharing its weight with another call is given its own copy if `model` is a
    GraphModule (as prepare_model does; undone if the engine fails), and is declined with a
    reason otherwise.

    ``input_shapes`` / ``dummy_input`` are accepted for AIMET compatibility; no forward pass runs
    (torch.fx reads the graph and the engine the weights; AIMET needs one to trace, prequant does
    not). Only the rank of each input is read from them: an nn.Linear pairs with a conv/BN only
    on 2-D tensors.

    ``verify=True`` checks the FP32 function: it runs the model on ``dummy_input`` (or zeros of
    ``input_shapes``) before and after, and warns (``UserWarning``, with the output SQNR) if an
    output became non-finite or moved by more than float rounding (below 60 dB SQNR) — a bug
    where the result is meant to be exact (ReLU6 ``bound``/``skip``, no high-bias absorption, no
    bias correction), the price of the approximation otherwise. It costs two forward passes.

    ``gated_activations=True`` also scales through x·g(x) activations (``nn.SiLU``,
    ``nn.Hardswish``, ``nn.GELU``; functionals after ``prepare_model``): each becomes a
    ``GatedActivation`` computing x·g(s[c]·x), which keeps the FP32 output exact. Off by default
    (docs/BENCHMARKS.md has the measurements).

    ``scale_criterion`` chooses what each scale balances: ``"weights_and_activations"`` (the
    default: the first layer's row range and the range of the activation between, data-free from
    the folded batch norm's β ± 3|γ| through the ReLU/ReLU6, against the second layer's column
    range; it beat DFQ in every INT8 mode measured on EfficientNet-Lite0 and MobileNetV2),
    ``"weights"`` (DFQ: the row range against the column range only; a set whose layers have no
    folded batch norm after them gets exactly this under any criterion) or ``"activations"`` (the
    activation range against the second layer's column range: derived for per-channel weight
    quantization, where the first layer's rows do not matter; experimental, measured worse than
    ``"weights_and_activations"`` on EfficientNet-Lite0). All three keep the FP32 output exact
    (docs/BENCHMARKS.md, "Activation-aware scale criterion"). AIMET's equalize_model is DFQ:
    pass ``scale_criterion="weights"`` to match it. ``"quantization_noise"`` chooses
    each link's scales to minimise the modelled INT8 noise at the next layer's output (per-tensor
    8-bit activations, data-free from the folded batch norms; weights as ``weight_quantization``:
    ``"per_tensor"`` or ``"per_channel"``, the quantizer you will use), also exact in FP32
    (docs/BENCHMARKS.md, "Quantization-noise criterion"). ``weight_quantization`` is read by that
    criterion only.

    ``bias_correction=True`` adds analytic (data-free) bias correction, DFQ §4.2: each layer's
    bias loses (Q(W) − W)·E[x], with E[x] from the batch norms before it (carried through ReLU-like
    activations, residual adds, concats, splits, average pooling and resizes), for the weight quantizer
    given by ``bias_correction_bits`` / ``_per_channel`` / ``_symmetric`` (match the quantizer
    you will use). It changes the FP32 output on purpose (``result.bias_correction``). AIMET's
    ``aimet_torch.bias_correction.correct_bias`` is the data-driven counterpart."""
    inputs = _verification_inputs(input_shapes, dummy_input) if verify else None
    if verify:
        with torch.no_grad():
            before = model(*inputs)
    eg = build_engine_graph(model, unroll_shared=True, input_ranks=input_ranks_of(dummy_input, input_shapes))
    with eg.restored_on_error():
        result = _core.equalize_model(eg.graph, relu6=relu6, max_iterations=max_iterations,
                                      absorb_high_bias=absorb_high_bias,
                                      bias_correction=bias_correction,
                                      bias_correction_bits=bias_correction_bits,
                                      bias_correction_per_channel=bias_correction_per_channel,
                                      bias_correction_symmetric=bias_correction_symmetric,
                                      regions=regions, gated_activations=gated_activations,
                                      scale_criterion=scale_criterion,
                                      weight_quantization=weight_quantization)
    apply_equalize(eg, result)
    if verify:
        with torch.no_grad():
            after = model(*inputs)
        _check_function(before, after, exact=relu6 != "replace" and not absorb_high_bias and not bias_correction)
    return result


def _verification_inputs(input_shapes, dummy_input) -> tuple:
    if dummy_input is not None:
        return tuple(dummy_input) if isinstance(dummy_input, (tuple, list)) else (dummy_input,)
    if input_shapes is None:
        raise _core.InvalidRequestError(
            "equalize_model(verify=True) runs the model: pass dummy_input= or input_shapes=")
    shapes = input_shapes if isinstance(input_shapes[0], (tuple, list)) else [input_shapes]
    return tuple(torch.zeros(*s) for s in shapes)


def _check_function(before, after, exact: bool) -> None:
    """Warn if the outputs after equalization are non-finite or (when exact) differ."""
    import math
    import warnings

    from torch.utils._pytree import tree_leaves as _tree_leaves

    flat_b = [t for t in _tree_leaves(before) if isinstance(t, torch.Tensor)]
    flat_a = [t for t in _tree_leaves(after) if isinstance(t, torch.Tensor)]
    for k, (b, a) in enumerate(zip(flat_b, flat_a)):
        if not torch.isfinite(a).all():
            warnings.warn(f"equalize_model(verify=True): output {k} has non-finite values after "
                          "equalization", UserWarning, stacklevel=3)
            continue
        b64, a64 = b.double(), a.double()
        err, energy = float(((b64 - a64) ** 2).sum()), float((b64 ** 2).sum())
        sqnr = math.inf if err == 0 else 10 * math.log10(max(energy, 1e-300) / err)
        if sqnr < 60:
            why = ("with relu6='bound'/'skip' and no high-bias absorption it should be unchanged up to "
                   "float rounding" if exact else
                   "expected: relu6='replace' and high-bias absorption change the FP32 function")
            warnings.warn(f"equalize_model(verify=True): output {k} moved (SQNR {sqnr:.1f} dB against "
                          f"the model before); {why}", UserWarning, stacklevel=3)


def _node_name(eg: EngineGraph, module: nn.Module) -> str:
    for name, m in eg.modules.items():
        if m is module and "#" not in name:
            return name
    raise _core.InvalidRequestError(f"{type(module).__name__} module is not called in the model's forward")
