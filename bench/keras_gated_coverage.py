"""Keras cross-layer scaling through x·g(x) activations: coverage, gated_activations off vs on.

keras.applications models with random weights (weights=None: no downloads) at a small input,
random BN statistics (tests/keras/conftest.randomize_batch_norms: var in [1e-2, 10], non-zero
means, negative gamma). Per variant (chains; chains + regions) and gated off / on: conv and
dense layers scaled on at least one side, decline classes, and the equalized model's largest
output difference against the original (relative to the output's largest magnitude).

    PYTHONPATH=python python bench/keras_gated_coverage.py [--float64] [EfficientNetB0 MobileNetV3Small ...]

--float64 builds the models in float64 (keras.config.set_floatx), where the drift shows that the
function is kept (float32 drift is rounding through a deep random network: ~1e-4 on
MobileNetV3Small with gated off too).
"""

from __future__ import annotations

import collections
import os
import re
import sys

import keras
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests", "keras"))
from conftest import randomize_batch_norms  # noqa: E402

from prequant.keras.cross_layer_equalization import equalize_model  # noqa: E402

WEIGHTED = (keras.layers.Conv2D, keras.layers.DepthwiseConv2D, keras.layers.Dense)
# logits (no softmax) so that the output drift is not hidden by a saturated softmax
SMALL = dict(input_shape=(64, 64, 3), classifier_activation=None)
MODELS = {"EfficientNetB0": SMALL, "MobileNetV3Small": SMALL}


def reason_class(reason: str) -> str:
    for pattern, label in [(r"graph output", "graph output"), (r"x·g\(x\)", "x·g(x) (gated off)"),
                           (r"feeds .* and", "fan-out"), (r"Multiply|multiply", "SE Multiply"),
                           (r"[Aa]dd", "Add"), (r"Reshape|reshape", "Reshape"),
                           (r"sigmoid|Sigmoid", "sigmoid"), (r"[Cc]oncat", "Concat"), (r"Flatten", "Flatten")]:
        if re.search(pattern, reason):
            return label
    return reason[:60]


def row(model, x, ref, regions: bool, gated: bool):
    new, result = equalize_model(model, regions=regions, gated_activations=gated, return_result=True)
    scaled = {l for s in result.cls.sets for l in s.layers}
    for r in result.regions.regions:
        scaled |= set(r.sources) | set(r.sinks)
    declined = list(result.cls.declined) + (list(result.regions.declined) if regions else [])
    drift = float(np.max(np.abs(new.predict(x, verbose=0) - ref)) / np.max(np.abs(ref)))
    return len(scaled), collections.Counter(reason_class(d.reason) for d in declined), drift


def main() -> None:
    args = sys.argv[1:]
    if "--float64" in args:
        args.remove("--float64")
        keras.config.set_floatx("float64")
    names = args or list(MODELS)
    fmt = lambda c: ", ".join(f"{k} {v}" for k, v in c.most_common()) or "none"
    print("| model | variant | layers | scaled (gated off) | scaled (gated on) | declines (gated off) | "
          "declines (gated on) | output drift (gated on) |")
    print("|---|---|---:|---:|---:|---|---|---:|")
    for name in names:
        keras.utils.set_random_seed(0)
        model = randomize_batch_norms(getattr(keras.applications, name)(weights=None, **MODELS.get(name, {})))
        layers = sum(type(l) in WEIGHTED for l in model.layers)
        x = np.random.default_rng(0).uniform(0, 255, (2, *model.input_shape[1:])).astype(keras.config.floatx())
        ref = model.predict(x, verbose=0)
        for regions in (False, True):
            off, on = row(model, x, ref, regions, False), row(model, x, ref, regions, True)
            print(f"| {name} | {'chains + regions' if regions else 'chains'} | {layers} | {off[0]} | {on[0]} | "
                  f"{fmt(off[1])} | {fmt(on[1])} | {on[2]:.1e} |", flush=True)


if __name__ == "__main__":
    main()
