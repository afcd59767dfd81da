"""The zoo sweep shared by tests/torch/test_torch_zoo_sweep.py and bench/zoo_sweep.py.

For one model (random weights, randomized BN statistics): prepare_model + equalize_model in
float64 (the output must stay within 1e-5 relative of the original's, under the default criterion
and under DFQ's "weights", whose balanced ranges are checked and compared), and the same float32 model
exported to ONNX with BatchNormalization kept (TorchScript exporter, constant folding off — the
GUIDE's pitfall) and equalized by the `prequant` CLI. Then the two runs are compared BN by BN and
set by set: every BN or CLS set one front end handles and the other does not is looked up in the
other's decline reasons and classified by REASONS below, so a difference is either explained by a
named reason or reported as unexplained.

Names: the TorchScript exporter names a node by its module scope ("/blocks/blocks.0/blocks.0.0/
bn1/BatchNormalization" → "blocks.0.0.bn1"); prepare_model keeps leaf modules' qualified names and
names a converted functional below its module ("blocks.0.0.bn1.batch_norm"), so a torch node
matches an ONNX node when its name equals the scope or starts with it and a dot.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import tempfile
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from torch_cle_models import in_ranges, out_ranges, randomize_bn, rel_err

# ---- the models -----------------------------------------------------------------------------
# (source:name). The smallest member of each family; 64×64 inputs. Left out, with why:
#   timm tf_* (tf_efficientnet_lite0, tf_mobilenetv3_*), nasnetalarge: Conv2dSame pads from the
#     input's runtime size inside forward, so torch.fx cannot trace it (issue 11 item 9).
#   timm vgg11/vgg11_bn: ConvMlp branches on the feature map's size; torch.fx cannot trace it.
#   timm mobilevit_xxs, efficientvit_b0: attention blocks reshape by runtime sizes; not traceable.
#   timm mobileone_s0, fastvit_t8, xception41, cspresnet50: traceable, but 15-60 s each on 2 cores.
#   timm mobilenetv2_100, mnasnet_100, semnasnet_050, spnasnet_100, resnet26, selecsls42b,
#     hrnet_w18_small, torchvision mnasnet1_0, resnext50_32x4d, efficientnet_v2_s, convnext_tiny:
#     a smaller member of the same family is in the list (checked once: they behave the same).
#   torchvision vgg*, alexnet, wide_resnet*, big regnets, vit_*, swin_*, maxvit_t: 10^8 parameters
#     (the export alone takes many seconds) or no batch norm between layers; inception_v3 needs
#     inputs of 75 px or more.
TORCHVISION = [
    "resnet18", "resnet50", "mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large",
    "efficientnet_b0", "mnasnet0_5", "shufflenet_v2_x0_5", "squeezenet1_0", "squeezenet1_1",
    "regnet_x_400mf", "regnet_y_400mf", "densenet121", "googlenet",
]
TIMM = [
    "efficientnet_lite0", "efficientnet_b0", "tinynet_e", "mobilenetv2_050",
    "mobilenetv3_small_050", "mobilenetv3_large_100", "mnasnet_small", "mnasnet_050",
    "fbnetc_100", "hardcorenas_a", "lcnet_050", "mixnet_s", "ghostnet_050", "rexnet_100",
    "regnetx_002", "regnety_002", "densenet121", "resnet10t", "resnet18d", "seresnext26d_32x4d",
    "resnext26ts", "resnetv2_50", "dla46_c", "dpn48b", "darknet17", "ese_vovnet19b_dw",
    "repvgg_a0", "convnext_atto",
]
MODELS = [f"tv:{n}" for n in TORCHVISION] + [f"timm:{n}" for n in TIMM]
INPUT_SIDE = {}  # every model above accepts 64×64
TV_KWARGS = {"googlenet": {"aux_logits": False, "init_weights": False}}

# ---- the decline reasons that explain a difference -------------------------------------------
# (key, pattern over a decline reason, what it means). "issue11.N" keys are defects being fixed
# (issue 11 item N); the others are differences by design.
REASONS = [
    ("issue11.10", r"'(getattr|size|dim)(_\d+)?'",
     "a shape read (x.ndim, x.shape, x.size()) counted as a consumer of the tensor"),
    ("issue11.9", r"BatchNormAct2d|Conv2dSame|StdConv2d",
     "a timm subclass that overrides forward, kept opaque"),
    ("other_set_shape", r"^$", "the same layers scaled as a pair by one front end, inside a "
     "conv → depthwise → conv triple by the other (a consequence of another difference)"),
    ("carried_through", r"\((Concat|Split|Chunk|Mean|Interpolate|cat|chunk|split|mean|interpolate)\)",
     "scaling is not carried through this per-channel-linear op by one front end"),
]


def classify(reason: str) -> str:
    for key, pattern, _ in REASONS:
        if re.search(pattern, reason):
            return key
    return "unexplained"


# ---- one model ---------------------------------------------------------------------------------

@dataclass
class Sweep:
    name: str
    batch_norms: int = 0
    rel_err: float = float("nan")          # DFQ's criterion ("weights"), whose balance is checked
    default_rel_err: float = float("nan")  # equalize_model's default criterion
    torch_result: dict = field(default_factory=dict)
    onnx_result: dict = field(default_factory=dict)
    range_mismatch: list = field(default_factory=list)
    fold_diff: list = field(default_factory=list)   # (bn scope, "torch"|"onnx" did it, reason key, reason)
    cls_diff: list = field(default_factory=list)    # (layers, who scaled it, reason key, reason)
    onnx_error: str = ""

    @property
    def folded(self) -> tuple[int, int]:
        return len(self.torch_result["fold"]["folded"]), len(self.onnx_result.get("fold", {}).get("folded", []))

    @property
    def sets(self) -> tuple[int, int]:
        return len(self.torch_result["cls"]["sets"]), len(self.onnx_result.get("cls", {}).get("sets", []))

    def diff_keys(self) -> set[str]:
        return {d[2] for d in self.fold_diff + self.cls_diff}


def build_model(name: str) -> nn.Module:
    source, _, model_name = name.partition(":")
    torch.manual_seed(0)
    if source == "tv":
        import torchvision
        model = getattr(torchvision.models, model_name)(weights=None, **TV_KWARGS.get(model_name, {}))
    else:
        import timm
        model = timm.create_model(model_name, pretrained=False)
    return randomize_bn(model).eval()


def find_cli() -> str | None:
    return os.environ.get("PREQUANT_CLI") or shutil.which("prequant")


def onnx_scope(node_name: str) -> str:
    """"/blocks/blocks.0/blocks.0.0/bn1/BatchNormalization" → "blocks.0.0.bn1"."""
    # A scope component is the module's name relative to the enclosing non-container module
    # ("/layer2/layer2.0/downsample/downsample.1/BatchNormalization" → "layer2.0.downsample.1").
    base, q, prev = "", "", ""
    for p in node_name.strip("/").split("/")[:-1]:
        if not (prev and p.startswith(prev + ".")):
            base = q
        q = f"{base}.{p}" if base else p
        prev = p
    return q or node_name


def matches(torch_name: str, scope: str) -> bool:
    return torch_name == scope or torch_name.startswith(scope + ".")


def run(name: str, cli: str | None = None) -> Sweep:
    from prequant.torch import prepare_model
    from prequant.torch.cross_layer_equalization import equalize_model

    model = build_model(name)
    sweep = Sweep(name, batch_norms=sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()))
    side = INPUT_SIDE.get(name, 64)
    x = torch.randn(1, 3, side, side, generator=torch.Generator().manual_seed(1))
    model64 = copy.deepcopy(model).double()
    with torch.no_grad():
        ref = model64(x.double())
        prepared = prepare_model(model64)
        default = copy.deepcopy(prepared)
        equalize_model(default, relu6="bound", absorb_high_bias=False)
        sweep.default_rel_err = rel_err(default(x.double()), ref)
        del default
        # DFQ's criterion below: its balanced ranges are checked, and the CLI runs the same one
        result = equalize_model(prepared, relu6="bound", absorb_high_bias=False, scale_criterion="weights")
        sweep.rel_err = rel_err(prepared(x.double()), ref)
    sweep.torch_result = result.to_dict()
    modules = dict(prepared.named_modules())
    for s in sweep.torch_result["cls"]["sets"]:
        for p in s["pairs"]:
            a, b = out_ranges(modules[p["layer1"]]), in_ranges(modules[p["layer2"]])
            live = (a > 1e-6 * a.max()) & (b > 1e-6 * b.max())  # equal up to one factor (ReLU6 gauge)
            ratio = a[live] / b[live]
            if not np.allclose(ratio, ratio[:1], rtol=1e-3):
                sweep.range_mismatch.append((p["layer1"], p["layer2"]))
    if cli:
        with tempfile.TemporaryDirectory() as tmp:
            src, dst = os.path.join(tmp, "m.onnx"), os.path.join(tmp, "eq.onnx")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.onnx.export(model, (x,), src, opset_version=17, dynamo=False,
                                  do_constant_folding=False, input_names=["input"])
            proc = subprocess.run([cli, "equalize", src, "-o", dst, "--json", "--relu6", "bound",
                                   "--no-high-bias", "--scale-criterion", "weights"],
                                  capture_output=True, text=True, timeout=600)
            if proc.returncode != 0:
                sweep.onnx_error = proc.stderr.strip()[-500:]
            else:
                sweep.onnx_result = json.loads(proc.stdout)
                _compare(sweep)
    return sweep


def _declines_naming(declined: list, names: list[str], match) -> list[str]:
    return [d["reason"] for d in declined if any(match(n, m) for n in d["nodes"] for m in names)]


def _compare(sweep: Sweep) -> None:
    t, o = sweep.torch_result, sweep.onnx_result
    t_bns = [f["bn"] for f in t["fold"]["folded"]]
    o_bns = [onnx_scope(f["bn"]) for f in o["fold"]["folded"]]
    t_on_o = lambda tn, scope: matches(tn, scope)  # noqa: E731
    o_on_t = lambda scope, tn: matches(tn, scope)  # noqa: E731
    # BNs the ONNX CLI folded and torch did not, and the other way round.
    for scope in o_bns:
        if not any(matches(tn, scope) for tn in t_bns):
            reasons = _declines_naming(t["fold"]["declined"], [scope], t_on_o)
            sweep.fold_diff.append(_explained(scope, "onnx", reasons))
    for tn in t_bns:
        if not any(matches(tn, scope) for scope in o_bns):
            reasons = _declines_naming([{**d, "nodes": [onnx_scope(n) for n in d["nodes"]]}
                                        for d in o["fold"]["declined"]], [tn], o_on_t)
            sweep.fold_diff.append(_explained(tn, "torch", reasons))
    t_sets = [tuple(s["layers"]) for s in t["cls"]["sets"]]
    o_sets = [tuple(onnx_scope(n) for n in s["layers"]) for s in o["cls"]["sets"]]
    same = lambda ts, os_: len(ts) == len(os_) and all(matches(a, b) for a, b in zip(ts, os_))  # noqa: E731
    unfolded = {d[0]: d[2] for d in sweep.fold_diff}
    same_r = lambda os_, ts: same(ts, os_)  # noqa: E731
    for os_ in o_sets:
        if not any(same(ts, os_) for ts in t_sets):
            if _within(os_, t_sets, same_r) or any(_within(ts, [os_], same) for ts in t_sets):
                sweep.cls_diff.append((os_, "onnx", "other_set_shape", "torch scales these layers in a set of another length"))
                continue
            reasons = _declines_naming(t["cls"]["declined"], list(os_), t_on_o)
            sweep.cls_diff.append(_explained(os_, "onnx", reasons, unfolded))
    for ts in t_sets:
        if not any(same(ts, os_) for os_ in o_sets):
            if _within(ts, o_sets, same) or any(_within(os_, [ts], same_r) for os_ in o_sets):
                sweep.cls_diff.append((ts, "torch", "other_set_shape", "the CLI scales these layers in a set of another length"))
                continue
            o_declined = [{**d, "nodes": [onnx_scope(n) for n in d["nodes"]]} for d in o["cls"]["declined"]]
            reasons = _declines_naming(o_declined, list(ts), o_on_t)
            sweep.cls_diff.append(_explained(ts, "torch", reasons, unfolded))


def _within(small: tuple, sets: list[tuple], same) -> bool:
    """`small` (a pair) lies inside a longer set (a conv → depthwise → conv triple) of the other side."""
    return any(len(s) > len(small) and any(same(small, s[i:i + len(small)]) for i in range(len(s) - len(small) + 1))
               for s in sets)


def _explained(what, done_by: str, reasons: list[str], unfolded: dict | None = None) -> tuple:
    keys = [classify(r) for r in reasons]
    for k, r in zip(keys, reasons):
        if k != "unexplained":
            return (what, done_by, k, r)
    # A set blocked by a BN that one front end did not fold: the fold's reason explains it.
    for r in reasons:
        for bn, key in (unfolded or {}).items():
            if key != "unexplained" and re.search(re.escape(bn) + r"[.']", r):
                return (what, done_by, key, f"{r} (the BN's fold: {key})")
    return (what, done_by, "unexplained", reasons[0] if reasons else "no decline names it")
