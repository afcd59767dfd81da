"""Engine speed on ResNet-50's weights, against the time to copy those weights once.

    python bench/bench_engine.py [--model resnet50] [--repeats 7]

For each repeat, a fresh copy of the model (random weights, randomized BN statistics) is built
outside the timed region; then, timed: one NumPy copy of every parameter and buffer (the baseline: a plain
memcpy into fresh memory, whose page faults make it vary several-fold between runs), the same copy
into memory already allocated and touched (the steadier floor of one read and one write), building the
engine graph (zero-copy views), fold_batch_norms, scale_model (one pass as AIMET does, then to
convergence), and the whole equalize_model pipeline on another fresh copy (with and without
high-bias absorption). Medians and ratios to the copy are printed as a
Markdown table (docs/BENCHMARKS.md quotes it). Not a test: timings vary on shared machines.
"""

from __future__ import annotations

import argparse
import copy
import platform
import statistics
import time

import numpy
import torch
import torchvision

from prequant import _core
from prequant.torch._engine_graph import build_engine_graph


def randomized(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    model = getattr(torchvision.models, name)(weights=None).eval()
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            c = m.num_features
            with torch.no_grad():
                m.running_var.copy_(10 ** (torch.rand(c, generator=g) * 3 - 2))
                m.running_mean.copy_(torch.randn(c, generator=g))
                m.weight.copy_(torch.randn(c, generator=g))
                m.bias.copy_(torch.randn(c, generator=g))
    return model


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="resnet50")
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    base = randomized(args.model)
    n_params = sum(p.numel() for p in base.parameters()) + sum(b.numel() for b in base.buffers())
    rows: dict[str, list[float]] = {k: [] for k in ("copy weights once", "copy into allocated memory",
                                                    "build engine graph",
                                                    "fold_batch_norms", "scale_model (CLS, one pass)",
                                                    "scale_model (CLS, converged)",
                                                    "equalize_model (default: no high-bias absorption)",
                                                    "equalize_model + high-bias absorption")}
    for _ in range(args.repeats):
        model = copy.deepcopy(base)
        tensors = [t for t in list(model.parameters()) + list(model.buffers()) if t.is_floating_point()]
        arrays = [t.detach().numpy() for t in tensors]
        rows["copy weights once"].append(timed(lambda: [a.copy() for a in arrays]))
        targets = [a.copy() for a in arrays]  # pages already touched: no page faults in the copy
        rows["copy into allocated memory"].append(timed(lambda: [numpy.copyto(t, a) for t, a in zip(targets, arrays)]))
        holder = {}
        rows["build engine graph"].append(timed(lambda: holder.setdefault("eg", build_engine_graph(model))))
        g = holder["eg"].graph
        rows["fold_batch_norms"].append(timed(lambda: _core.fold_batch_norms(g)))
        rows["scale_model (CLS, one pass)"].append(timed(lambda: _core.scale_model(g, max_iterations=1)))
        rows["scale_model (CLS, converged)"].append(timed(lambda: _core.scale_model(g, max_iterations=100)))
        model2 = copy.deepcopy(base)
        g2 = build_engine_graph(model2).graph
        rows["equalize_model (default: no high-bias absorption)"].append(timed(lambda: _core.equalize_model(g2)))
        model3 = copy.deepcopy(base)  # kept alive: the graph views its tensors
        g3 = build_engine_graph(model3).graph
        rows["equalize_model + high-bias absorption"].append(
            timed(lambda: _core.equalize_model(g3, absorb_high_bias=True)))
    copy_median = statistics.median(rows["copy weights once"])
    touched_median = statistics.median(rows["copy into allocated memory"])
    print(f"{args.model}: {n_params / 1e6:.1f} M values, {args.repeats} repeats, "
          f"torch {torch.__version__}, {platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} threads")
    print("| step | median ms | × copy | × copy into allocated memory |")
    print("|---|---:|---:|---:|")
    for name, values in rows.items():
        med = statistics.median(values)
        print(f"| {name} | {med * 1e3:.1f} | {med / copy_median:.2f} | {med / touched_median:.2f} |")


if __name__ == "__main__":
    main()
