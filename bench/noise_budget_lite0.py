"""Where the INT8 error of the pretrained EfficientNet-Lite0 is: a fast simulated quantizer in torch.

    python bench/noise_budget_lite0.py [--calib 64] [--eval 128] \
        [--variant 'label=equalize_model kwargs as JSON' ...]

For each variant (the unmodified model, prequant's equalize_model with the given keyword
arguments), the output SQNR against the FP32 logits with
  weights only      weights fake-quantized (symmetric INT8, per tensor or per channel), float activations
  activations only  float weights, activations fake-quantized per tensor (asymmetric uint8, MinMax
                    over the calibration images, range widened to include 0, as onnxruntime's MinMax)
  both              the two together.
Activations are quantized where onnxruntime's QDQ quantizer puts Q/DQ pairs: the graph input,
each activation's output (a conv followed by its ReLU6 is fused: its own output is not quantized),
a conv output that no activation follows, Add outputs, the global pooling output and the logits.
Not onnxruntime (no bias rounding to int32, no per-op quirks): it is for exploring, and its
figures are cross-checked against bench/relu6_bound_lite0.py's onnxruntime rows in
docs/BENCHMARKS.md. Data: bench/accuracy_efficientnet_lite0.py's split (calibration images
first, evaluation images from the rest).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys

import numpy as np
import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import accuracy_efficientnet_lite0 as acc  # noqa: E402
from prequant.demo.efficientnet_lite import efficientnet_lite0  # noqa: E402
from prequant.torch import prepare_model  # noqa: E402
from prequant.torch.batch_norm_fold import fold_all_batch_norms  # noqa: E402
from prequant.torch.cross_layer_equalization import equalize_model  # noqa: E402

ACTIVATIONS = ("ReLU", "ReLU6", "Hardtanh", "BoundedReLU", "GatedActivation", "SiLU", "Hardswish")
PASS_THROUGH = ("Identity", "Dropout", "ZeroPad2d", "ConstantPad2d", "Flatten")


def fake_quant_weight(w: torch.Tensor, per_channel: bool, axis: int = 0) -> torch.Tensor:
    """Symmetric INT8, levels −127..127 (onnxruntime's QInt8 weights)."""
    if per_channel:
        dims = [d for d in range(w.dim()) if d != axis]
        m = w.abs().amax(dim=dims, keepdim=True)
    else:
        m = w.abs().max()
    step = torch.clamp(m, min=1e-30) / 127.0
    return torch.clamp(torch.round(w / step), -127, 127) * step


def quant_points(model: torch.fx.GraphModule) -> list[str]:
    """Names of the modules whose output onnxruntime's QDQ quantizer would quantize."""
    mods = dict(model.named_modules())
    kind = lambda n: type(mods[n.target]).__name__ if n.op == "call_module" else n.op

    def next_real(n):  # the first user that is not a pass-through module
        while len(n.users) == 1:
            (u,) = n.users
            if kind(u) in PASS_THROUGH and kind(u) != "ZeroPad2d":
                n = u
                continue
            return u
        return None

    points = []
    for n in model.graph.nodes:
        if n.op != "call_module":
            continue
        k = kind(n)
        if k in ACTIVATIONS or k in ("Add", "AdaptiveAvgPool2d", "Linear"):
            points.append(n.target)
        elif k.startswith("Conv"):
            u = next_real(n)
            if u is None or kind(u) not in ACTIVATIONS:
                points.append(n.target)
    return points


class Simulator:
    def __init__(self, model: nn.Module, calib: torch.Tensor):
        self.model = model.eval()
        self.points = quant_points(model)
        self.ranges: dict[str, tuple[float, float]] = {}
        self.input_range = (min(0.0, float(calib.min())), max(0.0, float(calib.max())))
        self._float_weights = {n: m.weight.detach().clone() for n, m in model.named_modules()
                               if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear))}
        mods = dict(model.named_modules())

        def record(name):
            def hook(_m, _i, out):
                lo, hi = self.ranges.get(name, (0.0, 0.0))
                self.ranges[name] = (min(lo, float(out.min())), max(hi, float(out.max())))
            return hook

        hooks = [mods[p].register_forward_hook(record(p)) for p in self.points]
        with torch.no_grad():
            for i in range(0, len(calib), 16):
                model(calib[i:i + 16])
        for h in hooks:
            h.remove()

    @staticmethod
    def _fq(x, lo, hi):
        step = max(hi - lo, 1e-30) / 255.0
        zero = round(-lo / step)
        return (torch.clamp(torch.round(x / step) + zero, 0, 255) - zero) * step

    def run(self, x: torch.Tensor, weights: str | None, activations: bool) -> np.ndarray:
        """weights: None (float), 'per-tensor' or 'per-channel'."""
        mods = dict(self.model.named_modules())
        with torch.no_grad():
            for n, w in self._float_weights.items():
                m = mods[n]
                axis = 1 if isinstance(m, (nn.ConvTranspose1d, nn.ConvTranspose2d)) else 0
                m.weight.copy_(w if weights is None else fake_quant_weight(w, weights == "per-channel", axis))
        hooks = []
        if activations:
            hooks = [mods[p].register_forward_hook(lambda _m, _i, out, r=self.ranges[p]: self._fq(out, *r))
                     for p in self.points]
            x = self._fq(x, *self.input_range)
        try:
            with torch.no_grad():
                return torch.cat([self.model(x[i:i + 32]) for i in range(0, len(x), 32)]).numpy()
        finally:
            for h in hooks:
                h.remove()
            with torch.no_grad():
                for n, w in self._float_weights.items():
                    mods[n].weight.copy_(w)


def noise_budget(model: nn.Module, calib: torch.Tensor, x: torch.Tensor, ref: np.ndarray) -> dict:
    sim = Simulator(model, calib)
    out = {"fp32": acc.sqnr_db(ref, sim.run(x, None, False))}
    for w in ("per-tensor", "per-channel"):
        out[f"weights {w}"] = acc.sqnr_db(ref, sim.run(x, w, False))
        out[f"both {w}"] = acc.sqnr_db(ref, sim.run(x, w, True))
    out["activations"] = acc.sqnr_db(ref, sim.run(x, None, True))
    return out


def lite0(kwargs: dict | None) -> nn.Module:
    """The prepared model; unmodified = batch norms folded (exact), as the ONNX export quantized by
    onnxruntime has them (the TorchScript exporter folds them in eval mode)."""
    m = prepare_model(efficientnet_lite0())
    if kwargs is None:
        fold_all_batch_norms(m)
    else:
        equalize_model(m, dummy_input=torch.zeros(1, 3, 224, 224), **kwargs)
    return m


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--calib", type=int, default=64)
    ap.add_argument("--eval", type=int, default=128)
    ap.add_argument("--variant", action="append", default=[],
                    help="label=JSON kwargs of equalize_model (default: unmodified, DFQ bound, DFQ skip)")
    args = ap.parse_args()
    torch.set_num_threads(acc.THREADS)
    calib, x, _ = acc.load_split(args.eval)
    calib, x = torch.from_numpy(calib[:args.calib]), torch.from_numpy(x)
    variants = [("unmodified", None), ("equalize (DFQ, relu6=bound)", {}), ("equalize relu6=skip", {"relu6": "skip"})]
    if args.variant:
        variants = [("unmodified", None)] + [(v.split("=", 1)[0], json.loads(v.split("=", 1)[1])) for v in args.variant]
    ref = None
    cols = ["weights per-tensor", "weights per-channel", "activations", "both per-tensor", "both per-channel"]
    print("| variant | " + " | ".join(cols) + " | FP32 |")
    print("|---|" + "---:|" * (len(cols) + 1), flush=True)
    for label, kwargs in variants:
        m = lite0(kwargs)
        if ref is None:
            with torch.no_grad():
                ref = torch.cat([m(x[i:i + 32]) for i in range(0, len(x), 32)]).numpy()
        r = noise_budget(m, calib, x, ref)
        fmt = lambda v: "inf" if math.isinf(v) else f"{v:.1f}" if v < 100 else ">100"
        print(f"| {label} | " + " | ".join(fmt(r[c]) for c in cols) + f" | {fmt(r['fp32'])} |", flush=True)


if __name__ == "__main__":
    main()
