"""ONNX front end: the engine's passes on an ``onnx.ModelProto``, a path or serialized bytes.

Before: an ONNX model (in memory or on disk).
After:  a new ``onnx.ModelProto`` with the transform applied, and the engine's result
        (``.explain()`` prints every decision). The input model is never changed: ONNX crosses
        into the engine as bytes and comes back as bytes, as the `prequant` tool's files do.

    from prequant.onnx import equalize_model, fold_all_batch_norms
    new_model, result = equalize_model(model, relu6="bound")

Importing this module does not import the onnx package; returning a ModelProto does.
"""

from __future__ import annotations

import os
from typing import Any

from prequant import _core

__all__ = ["equalize_model", "fold_all_batch_norms", "load"]


def load(model: Any, base_dir: str | os.PathLike | None = None) -> _core.OnnxModel:
    """The engine's OnnxModel for an onnx.ModelProto, serialized bytes, or a path."""
    if isinstance(model, (str, os.PathLike)):
        return _core.OnnxModel.load(os.fspath(model))
    if isinstance(model, (bytes, bytearray, memoryview)):
        return _core.OnnxModel.from_bytes(bytes(model), os.fspath(base_dir or ""))
    if hasattr(model, "SerializeToString"):
        return _core.OnnxModel.from_bytes(model.SerializeToString(), os.fspath(base_dir or ""))
    raise TypeError(f"expected an onnx.ModelProto, bytes or a path, not {type(model).__name__}")


def _to_proto(engine_model: _core.OnnxModel):
    import onnx

    return onnx.load_from_string(engine_model.to_bytes())


def fold_all_batch_norms(model: Any, base_dir=None):
    """Fold every foldable BatchNormalization; returns (new ModelProto, FoldResult)."""
    m = load(model, base_dir)
    _core.unroll_shared_weights(m.graph)
    result = _core.fold_batch_norms(m.graph)
    return _to_proto(m), result


def equalize_model(model: Any, relu6: str = "bound", *, absorb_high_bias: bool = False,
                   max_iterations: int = _core.DEFAULT_MAX_ITERATIONS, base_dir=None, bias_correction: bool = False,
                   bias_correction_bits: int = 8, bias_correction_per_channel: bool = False,
                   bias_correction_symmetric: bool = True, regions: bool = False,
                   gated_activations: bool = False, scale_criterion: str = "weights_and_activations",
                   weight_quantization: str = "per_tensor"):
    """Unroll shared weights, fold batch norms, apply the ReLU6 policy, scale CLS sets (with
    ``regions=True`` also equalization regions: residual adds, concats, splits, fan-out; and, with
    ``absorb_high_bias=True``, absorb high bias; with ``bias_correction=True``, correct biases
    analytically for the given weight quantizer — this changes the FP32 output on purpose; with
    ``gated_activations=True``, scale through SiLU (Mul(x, Sigmoid(x))), HardSwish and Gelu, written
    back as Mul(x, Sigmoid(Mul(x, s))) and the like with a per-channel gate scale s: exact;
    ``scale_criterion``: ``"weights_and_activations"`` (default), ``"weights"`` (DFQ),
    ``"activations"`` (for per-channel) or ``"quantization_noise"`` (the modelled INT8 noise for
    ``weight_quantization``: ``"per_tensor"`` or ``"per_channel"``), see prequant.torch's
    equalize_model);
    returns (new ModelProto, EqualizeResult)."""
    m = load(model, base_dir)
    result = _core.equalize_model(m.graph, relu6=relu6, max_iterations=max_iterations,
                                  absorb_high_bias=absorb_high_bias, bias_correction=bias_correction,
                                  bias_correction_bits=bias_correction_bits,
                                  bias_correction_per_channel=bias_correction_per_channel,
                                  bias_correction_symmetric=bias_correction_symmetric,
                                  regions=regions, gated_activations=gated_activations,
                                  scale_criterion=scale_criterion,
                                  weight_quantization=weight_quantization)
    return _to_proto(m), result
