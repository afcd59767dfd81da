"""Coverage of cross-layer scaling on torchvision classification models (random weights, no
downloads), chains only vs chains + equalization regions: conv/linear layers scaled on at least
one side, and declines grouped by reason class.

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


def coverage(model: torch.nn.Module, regions: bool) -> tuple[int, int, collections.Counter]:
    result = equalize_model(model, regions=regions)
    scaled = {l for s in result.cls.sets for l in s.layers}
    for r in result.regions.regions:
        scaled |= set(r.sources) | set(r.sinks)
    declined = list(result.cls.declined) + list(result.regions.declined)
    layers = sum(isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)) for m in model.modules())
    return layers, len(scaled), collections.Counter(reason_class(d.reason) for d in declined)


def main() -> None:
    names = sys.argv[1:] or MODELS
    print("| model | layers | scaled (chains) | scaled (+ regions) | declines (chains) | declines (+ regions) |")
    print("|---|---:|---:|---:|---|---|")
    for name in names:
        rows = []
        for regions in (False, True):
            torch.manual_seed(0)
            model = getattr(torchvision.models, name)(weights=None, **KWARGS.get(name, {})).eval()
            rows.append(coverage(model, regions))
        fmt = lambda c: ", ".join(f"{k} {v}" for k, v in c.most_common()) or "none"
        print(f"| {name} | {rows[0][0]} | {rows[0][1]} | {rows[1][1]} | {fmt(rows[0][2])} | {fmt(rows[1][2])} |",
              flush=True)


if __name__ == "__main__":
    main()
