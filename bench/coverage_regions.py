"""Coverage of cross-layer scaling on torchvision classification models (random weights, no
downloads), chains only vs chains + equalization regions: conv/linear layers scaled on at least
one side, and declines grouped by reason class. Last columns: with regions under
scale_criterion='weights_and_activations', how many scaled regions weigh their activation ranges
and why the others keep the weight criterion (criterion_fallback, by reason class).

    PYTHONPATH=python python bench/coverage_regions.py [NAME ...]
"""

from __future__ import annotations

import collections
import re
import sys

import torch
import torchvision

from prequant.torch.cross_layer_equalization import equalize_model

MODELS = ["resnet18", "resnet50", "mobilenet_v2", "mobilenet_v3_small", "efficientnet_b0", "mnasnet0_5",
          "squeezenet1_0", "googlenet", "shufflenet_v2_x0_5", "regnet_y_400mf", "densenet121"]
KWARGS = {"googlenet": dict(aux_logits=False, init_weights=False)}


def reason_class(reason: str) -> str:
    for pattern, label in [(r"graph output", "graph output"), (r"feeds .* and", "fan-out"),
                           (r"\(Add|Add '|add'|\(add\)|iadd", "Add"), (r"[Cc]at|Concat", "Concat"),
                           (r"Split|split|chunk", "Split/chunk"), (r"[Ss]ilu|SiLU|[Ss]wish", "SiLU"),
                           (r"[Hh]ardswish|[Hh]ardsigmoid", "HardSwish/HardSigmoid"),
                           (r"[Ss]igmoid|mul", "gated (Mul)"), (r"flatten|view|reshape", "Flatten/Reshape"),
                           (r"shares its weight", "shared weight"), (r"channel", "channel mismatch")]:
        if re.search(pattern, reason):
            return label
    return reason[:60]


def fallback_class(reason: str) -> str:
    for pattern, label in [(r"no batch norm", "no BN after a source"), (r"gated", "gated activation"),
                           (r"not modelled", "node not modelled")]:
        if re.search(pattern, reason):
            return label
    return reason[:60]


def coverage(model: torch.nn.Module, regions: bool, criterion: str = "weights"):
    result = equalize_model(model, regions=regions, scale_criterion=criterion)
    scaled = {l for s in result.cls.sets for l in s.layers}
    for r in result.regions.regions:
        scaled |= set(r.sources) | set(r.sinks)
    declined = list(result.cls.declined) + list(result.regions.declined)
    layers = sum(isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)) for m in model.modules())
    fallback = collections.Counter(fallback_class(r.criterion_fallback) for r in result.regions.regions
                                   if r.criterion_fallback)
    return (layers, len(scaled), collections.Counter(reason_class(d.reason) for d in declined),
            len(result.regions.regions) - sum(fallback.values()), fallback)


def main() -> None:
    names = sys.argv[1:] or MODELS
    print("| model | layers | scaled (chains) | scaled (+ regions) | declines (chains) | declines (+ regions) "
          "| regions weighing activations | weight-criterion fallbacks |")
    print("|---|---:|---:|---:|---|---|---:|---|")
    for name in names:
        rows = []
        for regions, criterion in ((False, "weights"), (True, "weights"), (True, "weights_and_activations")):
            torch.manual_seed(0)
            model = getattr(torchvision.models, name)(weights=None, **KWARGS.get(name, {})).eval()
            rows.append(coverage(model, regions, criterion))
        fmt = lambda c: ", ".join(f"{k} {v}" for k, v in c.most_common()) or "none"
        print(f"| {name} | {rows[0][0]} | {rows[0][1]} | {rows[1][1]} | {fmt(rows[0][2])} | {fmt(rows[1][2])} "
              f"| {rows[2][3]} / {rows[2][3] + sum(rows[2][4].values())} | {fmt(rows[2][4])} |", flush=True)


if __name__ == "__main__":
    main()
