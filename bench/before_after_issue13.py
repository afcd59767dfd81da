"""Side by side: the installed prequant (before) against this checkout (after), fresh processes, alternated.

    python bench/before_after_issue13.py resnet50,mobilenet_v2
"""
import json, os, statistics, subprocess, sys
WT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # this checkout; before = installed prequant
rows = {}
for rep in range(3):
    for model in sys.argv[1].split(","):
        for version, tool, step in [("before", "prequant", "prepare_model"), ("after", "prequant", "prepare_model"),
                                    ("fx", "torch.fx", "symbolic_trace"), ("after", "prequant", "prepare_model_shared"),
                                    ("before", "prequant", "prepare_equalize"), ("after", "prequant", "prepare_equalize")]:
            env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
            env.pop("PYTHONPATH", None)
            if version == "after":
                env["PYTHONPATH"] = WT + "/python"
            spec = dict(tool=tool, step=step, model=model, threads=1)
            out = subprocess.run([sys.executable, WT + "/bench/speed_child.py", json.dumps(spec)], capture_output=True, text=True, env=env, cwd="/tmp")
            line = [l for l in out.stdout.splitlines() if l.startswith("RESULT ")]
            r = json.loads(line[-1][7:]) if line else {"error": out.stderr[-300:]}
            rows.setdefault((model, version, step), []).append(r)
            print(model, version, step, r.get("seconds"), r.get("peak_mb"), r.get("info", {}).get("cls_iterations"), r.get("error", ""), flush=True)
print("\n| model | step | before (main) | after | peak MB before / after |")
print("|---|---|---:|---:|---:|")
for model in sys.argv[1].split(","):
    for step in ("symbolic_trace", "prepare_model", "prepare_model_shared", "prepare_equalize"):
        cells = []
        for v in ("before", "after") if step not in ("symbolic_trace",) else ("fx", "fx"):
            rs = [r for r in rows.get((model, v, step), []) if "seconds" in r]
            cells.append((statistics.median(r["seconds"] for r in rs) * 1e3, statistics.median(r["peak_mb"] for r in rs)) if rs else None)
        f = lambda c: f"{c[0]:.1f} ms" if c else "—"
        g = lambda c: f"{c[1]:.0f}" if c else "—"
        print(f"| {model} | {step} | {f(cells[0])} | {f(cells[1])} | {g(cells[0])} / {g(cells[1])} |")
