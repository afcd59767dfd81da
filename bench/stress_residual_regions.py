"""Stress case for equalization regions: torchvision resnet18 (random weights, randomized BN
statistics, BNs folded) under a random function-preserving per-channel rescaling inside every
block (conv1 → relu → conv2) and across every residual stream (the stem, each block's conv2 and
each downsample write the stream; each block's conv1, the next downsample and fc read it).
Judged by the output SQNR of per-tensor symmetric INT8 *weight* quantization against FP32:

    before rescale / after rescale / after equalize_model (chains) / after equalize_model(regions=True)

    PYTHONPATH=python python bench/stress_residual_regions.py [--factor 100] [--seeds 3]
        [--criterion weights|weights_and_activations]

The BNs are folded before the rescaling (a rescaled conv followed by a BN would not keep the
function), so equalize_model folds none and has no activation statistics: under
weights_and_activations every set and region falls back to the weight criterion (counted).
"""

from __future__ import annotations

import argparse
import copy

import numpy as np
import torch
import torchvision
from torch import nn

from prequant.torch.batch_norm_fold import fold_all_batch_norms
from prequant.torch.cross_layer_equalization import equalize_model


def randomize_batch_norms(model: nn.Module, gen: torch.Generator) -> None:
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            c = m.num_features
            with torch.no_grad():
                m.weight.copy_(torch.where(torch.rand(c, generator=gen) < 0.25, -1.0, 1.0)
                               * (0.5 + torch.rand(c, generator=gen)))
                m.bias.copy_(0.5 * torch.randn(c, generator=gen))
                m.running_mean.copy_(0.5 * torch.randn(c, generator=gen))
                m.running_var.copy_(torch.exp(torch.empty(c).uniform_(np.log(1e-2), np.log(10.0), generator=gen)))


def factors(c: int, spread: float, gen: torch.Generator) -> torch.Tensor:
    return torch.exp(torch.empty(c).uniform_(-np.log(spread), np.log(spread), generator=gen))


@torch.no_grad()
def divide_out(layer: nn.Module, d: torch.Tensor) -> None:
    layer.weight.div_(d.view(-1, *([1] * (layer.weight.dim() - 1))))
    if layer.bias is not None:
        layer.bias.div_(d)


@torch.no_grad()
def multiply_in(layer: nn.Module, d: torch.Tensor) -> None:
    layer.weight.mul_(d.view(1, -1, *([1] * (layer.weight.dim() - 2))))


def rescale(model: torchvision.models.ResNet, spread: float, gen: torch.Generator) -> None:
    """Function-preserving: every stream tensor is divided by one vector per stage, every
    block's inner tensor by its own vector (ReLU is positively homogeneous)."""
    stream = factors(model.conv1.out_channels, spread, gen)
    divide_out(model.conv1, stream)
    for stage in (model.layer1, model.layer2, model.layer3, model.layer4):
        for block in stage:
            inner = factors(block.conv1.out_channels, spread, gen)
            multiply_in(block.conv1, stream)
            divide_out(block.conv1, inner)
            multiply_in(block.conv2, inner)
            if block.downsample is not None:
                multiply_in(block.downsample[0], stream)
                stream = factors(block.conv2.out_channels, spread, gen)
                divide_out(block.downsample[0], stream)
            divide_out(block.conv2, stream)
    multiply_in(model.fc, stream)


@torch.no_grad()
def quantize_weights(model: nn.Module) -> nn.Module:
    q = copy.deepcopy(model)
    for m in q.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            scale = m.weight.abs().max() / 127.0
            m.weight.copy_(torch.clamp(torch.round(m.weight / scale), -127, 127) * scale)
    return q


@torch.no_grad()
def sqnr(model: nn.Module, x: torch.Tensor) -> float:
    ref = model(x)
    err = quantize_weights(model)(x) - ref
    return float(10 * torch.log10(ref.pow(2).sum() / err.pow(2).sum()))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--factor", type=float, default=100.0, help="rescaling factors in [1/f, f]")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--criterion", default="weights", help="scale_criterion of both equalize rows")
    args = ap.parse_args()
    rows = []
    for seed in range(args.seeds):
        gen = torch.Generator().manual_seed(seed)
        torch.manual_seed(seed)
        model = torchvision.models.resnet18(weights=None).eval()
        randomize_batch_norms(model, gen)
        fold_all_batch_norms(model)
        x = torch.randn(8, 3, 64, 64, generator=gen)
        base = sqnr(model, x)
        with torch.no_grad():
            ref = model(x)
        rescale(model, args.factor, gen)
        with torch.no_grad():
            drift = float((model(x) - ref).abs().max() / ref.abs().max())
        scaled = sqnr(model, x)
        chains, regions = copy.deepcopy(model), copy.deepcopy(model)
        equalize_model(chains, scale_criterion=args.criterion)
        result = equalize_model(regions, regions=True, scale_criterion=args.criterion)
        rows.append((seed, base, scaled, sqnr(chains, x), sqnr(regions, x), drift,
                     len(result.regions.regions), sum(bool(r.criterion_fallback) for r in result.regions.regions)))
    print(f"resnet18, BN folded, rescaling factors in [1/{args.factor:g}, {args.factor:g}], "
          f"per-tensor INT8 weights, output SQNR (dB), scale_criterion={args.criterion}")
    print("| seed | un-rescaled | rescaled | equalize (chains) | equalize (regions) | rescale drift | regions "
          "| weight-criterion fallbacks |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r[0]} | {r[1]:.1f} | {r[2]:.1f} | {r[3]:.1f} | {r[4]:.1f} | {r[5]:.1e} | {r[6]} | {r[7]} |")


if __name__ == "__main__":
    main()
