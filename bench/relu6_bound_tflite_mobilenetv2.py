"""ReLU6 'bound' representation, before/after, through TFLite's converter on Keras MobileNetV2.

    python bench/relu6_bound_tflite_mobilenetv2.py --before /work/main/python --after python \
        [--calib 50] [--eval 200]

Model: keras.applications.MobileNetV2(weights=None, 224×224) — no downloads — made realistic:
every BatchNormalization's moving mean/variance set to the batch statistics its input actually
has on the calibration images (one training-mode pass with momentum 0, so the network's
activations neither explode nor vanish with depth), then gamma = ±exp(U(ln 0.05, ln 5)) (10 %
negative) and beta ~ N(0.5, 1) per channel: per-channel ranges two decades apart, as trained
networks have, and ReLU6 clipping in every block. Seeded; the same model on both sides.

Data: /work/shared/data/imagenet-sample, files sorted by name, every 5th image a calibration
image (the first --calib), the others evaluation images (the first --eval); resize short side to
256, center crop 224, x/127.5 − 1 (MobileNetV2's preprocessing).

Rows, each side in a fresh process importing prequant from its PYTHONPATH: TFLite full-integer
INT8 (representative dataset = the calibration images, int8 builtin ops), per-channel (the
converter's default) and per-tensor (its private switch _experimental_disable_per_channel), of
the unmodified model and of equalize_model(model) (relu6='bound', chains). Output SQNR of the
float logits against the Keras FP32 model's, top-1 agreement with it, and how many CONV_2D /
DEPTHWISE_CONV_2D have a fused RELU6 and how many MINIMUM ops there are.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import numpy as np

DATA = "/work/shared/data/imagenet-sample"
SEED = 0


def load_images(calib: int, n_eval: int):
    from PIL import Image

    files = sorted(os.listdir(os.path.join(DATA, "images")))
    def load(f):
        im = Image.open(os.path.join(DATA, "images", f)).convert("RGB")
        s = 256 / min(im.size)
        im = im.resize((round(im.size[0] * s), round(im.size[1] * s)), Image.BILINEAR)
        left, top = (im.size[0] - 224) // 2, (im.size[1] - 224) // 2
        return np.asarray(im.crop((left, top, left + 224, top + 224)), dtype=np.float32) / 127.5 - 1.0
    cal = [f for i, f in enumerate(files) if i % 5 == 0][:calib]
    ev = [f for i, f in enumerate(files) if i % 5 != 0][:n_eval]
    return np.stack([load(f) for f in cal]), np.stack([load(f) for f in ev])


def realistic_model(calib: np.ndarray):
    import keras

    keras.utils.set_random_seed(SEED)
    model = keras.applications.MobileNetV2(weights=None, input_shape=(224, 224, 3))
    bns = [l for l in model.layers if isinstance(l, keras.layers.BatchNormalization)]
    for bn in bns:
        bn.momentum = 0.0
    model(calib, training=True)  # moving stats := this batch's statistics, every BN at once
    rng = np.random.default_rng(SEED)
    for bn in bns:
        c = bn.gamma.shape[0]
        gamma = np.exp(rng.uniform(np.log(0.05), np.log(5.0), c)) * np.where(rng.random(c) < 0.1, -1, 1)
        bn.gamma.assign(gamma.astype("float32"))
        bn.beta.assign(rng.normal(0.5, 1.0, c).astype("float32"))
        bn.momentum = 0.99
    return model


def _load_tflite_helpers():
    """prequant/demo/_tflite.py of this checkout, loaded by path: the "before" side's PYTHONPATH
    may hold a prequant without it (the module imports only TensorFlow and numpy)."""
    import importlib.util

    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python", "prequant", "demo", "_tflite.py")
    spec = importlib.util.spec_from_file_location("prequant_demo_tflite", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tflite_outputs(model, calib, x, per_tensor: bool):
    tfl = _load_tflite_helpers()
    content = tfl.convert_int8(model, calib, per_tensor=per_tensor)
    return tfl.run_tflite(content, x), tfl.describe_ops(content)


def sqnr(ref, out):
    return float(10 * np.log10(np.sum(ref.astype(np.float64) ** 2) / np.sum((ref.astype(np.float64) - out) ** 2)))


def child(args):
    import logging
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    from prequant.keras.cross_layer_equalization import equalize_model

    calib, x = load_images(args.calib, args.eval)
    model = realistic_model(calib)
    ref = np.asarray(model.predict(x, batch_size=25, verbose=0))
    rows = []
    variants = [("equalize relu6=bound", equalize_model(model))]
    if args.base:
        variants.insert(0, ("unmodified", model))
    for label, m in variants:
        fp32 = np.asarray(m.predict(x, batch_size=25, verbose=0))
        for per_tensor in (False, True):
            out, ops = tflite_outputs(m, calib, x, per_tensor)
            rows.append(dict(label=f"{label} + TFLite INT8 {'per-tensor' if per_tensor else 'per-channel'}",
                             sqnr=sqnr(ref, out), agree=100 * float((out.argmax(1) == ref.argmax(1)).mean()),
                             fp32_sqnr=sqnr(ref, fp32) if m is not model else float("inf"), ops=ops))
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    print(json.dumps(rows))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--before", required=True)
    ap.add_argument("--after", required=True)
    ap.add_argument("--calib", type=int, default=50)
    ap.add_argument("--eval", type=int, default=200)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--base", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args)
        return
    results = {}
    for side, path in (("before", args.before), ("after", args.after)):
        env = dict(os.environ, PYTHONPATH=os.path.abspath(path), TF_CPP_MIN_LOG_LEVEL="2")
        cmd = [sys.executable, os.path.abspath(__file__), "--before", args.before, "--after", args.after,
               "--calib", str(args.calib), "--eval", str(args.eval), "--child"] + (["--base"] if side == "after" else [])
        out = subprocess.run(cmd, env=env, check=True, stdout=subprocess.PIPE, text=True).stdout
        results[side] = json.loads(out.strip().splitlines()[-1])
    print("| row | side | agree % | output SQNR dB | FP32 SQNR dB | TFLite ops |")
    print("|---|---|---:|---:|---:|---|")
    for side in ("after", "before"):
        for r in results[side]:
            eq = r["label"].startswith("equalize")
            print(f"| {r['label']} | {side if eq else '-'} | {r['agree']:.1f} | {r['sqnr']:.1f} | "
                  f"{'inf' if r['fp32_sqnr'] == float('inf') else format(r['fp32_sqnr'], '.1f')} | {r['ops']} |")


if __name__ == "__main__":
    main()
