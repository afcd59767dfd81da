"""The CLS scale criterion on a second network: torchvision MobileNetV2 (ReLU6), onnxruntime QDQ INT8.

    PYTHONPATH=python python bench/scale_criterion_mobilenet_v2.py [--images 64] [--seed 0]

Random weights (no downloads); each BN's running statistics set to the batch statistics of the
calibration images (one forward pass in training mode, so the BN statistics describe the data,
as trained ones do), then gamma = ±exp(U(ln 0.05, ln 5)) and beta ~ N(0.5, 1) (the setup of
bench/relu6_bound_tflite_mobilenetv2.py): per-channel ranges two decades apart and ReLU6 clipping.
Rows: unmodified, equalize_model(relu6='skip'), and relu6='bound' with each scale_criterion
(quantization_noise: each INT8 column from the model equalized with that weight_quantization);
output SQNR of the logits against the FP32 model's, INT8 per tensor and per channel
(prequant.demo._int8: QDQ, MinMax, graph optimization BASIC), calibration on `--images` images of
the ImageNet sample (every 5th file), evaluation on as many others.
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import sys

import numpy as np
import torch
import torchvision

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gated_activations import DATA, load  # noqa: E402

from prequant.demo._int8 import export_onnx, quantize_int8, run_onnx, sqnr_db  # noqa: E402
from prequant.torch.cross_layer_equalization import equalize_model  # noqa: E402


def model_of(calib: np.ndarray, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    m = torchvision.models.mobilenet_v2(weights=None)
    bns = [b for b in m.modules() if isinstance(b, torch.nn.BatchNorm2d)]
    for b in bns:
        b.reset_running_stats()
        b.momentum = None  # cumulative: after one batch, the batch's statistics
    m.train()
    with torch.no_grad():
        m(torch.from_numpy(calib))
    m.eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for b in bns:
            c = b.num_features
            mag = torch.exp(torch.empty(c).uniform_(math.log(0.05), math.log(5), generator=g))
            sign = torch.where(torch.rand(c, generator=g) < 0.5, -1.0, 1.0)
            b.weight.copy_(mag * sign)
            b.bias.copy_(torch.randn(c, generator=g) + 0.5)
    return m


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(2)
    files = sorted(os.listdir(os.path.join(DATA, "images")))
    calib = load([f for i, f in enumerate(files) if i % 5 == 0][:args.images])
    evals = load([f for i, f in enumerate(files) if i % 5 != 0][:args.images])
    original = model_of(calib, args.seed)
    ref = run_onnx(export_onnx(original), evals)
    variants = [("unmodified", None), ("equalize relu6=skip", dict(relu6="skip"))]
    variants += [(f"equalize relu6=bound, scale_criterion={c}", dict(scale_criterion=c))
                 for c in ("weights", "weights_and_activations", "activations")]
    # quantization_noise models the weight quantizer: each INT8 column gets the model equalized for it.
    variants += [("equalize relu6=bound, scale_criterion=quantization_noise (per column: its target)",
                  {q: dict(scale_criterion="quantization_noise", weight_quantization=q)
                   for q in ("per_tensor", "per_channel")})]
    print("| variant | FP32 SQNR dB | INT8 per-tensor dB | INT8 per-channel dB |")
    print("|---|---:|---:|---:|", flush=True)

    def equalized(kwargs):
        model = copy.deepcopy(original)
        if kwargs is not None:
            equalize_model(model, **kwargs)
        return export_onnx(model)

    for label, kwargs in variants:
        per_target = kwargs is not None and "per_tensor" in kwargs
        fp32 = equalized(kwargs["per_tensor"] if per_target else kwargs)
        fp32_pc = equalized(kwargs["per_channel"]) if per_target else fp32
        f = min(sqnr_db(ref, run_onnx(fp32, evals)), sqnr_db(ref, run_onnx(fp32_pc, evals)))
        pt = sqnr_db(ref, run_onnx(quantize_int8(fp32, calib, per_channel=False), evals))
        pc = sqnr_db(ref, run_onnx(quantize_int8(fp32_pc, calib, per_channel=True), evals))
        print(f"| {label} | {'>100' if f > 100 else f'{f:.1f}'} | {pt:.1f} | {pc:.1f} |", flush=True)

if __name__ == "__main__":
    main()
