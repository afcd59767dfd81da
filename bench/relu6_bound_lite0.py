"""ReLU6 'bound' representation, before/after, on the pretrained EfficientNet-Lite0 (onnxruntime QDQ).

    python bench/relu6_bound_lite0.py --before /work/main/python --after python [--eval N]
        [--policies bound,skip] [--no-regions] [--sides before,after]
        [--criteria weights,weights_and_activations,activations,quantization_noise] [--bias-correction]

Runs the same rows in two fresh processes, one importing prequant from each PYTHONPATH (e.g. the
main branch and this branch, each with its built extension), and prints one table:
FP32, naive INT8 (per-tensor, per-channel) of the unmodified model, and INT8 per-tensor and
per-channel after prequant's equalize_model(relu6='bound'), chains only and chains + regions.
Data, split, export and quantization are bench/accuracy_efficientnet_lite0.py's (its functions
are imported): 100 calibration images, 400 evaluation images, MinMax QDQ, onnxruntime graph
optimization at BASIC (QDQ executed as specified). scale_criterion=quantization_noise models the
weight quantizer, as does --bias-correction: one model per target (weight_quantization /
bias_correction_per_channel), each measured in both INT8 modes, its label naming the target.
The exported ops (Clip/Min/Relu counts) show
the representation each side writes.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def child(args) -> None:
    sys.path.insert(0, HERE)
    import torch
    import accuracy_efficientnet_lite0 as acc
    from prequant.demo.efficientnet_lite import efficientnet_lite0
    from prequant.torch import prepare_model
    from prequant.torch.cross_layer_equalization import equalize_model

    torch.set_num_threads(acc.THREADS)
    torch.manual_seed(acc.SEED)
    calib, x, y = acc.load_split(args.eval)
    base = acc.export(efficientnet_lite0())
    ref = acc.run(base, x)
    rows = []

    def measure(label, mb, quant):
        out = ref if quant is None else acc.run(acc.quantize(mb, calib, per_channel=(quant == "per-channel")), x)
        rows.append(dict(label=label, top1=100 * float((out.argmax(1) == y).mean()),
                         agree=100 * float((out.argmax(1) == ref.argmax(1)).mean()),
                         sqnr=acc.sqnr_db(ref, out), ops=acc.op_counts(mb, ("Clip", "Min", "Relu"))))
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)

    if args.base:
        measure("FP32", base, None)
        for quant in ("per-tensor", "per-channel"):
            measure(f"unmodified + INT8 {quant}", base, quant)
    dummy = torch.zeros(1, 3, 224, 224)
    for policy in args.policies.split(","):
        for regions in (False, True) if args.regions else (False,):
            for criterion in args.criteria.split(","):
                # quantization_noise and bias correction model the weight quantizer: one model per
                # target, each measured with both INT8 modes (the label names its target); the other
                # criteria: one model, measured with both.
                per_target = criterion == "quantization_noise" or args.bias_correction
                for target in ("per-tensor", "per-channel") if per_target else (None,):
                    m = prepare_model(efficientnet_lite0())
                    # explicit, since 'weights' is no longer the default; a 'before' predating the option is DFQ
                    takes_criterion = "scale_criterion" in inspect.signature(equalize_model).parameters
                    kw = {"scale_criterion": criterion} if takes_criterion else {}
                    if criterion == "quantization_noise":
                        kw["weight_quantization"] = target.replace("-", "_")
                    if args.bias_correction:
                        kw.update(bias_correction=True, bias_correction_per_channel=(target == "per-channel"))
                    t0 = time.process_time()
                    equalize_model(m, dummy_input=dummy, relu6=policy, regions=regions, **kw)
                    seconds = time.process_time() - t0
                    mb = acc.export(m)
                    fp32 = acc.run(mb, x)
                    crit = f", scale_criterion={criterion}" + (", bias_correction" if args.bias_correction else "")
                    crit += f", for {target}" if target else ""
                    for quant in ("per-tensor", "per-channel"):
                        measure(f"equalize relu6={policy}{crit}, {'chains + regions' if regions else 'chains only'} "
                                f"+ INT8 {quant}", mb, quant)
                        rows[-1]["fp32_sqnr"] = acc.sqnr_db(ref, fp32)
                        rows[-1]["equalize_cpu_s"] = seconds
    print(json.dumps(rows))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--before", required=True, help="PYTHONPATH whose prequant is 'before'")
    ap.add_argument("--after", required=True, help="PYTHONPATH whose prequant is 'after'")
    ap.add_argument("--eval", type=int, default=400)
    ap.add_argument("--policies", default="bound", help="relu6 policies of the equalize rows (comma-separated)")
    ap.add_argument("--no-regions", dest="regions", action="store_false", help="chains-only rows")
    ap.add_argument("--sides", default="before,after", help="which of before,after to run")
    ap.add_argument("--criteria", default="weights", help="scale_criterion values of the equalize rows (comma-separated)")
    ap.add_argument("--bias-correction", action="store_true",
                    help="equalize rows also correct biases, one model per weight quantizer (per-tensor, per-channel)")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--base", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args)
        return
    results = {}
    for side, path in (("before", args.before), ("after", args.after)):
        if side not in args.sides.split(","):
            continue
        env = dict(os.environ, PYTHONPATH=os.path.abspath(path))
        cmd = [sys.executable, os.path.abspath(__file__), "--before", args.before, "--after", args.after,
               "--eval", str(args.eval), "--policies", args.policies, "--criteria", args.criteria, "--child"] + \
              (["--bias-correction"] if args.bias_correction else []) + \
              (["--base"] if side == "after" else []) + ([] if args.regions else ["--no-regions"])
        out = subprocess.run(cmd, env=env, check=True, stdout=subprocess.PIPE, text=True).stdout
        results[side] = json.loads(out.strip().splitlines()[-1])
    fmt = lambda v: "inf" if v == float("inf") else f"{v:.1f}"
    print(f"| row | side | top-1 % | agree % | output SQNR dB | FP32 SQNR dB | exported ops |")
    print("|---|---|---:|---:|---:|---:|---|")
    for side in ("after", "before"):
        for r in results.get(side, []):
            print(f"| {r['label']} | {side if r['label'].startswith('equalize') else '-'} | {r['top1']:.1f} | "
                  f"{r['agree']:.1f} | {fmt(r['sqnr'])} | {fmt(r.get('fp32_sqnr', float('inf')))} | {r['ops']} |")


if __name__ == "__main__":
    main()
