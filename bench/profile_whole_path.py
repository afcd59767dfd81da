"""Where the whole user path's time goes: prepare_model + equalize_model(dummy_input=x), by phase.

    python bench/profile_whole_path.py resnet50,mobilenet_v2,efficientnet_b0 [--repeats 5]

Each repeat runs every model once, each in a fresh process (this script re-invoked with --child;
one intra-op thread; a warm-up of both calls on bench/speed_models.build_warmup() first). The
child wraps the functions that make up the path and adds up the process CPU time (user + system)
spent in each:

  trace         prepare.py _trace (torch.fx tracing of the original model)
  graph module  _graph_module_without_code (the GraphModule shell, fx's attribute copies)
  rewrite       _GraphRewriter.run (functionals to modules, unrolling reused modules)
  copy          _take_ownership (new module objects, one clone of every tensor into fresh pages)
  codegen       GraphModule.recompile (the one code generation of the rewritten graph)
  engine graph  build_engine_graph (fx graph to engine graph, zero-copy weight views)
  engine        _core.equalize_model (the C++ passes: checks, fold, ranges, sweeps, one write)
  write-back    apply_equalize (Identity for folded BNs, BoundedReLU/GatedActivation modules)

and the two calls' totals (CPU and wall). Prints medians per model as a Markdown table; the raw
per-process lines go to stderr. Not a test: timings vary on shared machines.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import time

PHASES = ["trace", "graph_module", "rewrite", "copy", "codegen", "engine_graph", "engine", "write_back"]
TOTALS = ["prepare_model", "equalize_model", "total_cpu", "total_wall"]


def child(name: str) -> dict:
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import torch

    torch.set_num_threads(1)
    import prequant.torch._engine_graph  # noqa: F401 (wrapped below through its importers)
    import prequant.torch.cross_layer_equalization as cle
    import prequant.torch.prepare as prep
    from prequant import _core
    from speed_models import build_model, build_warmup

    spent: dict[str, float] = {}

    def wrap(owner, attr: str, phase: str) -> None:
        inner = getattr(owner, attr)

        def timed(*args, **kwargs):
            c0 = time.process_time()
            try:
                return inner(*args, **kwargs)
            finally:
                spent[phase] = spent.get(phase, 0.0) + time.process_time() - c0

        setattr(owner, attr, timed)

    wrap(prep, "_trace", "trace")
    wrap(prep, "_graph_module_without_code", "graph_module")
    wrap(prep._GraphRewriter, "run", "rewrite")
    wrap(prep, "_take_ownership", "copy")
    wrap(torch.fx.GraphModule, "recompile", "codegen")
    wrap(cle, "build_engine_graph", "engine_graph")
    wrap(_core, "equalize_model", "engine")
    wrap(cle, "apply_equalize", "write_back")

    warm = build_warmup()
    cle.equalize_model(prep.prepare_model(warm))
    spent.clear()
    model, x = build_model(name)
    gc.collect()
    c0, t0 = time.process_time(), time.perf_counter()
    prepared = prep.prepare_model(model)
    c1 = time.process_time()
    cle.equalize_model(prepared, dummy_input=x)
    c2, t2 = time.process_time(), time.perf_counter()
    spent.update(prepare_model=c1 - c0, equalize_model=c2 - c1, total_cpu=c2 - c0, total_wall=t2 - t0)
    return spent


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("models")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print("PHASES " + json.dumps(child(args.models)), flush=True)
        return
    models = args.models.split(",")
    samples: dict[str, dict[str, list[float]]] = {m: {} for m in models}
    load0 = os.getloadavg()
    for rep in range(args.repeats):
        for name in models:
            out = subprocess.run([sys.executable, os.path.abspath(__file__), name, "--child"],
                                 capture_output=True, text=True, check=True).stdout
            line = next(l for l in out.splitlines() if l.startswith("PHASES "))
            print(rep, name, line, file=sys.stderr, flush=True)
            for key, value in json.loads(line[len("PHASES "):]).items():
                samples[name].setdefault(key, []).append(value)
    load1 = os.getloadavg()
    print(f"Process CPU time, ms, medians of {args.repeats} fresh processes; load average "
          f"{load0[0]:.1f} at the start, {load1[0]:.1f} at the end.\n")
    cols = PHASES + TOTALS
    print("| model | " + " | ".join(c.replace("_", " ") for c in cols) + " |")
    print("|---|" + "---:|" * len(cols))
    for name in models:
        cells = [f"{statistics.median(samples[name].get(c, [0.0])) * 1000:.1f}" for c in cols]
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
