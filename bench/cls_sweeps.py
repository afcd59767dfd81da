"""CLS sweeps and `converged` per model, with the chain solve and with plain Gauss-Seidel sweeps.

    PYTHONPATH=python python bench/cls_sweeps.py
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from speed_models import build_model
from prequant import _core
from prequant.torch._engine_graph import build_engine_graph
print("| model | CLS sets | sweeps (chain solve) | converged | sweeps (Gauss-Seidel only, cap 100) | converged |")
print("|---|---:|---:|---|---:|---|")
for name in ["resnet50", "mobilenet_v2", "efficientnet_b0", "chain125", "chain250", "chain500", "chain1000"]:
    row = [name]
    for sc in (True, False):
        m, x = build_model(name)
        eg = build_engine_graph(m)
        _core.fold_batch_norms(eg.graph)
        r = _core.scale_model(eg.graph, max_iterations=100, tolerance=1e-6, solve_chains=sc)
        if sc: row.append(str(len(r.sets)))
        row += [str(r.iterations), "yes" if r.converged else f"no (last max abs ln s {r.last_max_log_scale:.1e})"]
    print("| " + " | ".join(row) + " |", flush=True)
