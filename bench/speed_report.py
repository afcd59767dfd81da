"""Markdown tables for bench/bench_speed.py: medians over repeats, ratios, time per layer vs depth.

    python bench/speed_report.py [bench/results/speed.json]   # re-render speed.md from the JSON
"""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
import sys
from collections import defaultdict

from bench_machine import cpu_name

TOOL_NAMES = {"aimet": "aimet-torch", "aimet_onnx": "aimet-onnx", "torch.fx": "torch.fx"}


def machine() -> str:
    cpu = cpu_name()
    mem = ""
    try:
        with open("/proc/meminfo") as f:
            mem = f", {int(f.readline().split()[1]) / 2**20:.0f} GiB"
    except (OSError, ValueError, IndexError):
        pass
    return f"{platform.platform()}, {cpu}, {os.cpu_count()} cores{mem}, Python {platform.python_version()}"


class Cell:
    """Median of one (section, model, tool, step) over repeats."""

    def __init__(self, records: list[dict]):
        ok = [r for r in records if "seconds" in r and not r.get("default_recursion_failure")]
        self.seconds = statistics.median(r["seconds"] for r in ok) if ok else None
        self.peak_mb = statistics.median(r["peak_mb"] for r in ok) if ok else None
        cpu = [r["cpu_s"] for r in ok if r.get("cpu_s") is not None]  # older runs have none
        self.cpu_s = statistics.median(cpu) if cpu else None
        self.info = ok[0].get("info", {}) if ok else {}
        self.layers = ok[0].get("layers", {}) if ok else {}
        self.n = len(ok)
        self.errors = sorted({short_error(r["error"]) for r in records if "error" in r})
        self.needed_recursion = any(r.get("default_recursion_failure") for r in records)
        self.absolute_peak = any(r.get("absolute_peak") for r in ok)

    def time(self) -> str:
        if self.seconds is None:
            return ", ".join(self.errors) or "—"
        return fmt_s(self.seconds) + (" †" if self.needed_recursion else "")

    def peak(self) -> str:
        return "—" if self.peak_mb is None else f"{self.peak_mb:.0f}"


def short_error(error: str) -> str:
    if error.startswith("killed: resident memory above"):
        return "killed at " + error.rsplit("above ", 1)[1] + " RSS"
    if error.startswith("killed: timeout"):
        return "timeout"
    return error.split(":")[0]


def fmt_s(s: float) -> str:
    if s >= 10:
        return f"{s:.1f} s"
    if s >= 1:
        return f"{s:.2f} s"
    return f"{s * 1e3:.3g} ms"


STEP_NAMES = {"prepare_model_shared": "prepare_model(copy=False)",
              "prepare_equalize": "**prepare_model + equalize_model(dummy_input)**"}


def ratio(a: Cell, b: Cell, digits: int = 1) -> str:
    if a.seconds is None or b.seconds is None or b.seconds == 0:
        return "—"
    return f"{a.seconds / b.seconds:.{digits}f}×"


def cpu_ratio(a: Cell, b: Cell, digits: int = 1) -> str:
    if a.cpu_s is None or b.cpu_s is None or b.cpu_s == 0:
        return "—"
    return f"{a.cpu_s / b.cpu_s:.{digits}f}×"


def did(c: Cell) -> str:
    i = c.info
    parts = []
    if "folded" in i:
        parts.append(f"{i['folded']} BN")
    if "cls_sets" in i:
        sweeps = f"{i['cls_iterations']} sweeps" if "cls_iterations" in i else ""
        if "cls_converged" in i:
            sweeps += ", converged" if i["cls_converged"] else ", NOT converged"
        parts.append(f"{i['cls_sets']} CLS sets" + (f" ({sweeps})" if sweeps else ""))
    if i.get("absorbed"):
        parts.append(f"{i['absorbed']} absorbed")
    if i.get("bn_left"):
        parts.append(f"{i['bn_left']} BN left")
    if i.get("clip_left"):
        parts.append(f"{i['clip_left']} Clip left")
    return ", ".join(parts)


def exponent(points: list[tuple[int, float]]) -> str:
    """Least-squares slope of log(time) against log(depth): 1 = linear, 2 = quadratic."""
    pts = [(math.log(n), math.log(t)) for n, t in points if t and t > 0]
    if len(pts) < 2:
        return "—"
    mx = sum(x for x, _ in pts) / len(pts)
    my = sum(y for _, y in pts) / len(pts)
    den = sum((x - mx) ** 2 for x, _ in pts)
    return f"{sum((x - mx) * (y - my) for x, y in pts) / den:.2f}" if den else "—"


def render(meta: dict, records: list[dict]) -> str:
    groups = defaultdict(list)
    for r in records:
        groups[(r["section"], r["model"], r["tool"], r["step"])].append(r)
    cell = lambda *key: Cell(groups.get(key, []))  # noqa: E731
    v = meta["versions"]
    load = lambda t: "/".join(f"{x:.1f}" for x in t)  # noqa: E731
    out = [
        "# Speed and peak memory: prequant against aimet-torch, torch.fx, aimet-onnx, onnx-optimizer",
        "",
        f"Command: `{meta['command']}` (from the repository root; AIMET from `bash bench/setup_aimet.sh`)",
        "",
        f"Machine: {meta['machine']}. Load average at start {load(meta['load_start'])}, at end "
        f"{load(meta['load_end'])} (1/5/15 min){' — measured under load' if max(meta['load_start'][0], meta['load_end'][0]) > 1.5 else ''}. "
        f"Run time {meta['minutes']:.0f} min.",
        "",
        "Versions: " + ", ".join(f"{k} {v[k] or 'not installed'}" for k in v) + ".",
        "",
        f"Medians of {meta['repeats']} repeat(s); each measurement in a fresh process, tools "
        f"alternated, {meta['threads']} intra-op thread(s). Time = the call alone (imports, a warm-up "
        "call on a 2-layer chain and model building are outside it). Peak MB = peak resident memory "
        "during the call above the resident memory just before it (VmHWM reset via "
        "/proc/self/clear_refs, after gc and malloc_trim). † = fails with RecursionError at Python's "
        "default recursion limit; timed again with sys.setrecursionlimit(100000).",
        "",
        "## PyTorch: prequant against aimet-torch and torch.fx",
        "",
        "prequant ÷ fx: prequant's time over a bare `torch.fx.symbolic_trace` of the same model "
        "(prepare rows). × weights: prequant's peak over the size of the model's parameters and "
        "buffers (the model itself is resident before the call, so 1.0 = one extra copy).",
        "",
        "CPU: the same ratios from the calls' process CPU time (one thread; under load the stabler figure).",
        "",
        "| model | step | prequant | aimet-torch | aimet ÷ prequant | CPU: aimet ÷ prequant | torch.fx trace | prequant ÷ fx | CPU: prequant ÷ fx | peak MB prequant / aimet | × weights | prequant did | aimet did |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    torch_models = [m for m in meta["models"] if not m.startswith("chain")] + \
        ([f"chain{max(meta['depths'])}"] if meta["depths"] else [])
    for model in torch_models:
        for step in ("prepare_model", "prepare_model_shared", "fold_all_batch_norms", "equalize_model",
                     "prepare_equalize"):
            p, a = cell("torch", model, "prequant", step), cell("torch", model, "aimet", step)
            if p.n == 0 and a.n == 0 and not (p.errors or a.errors):
                continue
            fx_cell = cell("torch", model, "torch.fx", "symbolic_trace")
            prepare_row = step.startswith("prepare_model")
            fx = fx_cell.time() if prepare_row else ""
            over_fx = ratio(p, fx_cell, 2) if prepare_row else ""
            weights_mb = (p.layers or a.layers).get("values", 0) * 4 / 2**20
            times = f"{p.peak_mb / weights_mb:.2f}" if p.peak_mb is not None and weights_mb else "—"
            over_fx_cpu = cpu_ratio(p, fx_cell, 2) if prepare_row else ""
            out.append(f"| {model} | {STEP_NAMES.get(step, step)} | {p.time()} | {a.time()} | {ratio(a, p)} | "
                       f"{cpu_ratio(a, p)} | {fx} | {over_fx} | {over_fx_cpu} | {p.peak()} / {a.peak()} | {times} | "
                       f"{did(p)} | {did(a)} |")
    out += [
        "",
        "## The engine alone against copying the weights once",
        "",
        "`prequant._core` on an engine graph of zero-copy views (graph built outside the timed "
        "region; its build time, a torch.fx trace plus views, is shown beside). The copy is one "
        "NumPy copy of every parameter and buffer into fresh memory.",
        "",
        "| model | M values | copy weights once | engine fold | × copy | engine equalize | × copy | build engine graph | peak MB copy / fold / equalize |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for model in meta["models"]:
        c = cell("torch", model, "copy", "copy_weights")
        f, e = cell("torch", model, "engine", "fold_all_batch_norms"), cell("torch", model, "engine", "equalize_model")
        if c.n == 0 and f.n == 0:
            continue
        values = (c.layers or f.layers).get("values", 0) / 1e6
        build = e.info.get("build_graph_s")
        out.append(f"| {model} | {values:.1f} | {c.time()} | {f.time()} | {ratio(f, c)} | {e.time()} | "
                   f"{ratio(e, c)} | {fmt_s(build) if build else '—'} | {c.peak()} / {f.peak()} / {e.peak()} |")
    if meta["depths"]:
        depths = sorted(meta["depths"])
        out += [
            "",
            "## Time per layer against depth: chain of N × (conv 3×3 32→32, BN, ReLU)",
            "",
            "Milliseconds per conv layer (median time ÷ N). Exponent k: least-squares fit of "
            "time ∝ N^k over the depths (1 = linear in model size, 2 = quadratic).",
            "",
            "| tool, step | " + " | ".join(f"N={n}" for n in depths) + " | k |",
            "|---|" + "---:|" * (len(depths) + 1),
        ]
        rows = [("prequant", "prepare_model"), ("prequant", "prepare_model_shared"), ("aimet", "prepare_model"),
                ("torch.fx", "symbolic_trace"), ("prequant", "prepare_equalize"), ("aimet", "prepare_equalize"),
                ("prequant", "fold_all_batch_norms"), ("aimet", "fold_all_batch_norms"),
                ("prequant", "equalize_model"), ("aimet", "equalize_model"),
                ("engine", "fold_all_batch_norms"), ("engine", "equalize_model"), ("copy", "copy_weights")]
        for tool, step in rows:
            cells = [cell("torch", f"chain{n}", tool, step) for n in depths]
            if not any(c.n for c in cells):
                continue
            vals = [f"{c.seconds / n * 1e3:.3f}" + (" †" if c.needed_recursion else "") if c.seconds else c.time()
                    for c, n in zip(cells, depths)]
            k = exponent([(n, c.seconds) for c, n in zip(cells, depths)])
            out.append(f"| {TOOL_NAMES.get(tool, tool)}, {step} | " + " | ".join(vals) + f" | {k} |")
        sweeps = [cell("torch", f"chain{n}", "prequant", "equalize_model").info.get("cls_iterations") for n in depths]
        if any(sweeps):
            out += ["", "prequant CLS sweeps to convergence on the chains: " +
                    ", ".join(f"N={n}: {s}" for n, s in zip(depths, sweeps)) + "."]
    if meta.get("onnx_models"):
        out += render_onnx(meta, cell)
    return "\n".join(out) + "\n"


def render_onnx(meta: dict, cell) -> list[str]:
    out = [
        "",
        "## ONNX: the prequant tool against aimet-onnx and onnx-optimizer",
        "",
        "Models exported with the TorchScript exporter keeping BN nodes (training=PRESERVE on an eval "
        "model, do_constant_folding=False, opset 17). `prequant` CLI: wall time of the whole process, "
        "file to file (start-up, parse, transform, serialize, atomic write), peak = the process's "
        "max RSS. Python tools: the call on a loaded ModelProto; in brackets file to file = "
        "onnx.load + call + onnx.save. aimet-onnx's equalize_model replaces ReLU6 by ReLU; prequant's "
        "default keeps it (relu6=bound). onnxoptimizer: `fuse_bn_into_conv`.",
        "",
        "| model (BN nodes) | step | prequant CLI | prequant.onnx | aimet-onnx | onnxoptimizer | aimet-onnx ÷ prequant.onnx | peak MB CLI / prequant.onnx / aimet-onnx / onnxoptimizer | prequant did | aimet-onnx did |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|---|",
    ]

    def py(c):
        if c.seconds is None:
            return c.time()
        ff = c.seconds + c.info.get("load_s", 0) + c.info.get("save_s", 0)
        return f"{c.time()} ({fmt_s(ff)})"

    for model in meta["onnx_models"]:
        ex = meta["exports"].get(model, {})
        for step, cli_step, py_step in (("fold", "fold", "fold_all_batch_norms"),
                                        ("equalize", "equalize", "equalize_model")):
            cli = cell("onnx", model, "prequant CLI", cli_step)
            p, a = cell("onnx", model, "prequant.onnx", py_step), cell("onnx", model, "aimet_onnx", py_step)
            o = cell("onnx", model, "onnxoptimizer", "fold_all_batch_norms") if step == "fold" else None
            peaks = " / ".join([cli.peak(), p.peak(), a.peak(), o.peak() if o else "—"])
            out.append(f"| {model} ({ex.get('batch_norms', '?')}) | {step} | {cli.time()} | {py(p)} | {py(a)} | "
                       f"{py(o) if o else ''} | {ratio(a, p)} | {peaks} | {did(p)} | {did(a)} |")
    first = meta["onnx_models"][0]
    floor = cell("onnx", first, "onnx", "load_save")
    start = cell("onnx", first, "prequant CLI", "--version")
    sizes = ", ".join(f"{m} {e['mb']:.0f} MB" for m, e in meta["exports"].items())
    out += ["", (f"Floors: `prequant --version` (process start-up) {start.time()}, {start.peak()} MB; onnx "
                 f"parse + serialize of {first} in Python {floor.time()}. CLI peaks are max(CLI peak, "
                 f"launcher floor {meta.get('launcher_floor_mb', 0):.0f} MB). Model files: {sizes}.")]
    return out


if __name__ == "__main__":
    path = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                             "results", "speed.json")
    with open(path) as f:
        data = json.load(f)
    text = render(data["meta"], data["records"])
    with open(os.path.join(os.path.dirname(path), "speed.md"), "w") as f:
        f.write(text)
    print(text)
