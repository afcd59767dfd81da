"""The opt-in equalization options swept over a model zoo: regions, gated activations, ReLU6
policies, bias correction and high-bias absorption, through PyTorch and through the `prequant` CLI.

    PYTHONPATH=python PREQUANT_CLI=build-dev/cpp/prequant python bench/zoo_sweep_options.py \
        [--models tv:resnet18 timm:...] [--options regions gated ...] [--no-onnx]

Per model (random weights, randomized BN statistics as tests/torch/torch_zoo_sweep.py, 64×64
input): prepare_model once in float64, then for every option combination a fresh copy through
equalize_model; the same float32 model exported to ONNX (BatchNormalization kept) through
`prequant equalize <flags> --json`, run by onnxruntime. Checked, per cell:

- it runs, or fails with a typed prequant error (an untyped exception is a defect);
- exact options (chains, regions, gated activations, ReLU6 bound/skip): the float64 torch output
  moves by at most 1e-6 relative ("FAIL" otherwise); the ONNX output (float32) by at most 1e-4,
  or 10× the unmodified float32 export's own error against float64 where that is larger (random
  BN statistics make some models ill-conditioned: efficientnet_lite0's float32 export is 13% off);
- bias correction / high-bias absorption change the output on purpose: the FP32 SQNR against the
  original is printed, and the bias change actually applied to each layer is compared with the
  one the result reports (against the same options without the step; the weights must match);
- the number of layers scaled (CLS sets' layers ∪ regions' sources and sinks) torch / ONNX, and
  that explain() prints and every declined candidate names nodes and a reason.

Prints one markdown table per model: option, status, layers scaled torch / onnx, max rel err
(torch f64 / onnx f32) or SQNR, and notes. A bench, not a test: minutes per model on 2 cores."""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "torch"))

import numpy as np  # noqa: E402
import torch  # noqa: E402

import prequant  # noqa: E402
import torch_zoo_sweep as zoo  # noqa: E402
from torch_cle_models import randomize_bn, rel_err  # noqa: E402

# (label, torch kwargs, CLI flags, exact). relu6 'replace' is AIMET's approximation: not exact.
OPTIONS = [
    ("chains", {}, [], True),
    ("regions", {"regions": True}, ["--regions"], True),
    ("gated", {"gated_activations": True}, ["--gated-activations"], True),
    ("reg+gated", {"regions": True, "gated_activations": True}, ["--regions", "--gated-activations"], True),
    ("reg+gated skip", {"regions": True, "gated_activations": True, "relu6": "skip"},
     ["--regions", "--gated-activations", "--relu6", "skip"], True),
    ("reg+gated replace", {"regions": True, "gated_activations": True, "relu6": "replace"},
     ["--regions", "--gated-activations", "--relu6", "replace"], False),
    ("reg+gated+bc", {"regions": True, "gated_activations": True, "bias_correction": True},
     ["--regions", "--gated-activations", "--bias-correction"], False),
    ("reg+gated+hb", {"regions": True, "gated_activations": True, "absorb_high_bias": True},
     ["--regions", "--gated-activations", "--high-bias"], False),
]
BASE_OF = {"reg+gated+bc": "reg+gated", "reg+gated+hb": "reg+gated"}

# A broad selection, smallest member per family; (source:name, create kwargs).
MODELS = [
    "tv:resnet18", "tv:mobilenet_v3_small", "tv:efficientnet_b0", "tv:squeezenet1_1",
    "tv:regnet_y_400mf", "tv:densenet121", "tv:googlenet", "tv:shufflenet_v2_x0_5", "tv:mnasnet0_5",
    "tv:convnext_tiny",
    "timm:resnet18d", "timm:regnetx_002", "timm:regnety_002", "timm:efficientnet_b0",
    "timm:efficientnet_lite0", "timm:mobilenetv3_small_050", "timm:mobilenetv3_large_100",
    "timm:mixnet_s", "timm:ghostnet_050", "timm:convnext_atto", "timm:rexnet_100",
    "timm:densenet121", "timm:dla46_c", "timm:hrnet_w18_small", "timm:cspresnet50",
    "timm:cspdarknet53", "timm:repvgg_a0", "timm:vit_tiny_patch16_224", "timm:deit_tiny_patch16_224",
    "timm:levit_128s", "timm:poolformer_s12", "timm:mobilevit_xxs", "timm:lcnet_050",
    "timm:tinynet_e", "timm:resnext26ts", "timm:ese_vovnet19b_dw", "timm:fbnetc_100",
    "timm:hardcorenas_a", "timm:seresnext26d_32x4d", "timm:darknet17",
]
TIMM_KWARGS = {"vit_tiny_patch16_224": {"img_size": 64}, "deit_tiny_patch16_224": {"img_size": 64},
               "levit_128s": {"img_size": 64}, "mobilevit_xxs": {}}
EXACT_TORCH, EXACT_ONNX = 1e-6, 1e-4


def build(name: str) -> torch.nn.Module:
    source, _, model_name = name.partition(":")
    if source == "timm":
        import timm
        torch.manual_seed(0)
        return randomize_bn(timm.create_model(model_name, pretrained=False,
                                              **TIMM_KWARGS.get(model_name, {}))).eval()
    return zoo.build_model(name)


def sqnr_db(out, ref) -> float:
    out, ref = np.asarray(out, np.float64), np.asarray(ref, np.float64)
    noise = float(np.sum((out - ref) ** 2))
    return math.inf if noise == 0 else 10 * math.log10(float(np.sum(ref ** 2)) / noise)


def rel(out, ref) -> float:
    out, ref = np.asarray(out, np.float64), np.asarray(ref, np.float64)
    return float(np.abs(out - ref).max() / max(np.abs(ref).max(), 1e-30))


def describe_error(exc: BaseException) -> str:
    typed = isinstance(exc, (prequant.Error, prequant.UnsupportedError, prequant.InvalidRequestError))
    tag = "typed" if typed else "UNTYPED"
    return f"{tag} {type(exc).__name__}: {str(exc).splitlines()[0][:110] if str(exc) else ''}"


def scaled_layers(d: dict, name_map=lambda n: n) -> set[str]:
    layers = {name_map(n) for s in d.get("cls", {}).get("sets", []) for n in s["layers"]}
    for r in d.get("regions", {}).get("regions", []):
        layers.update(name_map(n) for n in r.get("sources", []) + r.get("sinks", []))
    return layers


def check_explain(result, d: dict) -> str:
    text = result.explain()
    if not text.strip():
        return "explain() empty"
    bad = []
    for key, sub in d.items():
        if isinstance(sub, dict):
            for decl in sub.get("declined", []):
                if not decl.get("reason") or not decl.get("nodes"):
                    bad.append(f"{key}: declined without reason/nodes {decl}")
    return "; ".join(bad[:2])


def biases(model) -> dict[str, np.ndarray]:
    return {n: m.bias.detach().numpy().copy() for n, m in model.named_modules()
            if isinstance(getattr(m, "bias", None), torch.Tensor)}


def weights(model) -> dict[str, np.ndarray]:
    return {n: m.weight.detach().numpy().copy() for n, m in model.named_modules()
            if isinstance(getattr(m, "weight", None), torch.Tensor)}


def check_bias_report(label: str, d: dict, model, base_model) -> str:
    """The bias change applied against what the result reports (same weights as `base_model`)."""
    notes = []
    w, w0 = weights(model), weights(base_model)
    moved = [n for n in w if n in w0 and w[n].shape == w0[n].shape and rel(w[n], w0[n]) > 1e-9]
    if moved:
        notes.append(f"weights differ from '{BASE_OF[label]}' at {moved[:2]}")
    b, b0 = biases(model), biases(base_model)
    expected: dict[str, np.ndarray] = {}
    if label.endswith("+bc"):
        for c in d["bias_correction"]["corrected"]:
            expected[c["layer"]] = -np.asarray(c["correction"])  # the amount subtracted
    else:  # high bias: layer1 loses `amount`; layer2 gains W2·amount (checked only as "changed")
        absorbed = d["high_bias"]["absorbed"]
        seconds = {a["layer2"] for a in absorbed}
        for a in absorbed:  # a layer2 (also when it is another pair's layer1) only as "changed"
            expected[a["layer1"]] = None if a["layer1"] in seconds else -np.asarray(a["amount"])
        expected.update(dict.fromkeys(seconds))
    for n, bias in b.items():
        delta = bias - b0[n] if n in b0 and b0[n].shape == bias.shape else bias
        want = expected.get(n, 0.0)
        if want is None:
            continue
        if np.abs(delta - want).max() > 1e-6 * max(1.0, np.abs(want).max() if np.ndim(want) else 1.0):
            sign = " (opposite sign)" if np.ndim(want) and np.abs(delta + want).max() < 1e-6 else ""
            notes.append(f"bias of '{n}' moved {np.abs(delta).max():.3g}, report says {np.abs(want).max():.3g}{sign}")
    missing = [n for n in expected if n not in b and expected[n] is not None]
    if missing:
        notes.append(f"reported layers without a bias module: {missing[:2]}")
    return "; ".join(notes[:3])


def run_torch(name: str, options) -> tuple[dict, str]:
    from prequant.torch import prepare_model
    from prequant.torch.cross_layer_equalization import equalize_model

    model = build(name)
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    m64 = copy.deepcopy(model).double()
    out = {}
    with torch.no_grad():
        ref = m64(x.double()).numpy()
        try:
            prepared = prepare_model(m64)
        except Exception as exc:  # noqa: BLE001
            return {}, "prepare: " + describe_error(exc)
        if rel(prepared(x.double()).numpy(), ref) > EXACT_TORCH:
            return {}, "prepare_model changed the output"
        models = {}
        for label, kwargs, _, exact in options:
            m = copy.deepcopy(prepared)
            cell = {"exact": exact}
            t0 = time.perf_counter()
            try:
                result = equalize_model(m, **kwargs)
            except Exception as exc:  # noqa: BLE001
                cell["error"] = describe_error(exc)
                cell["trace"] = traceback.format_exc(limit=-3)
                out[label] = cell
                continue
            cell["seconds"] = time.perf_counter() - t0
            y = m(x.double()).numpy()
            cell["rel"], cell["sqnr"] = rel(y, ref), sqnr_db(y, ref)
            if not np.all(np.isfinite(y)):
                cell["notes"] = ["non-finite output"]
            d = result.to_dict()
            cell["dict"] = d
            cell["scaled"] = scaled_layers(d)
            cell.setdefault("notes", [])
            if (e := check_explain(result, d)):
                cell["notes"].append(e)
            models[label] = m
            if label in BASE_OF and BASE_OF[label] in models:
                if (e := check_bias_report(label, d, m, models[BASE_OF[label]])):
                    cell["notes"].append(e)
            out[label] = cell
    return out, ""


def run_onnx(name: str, options, cli: str) -> tuple[dict, str]:
    import onnxruntime as ort

    model = build(name)
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "m.onnx")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.onnx.export(model, (x,), src, opset_version=17, dynamo=False,
                                  do_constant_folding=False, input_names=["input"])
        except Exception as exc:  # noqa: BLE001
            return {}, f"export: {type(exc).__name__}"
        so = ort.SessionOptions()
        so.intra_op_num_threads = 1
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        feed = {"input": x.numpy()}
        ref = ort.InferenceSession(src, so, providers=["CPUExecutionProvider"]).run(None, feed)[0]
        with torch.no_grad():  # float32 noise floor: the unmodified export against float64
            noise = rel(ref, copy.deepcopy(model).double()(x.double()).numpy())
        for label, _, flags, exact in options:
            dst = os.path.join(tmp, f"eq_{len(out)}.onnx")
            proc = subprocess.run([cli, "equalize", src, "-o", dst, "--json", *flags],
                                  capture_output=True, text=True, timeout=900)
            cell = {"exact": exact, "limit": max(EXACT_ONNX, 10 * noise), "noise": noise}
            if proc.returncode != 0:
                cell["error"] = f"CLI exit {proc.returncode}: {proc.stderr.strip().splitlines()[-1][:120] if proc.stderr.strip() else ''}"
                out[label] = cell
                continue
            d = json.loads(proc.stdout)
            cell["dict"] = d
            cell["scaled"] = scaled_layers(d, zoo.onnx_scope)
            try:
                y = ort.InferenceSession(dst, so, providers=["CPUExecutionProvider"]).run(None, feed)[0]
                cell["rel"], cell["sqnr"] = rel(y, ref), sqnr_db(y, ref)
            except Exception as exc:  # noqa: BLE001
                cell["error"] = f"onnxruntime: {type(exc).__name__}: {str(exc)[:100]}"
            out[label] = cell
    return out, ""


def fmt_err(cell: dict | None, limit: float) -> str:
    if not cell or "rel" not in cell:
        return "—"
    if cell["exact"]:
        flag = " **FAIL**" if not cell["rel"] <= limit else ""
        return f"{cell['rel']:.1e}{flag}"
    return f"{cell['sqnr']:.1f} dB"


def row(model: str, label: str, t: dict | None, o: dict | None) -> tuple[str, bool]:
    notes, bad = [], False
    status = "ok"
    for who, cell in (("torch", t), ("onnx", o)):
        if cell and "error" in cell:
            status = "error"
            notes.append(f"{who}: {cell['error']}")
            bad |= "UNTYPED" in cell["error"] or who == "onnx" and "exit 1:" not in cell["error"]
        elif cell:
            limit = EXACT_TORCH if who == "torch" else cell["limit"]
            if who == "onnx" and cell["noise"] > EXACT_ONNX:
                notes.append(f"onnx: the float32 export itself is {cell['noise']:.1e} from float64")
            if cell["exact"] and not cell.get("rel", 0) <= limit:
                status, bad = "FAIL", True
            notes += [f"{who}: {n}" for n in cell.get("notes", [])]
            bad |= bool(cell.get("notes"))
    nt = len(t["scaled"]) if t and "scaled" in t else "—"
    no = len(o["scaled"]) if o and "scaled" in o else "—"
    if isinstance(nt, int) and isinstance(no, int) and nt != no:
        notes.append(f"only torch: {sorted(t['scaled'] - o['scaled'])[:3]}; only onnx: {sorted(o['scaled'] - t['scaled'])[:3]}")
    extra = ""
    if t and "dict" in t:
        d = t["dict"]
        extra = (f"regions {len(d['regions']['regions'])}, gated {sum(1 for e in d['cls']['activation_edits'] if e.get('kind') == 'gate_scaled')}"
                 f"{', bc ' + str(len(d['bias_correction']['corrected'])) if d['bias_correction']['corrected'] else ''}"
                 f"{', hb ' + str(len(d['high_bias']['absorbed'])) if d['high_bias']['absorbed'] else ''}")
    text = "; ".join(n.replace("|", "/") for n in notes)
    return (f"| {model} | {label} | {status} | {nt} / {no} | {fmt_err(t, EXACT_TORCH)} / "
            f"{fmt_err(o, o['limit'] if o and 'limit' in o else EXACT_ONNX)} | {extra} | {text[:300]} |", bad)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="*", default=MODELS)
    ap.add_argument("--options", nargs="*", default=[o[0] for o in OPTIONS])
    ap.add_argument("--no-onnx", action="store_true")
    args = ap.parse_args()
    options = [o for o in OPTIONS if o[0] in args.options]
    cli = None if args.no_onnx else zoo.find_cli()
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    print(f"commit {zoo_commit()}, torch {torch.__version__}\n")
    print("| model | option | status | layers scaled torch / onnx | max rel err torch f64 / onnx f32 (or FP32 SQNR) | torch: regions, gated, bc, hb | notes |")
    print("|---|---|---|---:|---:|---|---|")
    defects = []
    for name in args.models:
        t0 = time.perf_counter()
        try:
            tcells, terr = run_torch(name, options)
        except Exception as exc:  # noqa: BLE001
            tcells, terr = {}, "build: " + describe_error(exc)
        ocells, oerr = run_onnx(name, options, cli) if cli and not terr.startswith("build") else ({}, "")
        if terr or oerr:
            print(f"| {name} | — | skipped | | | | torch: {terr or 'ok'}; onnx: {oerr or 'ok'} |", flush=True)
            if "UNTYPED" in terr:
                defects.append(f"{name}: {terr}")
        for label, *_ in options:
            if label not in tcells and label not in ocells:
                continue
            line, bad = row(name, label, tcells.get(label), ocells.get(label))
            print(line, flush=True)
            if bad:
                defects.append(line)
                if "trace" in tcells.get(label, {}):
                    print(tcells[label]["trace"], file=sys.stderr)
        print(f"<!-- {name}: {time.perf_counter() - t0:.0f} s -->", flush=True)
    print(f"\n{len(defects)} rows flagged.")


def zoo_commit() -> str:
    try:
        return subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


if __name__ == "__main__":
    main()
