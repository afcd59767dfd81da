"""Cross-layer scaling through x·g(x) activations (SiLU, HardSwish, GELU): coverage and INT8 output
SQNR, gated_activations off vs on.

Models: torchvision classifiers with random weights (no downloads) and perturbed BN statistics
(tests/torch/torch_cle_models.randomize_bn: var in [1e-2, 10], non-zero means, negative gamma).
Coverage: conv/linear layers scaled on at least one side; declines by class (bench/coverage_regions.py).
SQNR: onnxruntime QDQ INT8 (MinMax, prequant.demo._int8), output logits against the FP32 model,
calibrated on 100 images of the ImageNet sample (every 5th file) and evaluated on 100 others.

    PYTHONPATH=python python bench/gated_activations.py [--images N] [NAME ...]
    PYTHONPATH=python python bench/gated_activations.py --coverage [NAME ...]   (no INT8; all of
        bench/coverage_regions.py's models by default: chains + regions, gated off vs on)
"""

from __future__ import annotations

import argparse
import collections
import copy
import os
import sys

import numpy as np
import torch
import torchvision
from PIL import Image

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests", "torch"))

from coverage_regions import KWARGS, MODELS, reason_class  # noqa: E402
from torch_cle_models import randomize_bn  # noqa: E402

from prequant.demo._int8 import export_onnx, quantize_int8, run_onnx, sqnr_db  # noqa: E402
from prequant.torch.cross_layer_equalization import equalize_model  # noqa: E402

DATA = "/work/shared/data/imagenet-sample"
MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32) * 255
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32) * 255


def load(files: list[str]) -> np.ndarray:
    out = []
    for f in files:
        im = Image.open(os.path.join(DATA, "images", f)).convert("RGB")
        w, h = im.size
        s = 256 / min(w, h)
        im = im.resize((round(w * s), round(h * s)), Image.BILINEAR)
        w, h = im.size
        left, top = (w - 224) // 2, (h - 224) // 2
        a = np.asarray(im.crop((left, top, left + 224, top + 224)), dtype=np.float32)
        out.append(((a - MEAN) / STD).transpose(2, 0, 1))
    return np.stack(out).astype(np.float32)


def model_of(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return randomize_bn(getattr(torchvision.models, name)(weights=None).eval(), seed=0)


def coverage(result, model) -> tuple[int, int, collections.Counter]:
    scaled = {l for s in result.cls.sets for l in s.layers}
    for r in result.regions.regions:
        scaled |= set(r.sources) | set(r.sinks)
    declined = list(result.cls.declined) + list(result.regions.declined)
    layers = sum(isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)) for m in model.modules())
    return layers, len(scaled), collections.Counter(reason_class(d.reason) for d in declined)


def coverage_table(names: list[str]) -> None:
    fmt = lambda c: ", ".join(f"{k} {v}" for k, v in c.most_common()) or "none"
    print("| model | layers | scaled (gated off) | scaled (gated on) | declines (gated off) | declines (gated on) |")
    print("|---|---:|---:|---:|---|---|")
    for name in names:
        rows = []
        for gated in (False, True):
            torch.manual_seed(0)
            model = getattr(torchvision.models, name)(weights=None, **KWARGS.get(name, {})).eval()
            rows.append(coverage(equalize_model(model, regions=True, gated_activations=gated), model))
        print(f"| {name} | {rows[0][0]} | {rows[0][1]} | {rows[1][1]} | {fmt(rows[0][2])} | {fmt(rows[1][2])} |",
              flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=100, help="calibration and evaluation images each")
    ap.add_argument("--coverage", action="store_true", help="coverage table only")
    ap.add_argument("names", nargs="*")
    args = ap.parse_args()
    if args.coverage:
        coverage_table(args.names or MODELS)
        return
    args.names = args.names or ["efficientnet_b0", "mobilenet_v3_large"]
    files = sorted(os.listdir(os.path.join(DATA, "images")))
    calib = load([f for i, f in enumerate(files) if i % 5 == 0][:args.images])
    evals = load([f for i, f in enumerate(files) if i % 5 != 0][:args.images])
    fmt = lambda c: ", ".join(f"{k} {v}" for k, v in c.most_common()) or "none"
    print("| model | variant | layers scaled | declines | FP32 SQNR vs original | INT8 per-tensor | INT8 per-channel |")
    print("|---|---|---:|---|---:|---:|---:|")
    for name in args.names:
        original = model_of(name)
        ref = run_onnx(export_onnx(original), evals)
        variants = [("original", None)]
        for regions in (False, True):
            for gated in (False, True):
                variants.append((f"{'chains+regions' if regions else 'chains'}, gated {'on' if gated else 'off'}",
                                 dict(regions=regions, gated_activations=gated)))
        for label, kwargs in variants:
            model = copy.deepcopy(original)
            cov = ""
            if kwargs is not None:
                result = equalize_model(model, **kwargs)
                layers, scaled, declines = coverage(result, model)
                cov = f"{scaled}/{layers} | {fmt(declines)}"
            else:
                cov = "- | -"
            fp32 = export_onnx(model)
            fp32_sqnr = sqnr_db(ref, run_onnx(fp32, evals))
            pt = sqnr_db(ref, run_onnx(quantize_int8(fp32, calib, per_channel=False), evals))
            pc = sqnr_db(ref, run_onnx(quantize_int8(fp32, calib, per_channel=True), evals))
            print(f"| {name} | {label} | {cov} | {fp32_sqnr:.1f} dB | {pt:.2f} dB | {pc:.2f} dB |", flush=True)


if __name__ == "__main__":
    main()
