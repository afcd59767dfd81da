"""Side by side: a 'before' prequant against this checkout (after), fresh processes, alternated.

    python bench/before_after_issue13.py resnet50,mobilenet_v2,efficientnet_b0,chain1000 \
        [--before PYTHONPATH] [--repeats 5]

'before' is the installed prequant, or the prequant package found under --before (e.g. an
older commit's python/ from `git archive <commit> python/prequant | tar -x -C /tmp/before`, with
the built _core extension linked in). Every (model, version, step) runs once per repeat, in the
same order each repeat, each in a fresh process (bench/speed_child.py, one intra-op thread).
Prints medians, and prepare_model's time over a bare torch.fx.symbolic_trace of the same model
(ratio of medians).
"""
import argparse, json, os, statistics, subprocess, sys

WT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # this checkout
STEPS = [("before", "prequant", "prepare_model"), ("after", "prequant", "prepare_model"),
         ("fx", "torch.fx", "symbolic_trace"), ("before", "prequant", "prepare_model_shared"),
         ("after", "prequant", "prepare_model_shared"),
         ("before", "prequant", "prepare_equalize"), ("after", "prequant", "prepare_equalize")]

ap = argparse.ArgumentParser()
ap.add_argument("models")
ap.add_argument("--before", default=None, help="PYTHONPATH of the 'before' prequant (default: installed)")
ap.add_argument("--repeats", type=int, default=5)
ap.add_argument("--steps", default=",".join(dict.fromkeys(s for _, _, s in STEPS)),
                help="a subset of: " + ", ".join(dict.fromkeys(s for _, _, s in STEPS)))
ap.add_argument("--render-log", default=None,
                help="no measuring: render the table from the lines a (possibly interrupted) run printed")
args = ap.parse_args()
models = args.models.split(",")
rows = {}
if args.render_log:
    for line in open(args.render_log):
        parts = line.split()
        if len(parts) >= 6 and parts[0].isdigit() and parts[4] != "None":
            cpu = float(parts[6]) if len(parts) > 6 and parts[6] != "None" else None
            rows.setdefault((parts[1], parts[2], parts[3]), []).append(
                {"seconds": float(parts[4]), "peak_mb": float(parts[5]), "cpu_s": cpu, "rep": int(parts[0])})
    args.repeats = 1 + max((r["rep"] for rs in rows.values() for r in rs), default=0)
for rep in range(0 if args.render_log else args.repeats):
    for model in models:
        for version, tool, step in STEPS:
            if step not in args.steps.split(","):
                continue
            env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
            env.pop("PYTHONPATH", None)
            if version == "after":
                env["PYTHONPATH"] = WT + "/python"
            elif version == "before" and args.before:
                env["PYTHONPATH"] = args.before
            spec = dict(tool=tool, step=step, model=model, threads=1)
            out = subprocess.run([sys.executable, WT + "/bench/speed_child.py", json.dumps(spec)], capture_output=True, text=True, env=env, cwd="/tmp")
            line = [l for l in out.stdout.splitlines() if l.startswith("RESULT ")]
            r = json.loads(line[-1][7:]) if line else {"error": out.stderr[-300:]}
            rows.setdefault((model, version, step), []).append(r)
            print(rep, model, version, step, r.get("seconds"), r.get("peak_mb"), r.get("cpu_s"),
                  r.get("layers", {}).get("values"), r.get("error", ""), flush=True)


def median(model, version, step, key="seconds"):
    rs = [r[key] for r in rows.get((model, version, step), []) if r.get(key) is not None]
    return statistics.median(rs) if rs else None


def cell(model, version, step, key, fx):
    """'time (÷ fx)' for one step, from medians."""
    v = median(model, version, step, key)
    if v is None:
        return "—"
    return f"{v * 1e3:.0f} ms" + (f" ({v / fx:.2f}×)" if fx and step.startswith("prepare_model") else "")


print(f"\nMedians of up to {args.repeats}; before = {args.before or 'installed prequant'}; after = {WT}")
print("wall = wall-clock time; CPU = the call's process CPU time (user + system, one thread): on a loaded")
print("machine CPU time is the stabler figure. (÷ fx) = over a bare torch.fx.symbolic_trace, same column.\n")
print("| model | step | before, wall | after, wall | before, CPU | after, CPU | peak MB before / after | samples |")
print("|---|---|---:|---:|---:|---:|---:|---:|")
for model in models:
    fx_wall, fx_cpu = median(model, "fx", "symbolic_trace"), median(model, "fx", "symbolic_trace", "cpu_s")
    trace = [cell(model, "fx", "symbolic_trace", k, None) for k in ("seconds", "cpu_s")]
    print(f"| {model} | torch.fx.symbolic_trace | {trace[0]} | {trace[0]} | {trace[1]} | {trace[1]} | | "
          f"{len(rows.get((model, 'fx', 'symbolic_trace'), []))} |")
    for step in ("prepare_model", "prepare_model_shared", "prepare_equalize"):
        if not rows.get((model, "before", step)) and not rows.get((model, "after", step)):
            continue
        pb, pa = median(model, "before", step, "peak_mb"), median(model, "after", step, "peak_mb")
        g = lambda v: f"{v:.0f}" if v is not None else "—"
        n = "/".join(str(len(rows.get((model, v, step), []))) for v in ("before", "after"))
        print(f"| {model} | {step} | {cell(model, 'before', step, 'seconds', fx_wall)} | "
              f"{cell(model, 'after', step, 'seconds', fx_wall)} | {cell(model, 'before', step, 'cpu_s', fx_cpu)} | "
              f"{cell(model, 'after', step, 'cpu_s', fx_cpu)} | {g(pb)} / {g(pa)} | {n} |")
