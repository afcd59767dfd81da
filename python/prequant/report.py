"""The weight report: per-layer and per-channel weight ranges before and after equalization
(the box plots of the DFQ paper's Fig. 2) and per-layer weight SQNR, as PNGs and one
self-contained HTML page — the same report as ``prequant report MODEL.onnx -o OUT_DIR``.

    import prequant
    report = prequant.write_report(model, "report/")      # ONNX (ModelProto, path, bytes),
    print(report.html)                                      # torch.nn.Module or Keras model

The model given is never changed: a torch model is deep-copied, a Keras model is rebuilt by the
front end, an ONNX model crosses into the engine as bytes. The statistics and the drawing are the
engine's (``prequant._core.collect_weight_stats`` / ``write_report``); this module only builds
the engine graphs of the two models through the front ends. Importing it imports neither torch
nor tensorflow.
"""

from __future__ import annotations

import copy
import os
import sys
from dataclasses import dataclass, field
from typing import Any

from prequant import _core

__all__ = ["Report", "collect_weight_stats", "write_report"]

collect_weight_stats = _core.collect_weight_stats

_BEFORE_LABELS = {"folded": "before (batch norms folded)", "original": "before (original)"}


@dataclass
class Report:
    """What write_report wrote, and the data it drew."""

    html: str
    json: str
    images: list[str]
    before: _core.WeightStats
    after: _core.WeightStats
    result: Any = field(repr=False)  # the engine's EqualizeResult (``.explain()``)


def _is_torch_module(model) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(model, torch.nn.Module)


def _is_keras_model(model) -> bool:
    keras = sys.modules.get("keras")
    return keras is not None and isinstance(model, keras.Model)


def _is_tf_keras_model(model) -> bool:
    return any((getattr(c, "__module__", "") or "").startswith(("tf_keras.", "tensorflow.python.keras."))
               for c in type(model).__mro__)


def _onnx_stats(model, before: str, bits: int, options: dict, base_dir):
    from prequant.onnx import load

    baseline = load(model, base_dir)
    if before == "folded":
        _core.unroll_shared_weights(baseline.graph)
        _core.fold_batch_norms(baseline.graph)
    before_stats = _core.collect_weight_stats(baseline.graph, bits)
    del baseline
    equalized = load(model, base_dir)
    result = _core.equalize_model(equalized.graph, **options)
    return before_stats, _core.collect_weight_stats(equalized.graph, bits), result


def _torch_stats(model, before: str, bits: int, options: dict):
    from prequant.torch._engine_graph import build_engine_graph
    from prequant.torch.batch_norm_fold import fold_all_batch_norms
    from prequant.torch.cross_layer_equalization import equalize_model

    baseline = copy.deepcopy(model)
    if before == "folded":
        fold_all_batch_norms(baseline)
    before_stats = _core.collect_weight_stats(build_engine_graph(baseline).graph, bits)
    del baseline
    equalized = copy.deepcopy(model)
    result = equalize_model(equalized, **options)
    return before_stats, _core.collect_weight_stats(build_engine_graph(equalized).graph, bits), result


def _keras_stats(model, before: str, bits: int, options: dict):
    from prequant.keras._engine_graph import build_engine_graph
    from prequant.keras.batch_norm_fold import fold_all_batch_norms
    from prequant.keras.cross_layer_equalization import equalize_model

    baseline = fold_all_batch_norms(model)[1] if before == "folded" else model
    before_stats = _core.collect_weight_stats(build_engine_graph(baseline).graph, bits)
    equalized, result = equalize_model(model, return_result=True, **options)
    return before_stats, _core.collect_weight_stats(build_engine_graph(equalized).graph, bits), result


def _model_name(model) -> str:
    if isinstance(model, (str, os.PathLike)):
        return os.fspath(model)
    if hasattr(model, "SerializeToString"):  # onnx.ModelProto
        return f"ONNX model '{model.graph.name}'" if model.graph.name else "ONNX model"
    if isinstance(model, (bytes, bytearray, memoryview)):
        return "ONNX model (bytes)"
    name = getattr(model, "name", None)
    return f"{type(model).__name__} '{name}'" if isinstance(name, str) and name else type(model).__name__


def _summary(result, relu6: str, absorb_high_bias: bool, scale_criterion: str) -> str:
    declined = sum(len(d) for d in (result.fold.declined, result.cls.declined, result.high_bias.declined,
                                    result.activations.declined))
    return (f"equalize (relu6={relu6!r}, scale_criterion={scale_criterion!r}"
            f"{', absorb_high_bias=True' if absorb_high_bias else ''}): folded "
            f"{len(result.fold.folded)} batch norm(s), scaled {len(result.cls.sets)} CLS set(s) in "
            f"{result.cls.iterations} iteration(s), absorbed high bias in {len(result.high_bias.absorbed)} pair(s); "
            f"{declined} candidate(s) declined (result.explain() says why).")


def write_report(model: Any, out_dir: str | os.PathLike, *, before: str = "folded", bits: int = 8,
                 relu6: str = "bound", absorb_high_bias: bool = False, max_iterations: int = _core.DEFAULT_MAX_ITERATIONS,
                 scale_criterion: str = "weights_and_activations",
                 max_layer_plots: int = 24, max_channels: int = 128, title: str | None = None,
                 base_dir: str | os.PathLike | None = None) -> Report:
    """Equalize a copy of `model` and write the weight report of before vs after into `out_dir`.

    `model`: an onnx.ModelProto, a path to an .onnx file or serialized bytes (`base_dir` resolves
    external data of bytes/ModelProto), a torch.nn.Module in eval mode (one ``prepare_model``
    returned, if torch.fx cannot trace it as it is), or a Keras 3 model.
    `before`: the baseline — ``"folded"`` (batch norms folded: the weights a quantizer sees
    without equalization) or ``"original"``. `relu6`, `absorb_high_bias`, `max_iterations`,
    `scale_criterion`: as for the front ends' ``equalize_model`` (``"weights"``, DFQ's criterion,
    balances the weight ranges exactly; the default also weighs the activation ranges). `bits`: the weight bit width of the SQNR columns.
    Returns a :class:`Report` with the paths written and the statistics drawn.
    """
    if before not in _BEFORE_LABELS:
        raise _core.InvalidRequestError(f"before must be 'folded' or 'original', got {before!r}")
    options = dict(relu6=relu6, max_iterations=max_iterations, absorb_high_bias=absorb_high_bias,
                   scale_criterion=scale_criterion)
    if _is_torch_module(model):
        before_stats, after_stats, result = _torch_stats(model, before, bits, options)
    elif _is_keras_model(model):
        before_stats, after_stats, result = _keras_stats(model, before, bits, options)
    elif isinstance(model, (str, os.PathLike, bytes, bytearray, memoryview)) or hasattr(model, "SerializeToString"):
        before_stats, after_stats, result = _onnx_stats(model, before, bits, options, base_dir)
    elif _is_tf_keras_model(model):
        from prequant.keras._tf_keras import tf_keras_message

        raise _core.UnsupportedError(tf_keras_message(model, "write_report"))
    else:
        raise TypeError(f"write_report takes an ONNX model (ModelProto, path or bytes), a torch.nn.Module or a "
                        f"Keras model, not {type(model).__name__}")
    name = _model_name(model)
    files = _core.write_report(
        before_stats, after_stats, out_dir, title=title or f"prequant weight report: {os.path.basename(name)}",
        model=name, before_label=_BEFORE_LABELS[before], notes=[_summary(result, relu6, absorb_high_bias, scale_criterion)],
        max_layer_plots=max_layer_plots, max_channels=max_channels)
    return Report(files["html"], files["json"], list(files["images"]), before_stats, after_stats, result)
