"""The demo: what cross-layer equalization does for per-tensor INT8, on a MobileNetV2.

    python -m prequant.demo

Builds torchvision's MobileNetV2 (random weights, so nothing is downloaded), prepares it, folds
its batch norms, and then — GUIDE's stress case — rescales the channels between consecutive
layers by random positive factors (1e-2 … 1e2). That leaves the FP32 function unchanged but
spreads per-channel weight ranges over four orders of magnitude, as badly trained or
BN-folded depthwise layers do. Per-tensor INT8 weights then flush small channels to zero;
prequant's equalize_model recovers the model. Output SQNR (dB, higher is better) against the
FP32 model is measured on random inputs.
"""

from __future__ import annotations

import copy
import sys
import time


def _say(msg: str) -> None:
    print(msg, flush=True)


def _rescale_randomly(model, generator) -> None:
    """Multiply each CLS pair's shared channel by s in layer 1 and by 1/s in layer 2 (the engine
    says which pairs are scalable): the FP32 function stays the same."""
    import torch

    from prequant import _core
    from prequant.torch._engine_graph import build_engine_graph

    eg = build_engine_graph(model)
    with torch.no_grad():
        for cls_set in _core.find_cls_sets(eg.graph).sets:
            layers = [eg.modules[n] for n in cls_set.layers]
            for l1, l2 in zip(layers, layers[1:]):
                c = l1.weight.shape[0]
                s = 10 ** (torch.rand(c, generator=generator) * 4 - 2)
                l1.weight.mul_(s.view(-1, *[1] * (l1.weight.dim() - 1)))
                if l1.bias is not None:
                    l1.bias.mul_(s)
                if l2.groups > 1:  # depthwise: its only input channel is its output channel
                    l2.weight.div_(s.view(-1, *[1] * (l2.weight.dim() - 1)))
                else:
                    l2.weight.div_(s.view(1, -1, *[1] * (l2.weight.dim() - 2)))


def _quantize_weights(model, per_channel: bool = False) -> None:
    import torch

    with torch.no_grad():
        for m in model.modules():
            w = getattr(m, "weight", None)
            if not isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)) or w is None:
                continue
            if per_channel:
                scale = w.abs().flatten(1).max(1).values.clamp_min(1e-12).view(-1, *[1] * (w.dim() - 1)) / 127
            else:
                scale = w.abs().max().clamp_min(1e-12) / 127
            w.copy_(torch.clamp(torch.round(w / scale), -127, 127) * scale)


def _sqnr_db(ref, out) -> float:
    import torch

    return float(10 * torch.log10(ref.pow(2).mean() / (ref - out).pow(2).mean().clamp_min(1e-30)))


def main() -> int:
    t0 = time.perf_counter()
    try:
        import torch
        import torchvision
    except ImportError as exc:  # the demo needs the PyTorch extra
        _say(f"the demo needs torch and torchvision ({exc}); run scripts/install.sh")
        return 1
    from prequant.torch import prepare_model
    from prequant.torch.batch_norm_fold import fold_all_batch_norms
    from prequant.torch.cross_layer_equalization import equalize_model, replace_relu6_with_relu

    torch.manual_seed(0)
    _say("[1/4] building MobileNetV2 (random weights)")
    model = torchvision.models.mobilenet_v2(weights=None).eval()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(8, 3, 96, 96, generator=g)

    _say("[2/4] prepare_model (torch.fx), ReLU6 → ReLU, batch-norm folding")
    base = prepare_model(model)
    replace_relu6_with_relu(base)
    fold_all_batch_norms(base)

    _say("[3/4] random function-preserving channel rescaling between layers (1e-2 … 1e2)")
    stressed = copy.deepcopy(base)
    _rescale_randomly(stressed, g)
    with torch.no_grad():
        ref = stressed(x)

    _say("[4/4] prequant.equalize_model, then per-tensor INT8 weights")
    equalized = copy.deepcopy(stressed)
    t_eq = time.perf_counter()
    result = equalize_model(equalized, absorb_high_bias=False)
    t_eq = time.perf_counter() - t_eq
    rows = []
    with torch.no_grad():
        for label, m, per_channel in (
            ("FP32, equalized (no quantization)", equalized, None),
            ("INT8 per-tensor, as given", stressed, False),
            ("INT8 per-tensor, after prequant equalize_model", equalized, False),
            ("INT8 per-tensor, before the rescaling (reference)", base, False),
            ("INT8 per-channel, as given (reference)", stressed, True),
        ):
            q = copy.deepcopy(m)
            if per_channel is not None:
                _quantize_weights(q, per_channel)
            rows.append((label, _sqnr_db(ref, q(x))))
    _say("")
    _say("| model | output SQNR (dB) |")
    _say("|---|---:|")
    for label, db in rows:
        _say(f"| {label} | {db:.1f} |")
    _say("")
    _say(f"equalize_model scaled {len(result.cls.sets)} CLS sets ({result.cls.iterations} iterations) "
         f"in {t_eq * 1e3:.0f} ms; total {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
