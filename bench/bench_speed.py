"""Speed and peak memory of prequant against aimet-torch, torch.fx, a weight copy, aimet-onnx and
onnx-optimizer, side by side in one run. Writes bench/results/speed.md and speed.json.

    bash bench/setup_aimet.sh              # once: .venv-aimet with aimet-torch, aimet-onnx, onnxoptimizer
    python bench/bench_speed.py --quick    # 1 repeat, ~16 min on 2 cores (4 of them: onnxoptimizer on chain1000)
    python bench/bench_speed.py            # 3 repeats, medians (the figures to quote), ~50 min
    python bench/speed_report.py           # re-render speed.md from speed.json

Every measurement runs in a fresh child process (bench/speed_child.py; AIMET's and
onnxoptimizer's in the venv's python), so timings do not share warm caches and peak memory is
the child's own (see speed_child.py for how it is measured). Tools are alternated: for each
repeat, model and step, every tool runs once, in an order rotated each repeat. Children run
with one intra-op thread (OMP_NUM_THREADS=1): with two threads on a loaded 2-core machine,
OpenMP spin-waiting made AIMET's traced forward passes ~10x slower and dominated the noise.

Torch models: resnet50, mobilenet_v2, efficientnet_b0 (torchvision, random weights, randomized
BN statistics) and chain<N> = (conv 3x3 -> BN -> ReLU) x N. Each tool is called the way its
documentation shows: prequant `equalize_model(model)`, AIMET `equalize_model(model,
dummy_input=x)` and `fold_all_batch_norms(model, input_shapes, dummy_input=x)`. The end-to-end
step `prepare_equalize` times the documented path as one call, for both tools alike:
`prepare_model(model)`, then `equalize_model(prepared, dummy_input=x)`. `prepare_model_shared`
is prequant's `prepare_model(model, copy=False)` (shares weights with the original, as AIMET's).

ONNX: each model exported with the TorchScript exporter, BN nodes kept (training=PRESERVE on
an eval model, do_constant_folding=False; the BN count is checked and reported). The `prequant`
CLI is timed file to file as a process (wall clock, peak RSS of the process from wait4); the
Python tools are timed on a loaded ModelProto, with their load/save times reported beside.

Use --models / --depths / --sections / --groups to re-run a part; --aimet-python to point at another venv.
A child above --memory-limit-gb (default 8) of RSS is killed and marked: aimet-onnx grew to 23.6 GB
on chain1000 and the kernel's OOM killer may pick any process on the machine.
The installed `prequant` (site-packages, PATH) is what gets measured.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

import speed_report  # noqa: E402

TORCH_GROUPS = {  # step group -> (tool, step) measured side by side
    "prepare": [("prequant", "prepare_model"), ("aimet", "prepare_model"), ("torch.fx", "symbolic_trace"),
                ("prequant", "prepare_model_shared")],
    "fold": [("prequant", "fold_all_batch_norms"), ("aimet", "fold_all_batch_norms"),
             ("engine", "fold_all_batch_norms"), ("copy", "copy_weights")],
    "equalize": [("prequant", "equalize_model"), ("aimet", "equalize_model"),
                 ("engine", "equalize_model"), ("copy", "copy_weights")],
    # The documented user path, as one timed call: prepare_model, then equalize_model(dummy_input=x).
    "end_to_end": [("prequant", "prepare_equalize"), ("aimet", "prepare_equalize")],
}
ONNX_GROUPS = {
    "fold": [("prequant CLI", "fold"), ("prequant.onnx", "fold_all_batch_norms"),
             ("aimet_onnx", "fold_all_batch_norms"), ("onnxoptimizer", "fold_all_batch_norms")],
    "equalize": [("prequant CLI", "equalize"), ("prequant.onnx", "equalize_model"),
                 ("aimet_onnx", "equalize_model")],
    "floor": [("onnx", "load_save"), ("prequant CLI", "--version")],
}
VENV_TOOLS = {"aimet", "aimet_onnx", "onnxoptimizer"}
RAISED_RECURSION_LIMIT = 100_000


# ----------------------------------------------------------------------------- environment

def probe(python: str, module: str) -> str | None:
    """The module's version if `python` can import it, else None."""
    code = (f"import importlib.metadata as m, {module}; "
            f"print(m.version({module!r}.replace('_', '-')))")
    try:
        out = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=300, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def child_env(threads: int) -> dict:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), PYTHONWARNINGS="ignore",
               TF_CPP_MIN_LOG_LEVEL="3")
    return env


def rss_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as f:
            return next(int(l.split()[1]) for l in f if l.startswith("VmRSS:")) / 1024
    except (OSError, StopIteration):
        return 0.0


def run_child(python: str, spec: dict, args) -> dict:
    """Runs speed_child.py; kills it past --timeout or past --memory-limit-gb of RSS (aimet-onnx
    grew to 23 GB on chain1000 and the kernel's OOM killer could pick another process)."""
    t0 = time.perf_counter()
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen([python, os.path.join(HERE, "speed_child.py"), json.dumps(spec)],
                                stdout=out, stderr=err, text=True, env=child_env(args.threads), cwd=ROOT)
        killed, peak = None, 0.0
        while proc.poll() is None:
            peak = max(peak, rss_mb(proc.pid))
            if peak > args.memory_limit_gb * 1024:
                killed = f"killed: resident memory above {args.memory_limit_gb:g} GB"
            elif time.perf_counter() - t0 > args.timeout:
                killed = f"killed: timeout after {args.timeout:g} s"
            if killed:
                proc.kill()
                proc.wait()
                return {"error": killed}
            time.sleep(0.05)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    lines = [l for l in stdout.splitlines() if l.startswith("RESULT ")]
    if not lines:
        tail = (stderr or stdout).strip().splitlines()[-3:]
        return {"error": f"child exited {proc.returncode}: {' | '.join(tail)[:300]}"}
    result = json.loads(lines[-1][len("RESULT "):])
    result["child_wall_s"] = time.perf_counter() - t0
    return result


# Spawns the CLI from a bare interpreter and reports wait4's ru_maxrss. A child's max RSS starts at
# the RSS of the process it was forked from (Linux keeps the pre-exec high-water mark), so
# spawning from this driver (torch loaded, ~800 MB) would hide the CLI's own peak; from `python -I
# -S` the floor is ~10 MB, reported as "launcher floor" (the figure is max(floor, CLI peak)).
_LAUNCHER = (
    "import os, sys, time, json\n"
    "devnull = [(os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0)]\n"
    "t = time.perf_counter()\n"
    "pid = os.posix_spawnp(sys.argv[1], sys.argv[1:], os.environ, file_actions=devnull)\n"
    "_, status, usage = os.wait4(pid, 0)\n"
    "print(json.dumps([time.perf_counter() - t, usage.ru_maxrss, os.waitstatus_to_exitcode(status)]))\n"
)


def spawn_measured(argv: list[str], args) -> tuple[float, float, int, str]:
    """(wall seconds, peak RSS MB, exit code, stderr) of one process, spawned from a bare launcher."""
    out = subprocess.run([sys.executable, "-I", "-S", "-c", _LAUNCHER] + argv, capture_output=True,
                         text=True, env=child_env(args.threads), timeout=args.timeout, check=False)
    seconds, maxrss_kb, code = json.loads(out.stdout.strip().splitlines()[-1])
    return seconds, maxrss_kb / 1024, code, out.stderr


def run_cli(cli: str, step: str, path: str, args) -> dict:
    """Wall time and peak RSS of one `prequant` process, file to file."""
    with tempfile.TemporaryDirectory() as d:
        out_path = os.path.join(d, "out.onnx")
        argv = [cli, "--version"] if step == "--version" else [cli, step, path, "-o", out_path]
        seconds, peak, code, err = spawn_measured(argv, args)
        if code != 0:
            return {"error": f"exit {code}: {err.strip()[:300]}"}
        info = {}
        if step != "--version":
            import onnx
            ops = [n.op_type for n in onnx.load(out_path, load_external_data=False).graph.node]
            info = {"bn_left": ops.count("BatchNormalization"), "clip_left": ops.count("Clip")}
        return {"seconds": seconds, "peak_mb": peak, "info": info, "absolute_peak": True}


# ----------------------------------------------------------------------------- ONNX export

def export_onnx(name: str, path: str) -> dict:
    """Export with BN nodes kept; returns op counts and size."""
    import onnx
    import torch
    from speed_models import build_model, count_layers

    model, x = build_model(name)
    expected = count_layers(model)["batch_norms"]
    buf = io.BytesIO()
    torch.onnx.export(model, x, buf, dynamo=False, opset_version=17, do_constant_folding=False,
                      training=torch.onnx.TrainingMode.PRESERVE, input_names=["input"])
    with open(path, "wb") as f:
        f.write(buf.getvalue())
    ops = [n.op_type for n in onnx.load_from_string(buf.getvalue()).graph.node]
    if ops.count("BatchNormalization") != expected:
        raise RuntimeError(f"{name}: the exporter kept {ops.count('BatchNormalization')} of {expected} "
                           f"BatchNormalization nodes; folding would be benchmarked on a pre-folded model")
    return {"batch_norms": ops.count("BatchNormalization"), "convs": ops.count("Conv"),
            "gemms": ops.count("Gemm"), "clips": ops.count("Clip"), "mb": len(buf.getvalue()) / 2**20}


# ----------------------------------------------------------------------------- driver

def rotated(items: list, k: int) -> list:
    k %= len(items)
    return items[k:] + items[:k]


class Runner:
    def __init__(self, args, pythons: dict):
        self.args, self.pythons = args, pythons
        self.records: list[dict] = []
        self.recursion_limit: dict = {}  # (section, model, tool, step) -> limit needed
        self.available = {tool: py is not None for tool, py in pythons.items()}

    def measure(self, section: str, model: str, tool: str, step: str, rep: int, extra: dict) -> None:
        key = (section, model, tool, step)
        if tool == "copy" and any(r["model"] == model and r["tool"] == "copy" and r["rep"] == rep
                                  for r in self.records if r["section"] == section):
            return  # one copy baseline per model and repeat serves both fold and equalize
        if tool == "prequant CLI":
            result = run_cli(self.args.prequant_cli, step, extra["path"], self.args)
        else:
            python = self.pythons.get(tool)
            if python is None:
                return
            spec = dict(tool=tool, step=step, model=model, threads=self.args.threads, **extra)
            if key in self.recursion_limit:
                spec["recursion_limit"] = self.recursion_limit[key]
            result = run_child(python, spec, self.args)
            if "RecursionError" in result.get("error", "") and key not in self.recursion_limit:
                # Record AIMET's default behaviour once, then measure with a raised limit.
                self.records.append(dict(section=section, model=model, tool=tool, step=step, rep=rep,
                                         default_recursion_failure=True, **result))
                self.recursion_limit[key] = RAISED_RECURSION_LIMIT
                spec["recursion_limit"] = RAISED_RECURSION_LIMIT
                result = run_child(python, spec, self.args)
        result.update(section=section, model=model, tool=tool, step=step, rep=rep,
                      recursion_limit=self.recursion_limit.get(key))
        self.records.append(result)
        shown = f"{result['seconds']:.3f} s, {result['peak_mb']:.0f} MB" if "seconds" in result else result["error"]
        print(f"  [{section} rep {rep}] {model:16s} {tool:14s} {step:22s} {shown}", flush=True)
        self.save_partial()

    def save_partial(self) -> None:
        with open(os.path.join(self.args.out_dir, "speed.partial.json"), "w") as f:
            json.dump(self.records, f)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="one repeat (default: --repeats)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--models", default="resnet50,mobilenet_v2,efficientnet_b0")
    ap.add_argument("--depths", default="125,250,500,1000", help="chain depths (the largest also goes to ONNX)")
    ap.add_argument("--sections", default="torch,onnx")
    ap.add_argument("--groups", default=",".join(TORCH_GROUPS),
                    help="torch step groups to measure (e.g. end_to_end,prepare)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--timeout", type=float, default=1800, help="seconds per child")
    ap.add_argument("--memory-limit-gb", type=float, default=8, help="kill a child whose RSS exceeds this")
    ap.add_argument("--aimet-python", default=os.environ.get("PREQUANT_AIMET_PYTHON",
                                                             os.path.join(ROOT, ".venv-aimet", "bin", "python")))
    ap.add_argument("--prequant-cli", default=shutil.which("prequant") or "prequant")
    ap.add_argument("--out-dir", default=os.path.join(HERE, "results"))
    args = ap.parse_args()
    repeats = 1 if args.quick else args.repeats
    os.makedirs(args.out_dir, exist_ok=True)
    t_start = time.time()
    load_start = os.getloadavg()

    venv = args.aimet_python if os.path.exists(args.aimet_python) else None
    versions = {"prequant": probe(sys.executable, "prequant"), "torch": probe(sys.executable, "torch"),
                "aimet-torch": venv and probe(venv, "aimet_torch"),
                "aimet-onnx": venv and probe(venv, "aimet_onnx"),
                "onnxoptimizer": probe(sys.executable, "onnxoptimizer") or (venv and probe(venv, "onnxoptimizer")),
                "onnx": probe(sys.executable, "onnx")}
    pythons = {"prequant": sys.executable, "engine": sys.executable, "torch.fx": sys.executable,
               "copy": sys.executable, "prequant.onnx": sys.executable, "onnx": sys.executable,
               "aimet": venv if versions["aimet-torch"] else None,
               "aimet_onnx": venv if versions["aimet-onnx"] else None,
               "onnxoptimizer": (sys.executable if probe(sys.executable, "onnxoptimizer")
                                 else venv if versions["onnxoptimizer"] else None)}
    print("versions:", versions, flush=True)
    if venv is None:
        print(f"no AIMET venv at {args.aimet_python}: run bash bench/setup_aimet.sh (AIMET columns stay empty)")

    depths = [int(d) for d in args.depths.split(",") if d]
    models = [m for m in args.models.split(",") if m] + [f"chain{d}" for d in depths]
    onnx_models = [m for m in args.models.split(",") if m] + ([f"chain{max(depths)}"] if depths else [])
    sections = args.sections.split(",")
    runner = Runner(args, pythons)
    exports: dict = {}

    with tempfile.TemporaryDirectory() as tmp:
        if "torch" in sections:
            for rep in range(repeats):
                for model in models:
                    for g, (group, pairs) in enumerate(TORCH_GROUPS.items()):
                        if group not in args.groups.split(","):
                            continue
                        for tool, step in rotated(pairs, rep + g):
                            runner.measure("torch", model, tool, step, rep, {})
        if "onnx" in sections:
            warm = os.path.join(tmp, "warmup.onnx")
            export_onnx("chain2", warm)
            for model in onnx_models:
                exports[model] = export_onnx(model, os.path.join(tmp, f"{model}.onnx"))
                print(f"exported {model}: {exports[model]}", flush=True)
            for rep in range(repeats):
                for model in onnx_models:
                    extra = {"path": os.path.join(tmp, f"{model}.onnx"), "warmup": warm}
                    for g, (group, pairs) in enumerate(ONNX_GROUPS.items()):
                        for tool, step in rotated(pairs, rep + g):
                            if step == "--version" and model != onnx_models[0]:
                                continue
                            runner.measure("onnx", model, tool, step, rep, extra)

    shown_argv = [a for i, a in enumerate(sys.argv[1:]) if not (a.startswith("--out-dir") or
                                                                  (i and sys.argv[i] == "--out-dir"))]
    meta = dict(command=" ".join(["python", "bench/bench_speed.py"] + shown_argv), repeats=repeats,
                launcher_floor_mb=spawn_measured(["true"], args)[1],
                threads=args.threads, versions=versions, exports=exports, models=models, depths=depths,
                onnx_models=onnx_models, load_start=load_start, load_end=os.getloadavg(),
                minutes=(time.time() - t_start) / 60, machine=speed_report.machine())
    with open(os.path.join(args.out_dir, "speed.json"), "w") as f:
        json.dump({"meta": meta, "records": runner.records}, f, indent=1)
    os.remove(os.path.join(args.out_dir, "speed.partial.json"))
    text = speed_report.render(meta, runner.records)
    with open(os.path.join(args.out_dir, "speed.md"), "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()
