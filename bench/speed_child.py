"""One timed measurement for bench/bench_speed.py, run in a fresh process (main env or AIMET venv).

    python bench/speed_child.py '{"tool": "aimet", "step": "equalize_model", "model": "resnet50"}'

Prints one line `RESULT {json}` with: seconds (the timed call only, wall clock), cpu_s (its
process CPU time, user + system: on a loaded machine the stabler figure, as the call runs on one
thread), peak_mb (peak resident
memory during the call above the resident memory just before it: VmHWM is reset through
/proc/self/clear_refs, then read from /proc/self/status), info (what the tool did, and the FP32
output SQNR of the model after the call against before it, computed outside the timed region),
or error (the exception, e.g. AIMET's RecursionError on deep chains).

Before the timed call the child imports the tool, runs the same step once on a 2-layer chain
(so lazy imports and first-call costs are not counted), builds the model and collects garbage.

Torch tools:  torch.fx (symbolic_trace) | prequant | aimet (prepare_model, fold_all_batch_norms,
              equalize_model, prepare_equalize = prepare_model then equalize_model(dummy_input=x);
              prequant also prepare_model_shared = prepare_model(copy=False)) | engine (prequant._core on a prebuilt engine graph:
              fold_all_batch_norms, equalize_model) | copy (copy_weights: one NumPy copy of every
              parameter and buffer).
ONNX tools (spec has "path" and "warmup"): prequant.onnx (fold_all_batch_norms, equalize_model) |
              aimet_onnx (fold_all_batch_norms = fold_all_batch_norms_to_weight, equalize_model) |
              onnxoptimizer (fold_all_batch_norms = fuse_bn_into_conv) | onnx (load_save: parse
              and serialize once, the floor for any file-to-file tool). `info` has load_s and
              save_s so file-to-file time = load_s + seconds + save_s.
"""

from __future__ import annotations

import ctypes
import gc
import json
import logging
import math
import os
import sys
import time
import traceback
import warnings

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


_LIBC = ctypes.CDLL("libc.so.6")


def status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def timed_with_peak(fn):
    """(result, seconds, peak MB above the resident set just before the call)."""
    gc.collect()
    _LIBC.malloc_trim(0)  # hand freed heap pages back, so reusing them cannot hide the call's peak
    rss0 = status_kb("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:  # resets VmHWM to the current RSS (Linux >= 4.0)
        f.write("5")
    t0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    seconds = time.perf_counter() - t0
    timed_with_peak.cpu_seconds = time.process_time() - c0
    return out, seconds, max(0, status_kb("VmHWM") - rss0) / 1024


def sqnr_db(ref, out) -> float | None:
    import torch

    ref, out = ref.double(), out.double()
    if not (torch.isfinite(ref).all() and torch.isfinite(out).all()):
        return None
    err = float(((ref - out) ** 2).sum())
    return math.inf if err == 0 else 10 * math.log10(float((ref ** 2).sum()) / err)


# ----------------------------------------------------------------------------- torch tools

def torch_step(tool: str, step: str):
    """A function (model, x) -> (new model or None, info dict) for one tool's step."""
    import torch

    if tool == "torch.fx":
        return lambda m, x: (torch.fx.symbolic_trace(m), {})
    if tool == "prequant":
        from prequant.torch import prepare_model
        from prequant.torch.batch_norm_fold import fold_all_batch_norms
        from prequant.torch.cross_layer_equalization import equalize_model
        if step == "prepare_model":
            return lambda m, x: (prepare_model(m), {})
        if step == "prepare_model_shared":
            return lambda m, x: (prepare_model(m, copy=False), {})
        if step == "fold_all_batch_norms":
            return lambda m, x: (None, {"folded": len(fold_all_batch_norms(m))})

        def did(r):
            return {"folded": len(r.fold.folded), "cls_sets": len(r.cls.sets),
                    "cls_iterations": r.cls.iterations, "cls_converged": r.cls.converged,
                    "absorbed": len(r.high_bias.absorbed)}

        if step == "prepare_equalize":
            def whole_path(m, x):
                prepared = prepare_model(m)
                return prepared, did(equalize_model(prepared, dummy_input=x))
            return whole_path
        return lambda m, x: (None, did(equalize_model(m)))
    if tool == "aimet":
        return aimet_step(step)
    if tool == "engine":
        from prequant import _core
        call = _core.fold_batch_norms if step == "fold_all_batch_norms" else _core.equalize_model
        return lambda g, x: (call(g), {})
    raise ValueError(f"unknown torch tool {tool!r}")


def aimet_step(step: str):
    logging.disable(logging.WARNING)  # AIMET logs every added module at INFO; not part of its cost
    import aimet_torch.cross_layer_equalization as cle
    from aimet_torch.batch_norm_fold import fold_all_batch_norms
    from aimet_torch.model_preparer import prepare_model

    if step == "prepare_model":
        return lambda m, x: (prepare_model(m), {})
    if step == "fold_all_batch_norms":
        return lambda m, x: (None, {"folded": len(fold_all_batch_norms(m, tuple(x.shape), dummy_input=x))})
    if step == "prepare_equalize":
        def whole_path(m, x):
            prepared = prepare_model(m)
            cle.equalize_model(prepared, dummy_input=x)
            return prepared, {}
        return whole_path

    # equalize_model itself, with its two inner calls wrapped to count what they did.
    seen: dict = {}
    fold, scale = cle.fold_all_batch_norms, cle.CrossLayerScaling.scale_model

    def counting_fold(*a, **k):
        pairs = fold(*a, **k)
        seen["folded"] = len(pairs)
        return pairs

    def counting_scale(*a, **k):
        infos = scale(*a, **k)
        seen["cls_sets"] = len(infos)
        seen["cls_pairs"] = sum(len(i.cls_pair_info_list) for i in infos)
        return infos

    cle.fold_all_batch_norms = counting_fold
    cle.CrossLayerScaling.scale_model = staticmethod(counting_scale)

    def eq(m, x):
        seen.clear()
        cle.equalize_model(m, dummy_input=x)
        return None, dict(seen)
    return eq


def run_torch(spec: dict) -> dict:
    import torch
    from torch import nn

    from speed_models import build_model, build_warmup, count_layers

    tool, step = spec["tool"], spec["step"]
    t0 = time.perf_counter()
    fn = None if tool == "copy" else torch_step(tool, step)
    import_s = time.perf_counter() - t0

    def subject(model):  # the engine works on a graph of zero-copy views, built untimed
        if tool != "engine":
            return model, 0.0
        from prequant.torch._engine_graph import build_engine_graph
        t = time.perf_counter()
        eg = build_engine_graph(model)
        return eg.graph, time.perf_counter() - t

    if fn is not None:  # warm-up on a tiny model (see build_warmup)
        tiny = build_warmup()
        fn(subject(tiny)[0], torch.rand(1, 32, 8, 8))
    model, x = build_model(spec["model"])
    layers = count_layers(model)
    with torch.no_grad():
        ref = model(x)
    if tool == "copy":
        arrays = [t.detach().numpy() for t in list(model.parameters()) + list(model.buffers())
                  if t.is_floating_point()]
        _, seconds, peak = timed_with_peak(lambda: [a.copy() for a in arrays])
        return dict(seconds=seconds, peak_mb=peak, info={"bytes": int(sum(a.nbytes for a in arrays))},
                    layers=layers, import_s=import_s)
    arg, build_s = subject(model)
    (new, info), seconds, peak = timed_with_peak(lambda: fn(arg, x))
    with torch.no_grad():
        out = (new if isinstance(new, nn.Module) else model)(x)
    # The engine alone edits weights but not structure (BN removal is the front end's job).
    info["out_sqnr_db"] = None if tool == "engine" else sqnr_db(ref, out)
    info["relu6_left"] = sum(isinstance(m, nn.ReLU6) for m in (new if isinstance(new, nn.Module) else model).modules())
    if tool == "engine":
        info["build_graph_s"] = build_s
    return dict(seconds=seconds, cpu_s=timed_with_peak.cpu_seconds, peak_mb=peak, info=info, layers=layers,
                import_s=import_s)


# ----------------------------------------------------------------------------- onnx tools

def onnx_step(tool: str, step: str):
    """A function ModelProto -> (ModelProto, info)."""
    if tool == "onnx":
        import onnx
        return lambda m: (onnx.load_from_string(m.SerializeToString()), {})
    if tool == "prequant.onnx":
        import prequant.onnx as pq
        if step == "fold_all_batch_norms":
            def fold(m):
                new, r = pq.fold_all_batch_norms(m)
                return new, {"folded": len(r.folded)}
            return fold

        def eq(m):
            new, r = pq.equalize_model(m)
            return new, {"folded": len(r.fold.folded), "cls_sets": len(r.cls.sets),
                         "absorbed": len(r.high_bias.absorbed)}
        return eq
    if tool == "aimet_onnx":
        logging.disable(logging.WARNING)
        if step == "fold_all_batch_norms":
            from aimet_onnx.batch_norm_fold import fold_all_batch_norms_to_weight

            def fold(m):
                conv_bn, bn_conv = fold_all_batch_norms_to_weight(m)
                return m, {"folded": len(conv_bn) + len(bn_conv)}
            return fold
        import aimet_onnx.cross_layer_equalization as ocle
        seen: dict = {}
        scale, fold = ocle.CrossLayerScaling.scale_model, ocle.fold_all_batch_norms_to_weight

        def counting_fold(*a, **k):
            conv_bn, bn_conv = fold(*a, **k)
            seen["folded"] = len(conv_bn) + len(bn_conv)
            return conv_bn, bn_conv
        ocle.fold_all_batch_norms_to_weight = counting_fold

        def counting_scale(self, *a, **k):
            infos = scale(self, *a, **k)
            seen["cls_sets"] = len(infos)
            return infos
        ocle.CrossLayerScaling.scale_model = counting_scale

        def eq(m):
            seen.clear()
            ocle.equalize_model(m)
            return m, dict(seen)
        return eq
    if tool == "onnxoptimizer":
        import onnxoptimizer
        return lambda m: (onnxoptimizer.optimize(m, ["fuse_bn_into_conv"]), {})
    raise ValueError(f"unknown onnx tool {tool!r}")


def run_onnx(spec: dict) -> dict:
    import tempfile

    import onnx

    t0 = time.perf_counter()
    fn = onnx_step(spec["tool"], spec["step"])
    import_s = time.perf_counter() - t0
    fn(onnx.load(spec["warmup"]))
    t = time.perf_counter()
    model = onnx.load(spec["path"])
    load_s = time.perf_counter() - t
    (new, info), seconds, peak = timed_with_peak(lambda: fn(model))
    with tempfile.TemporaryDirectory() as d:
        t = time.perf_counter()
        onnx.save(new, os.path.join(d, "out.onnx"))
        info["save_s"] = time.perf_counter() - t
    info["load_s"] = load_s
    ops = [n.op_type for n in new.graph.node]
    info["bn_left"] = ops.count("BatchNormalization")
    info["clip_left"] = ops.count("Clip")
    return dict(seconds=seconds, peak_mb=peak, info=info, import_s=import_s)


def main() -> None:
    spec = json.loads(sys.argv[1])
    warnings.filterwarnings("ignore")
    if spec.get("recursion_limit"):
        sys.setrecursionlimit(int(spec["recursion_limit"]))
    import torch

    torch.set_num_threads(int(spec.get("threads", 1)))
    try:
        result = run_onnx(spec) if "path" in spec else run_torch(spec)
    except BaseException as exc:  # noqa: BLE001 — reported to the driver, which marks the cell
        tb = traceback.format_exc().strip().splitlines()
        result = {"error": f"{type(exc).__name__}: {str(exc)[:200]}", "where": tb[-3:] if tb else []}
    print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
