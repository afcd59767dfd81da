"""Prototype, not a prequant feature: would weighing activation ranges into the CLS scale
criterion help? (issue 12: per-channel INT8 after prequant is below the unmodified model's.)

    python bench/prototype_activation_aware_scales.py [none] [A] [B]

On the pretrained EfficientNet-Lite0 after prequant's chains equalization (relu6='bound'), each
scaled link (layer1 → activation → layer2) is rescaled once more, exactly (layer1's rows, bias and
bounds divided by t[c], layer2's input channels multiplied by t[c]), with
  A: t = sqrt(sqrt(r1·a) / r2)     — balance the geometric mean of layer1's row range r1 and the
                                     activation range a against layer2's column range r2
  B: t = ((r1·a)^(1/3) / r2^(2/3))^(1/2)
then gauged (t / min t). The activation ranges a[c] are measured on 64 calibration images: an
upper bound of what a data-free estimate (BN statistics, clip bounds) could do. Output SQNR and
top-1 through the accuracy bench's onnxruntime QDQ pipeline (400 evaluation images).
"""
import os
import sys
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import numpy as np, torch
from torch import nn
import accuracy_efficientnet_lite0 as B
from prequant.demo.efficientnet_lite import efficientnet_lite0
from prequant.torch import prepare_model
from prequant.torch.cross_layer_equalization import equalize_model
torch.set_num_threads(2)
calib, x, y = B.load_split(400)
base = B.export(efficientnet_lite0()); ref = B.run(base, x)
mode = sys.argv[1:] or ["none", "A", "B"]

def links(model, result):
    mods = dict(model.named_modules()); out = []
    for s in result.cls.sets:
        for a, b in zip(s.layers, s.layers[1:]):
            out.append((a, b))
    return mods, out

def act_max(model, mods, names):
    got = {}
    hooks = [mods[n].register_forward_hook(lambda m, i, o, n=n: got.__setitem__(n, torch.maximum(got.get(n, torch.zeros(i[0].shape[1])), i[0].detach().transpose(0,1).flatten(1).abs().max(1).values))) for n in names]
    with torch.no_grad():
        for i in range(0, 64, 16): model(torch.from_numpy(calib[i:i+16]))
    for h in hooks: h.remove()
    return got

def apply(model, mods, pairs, variant):
    acts = act_max(model, mods, sorted({b for _, b in pairs}))
    gm = model.graph
    by_target = {n.target: n for n in gm.nodes if n.op == "call_module"}
    for a, b in pairs:
        m1, m2 = mods[a], mods[b]
        r1 = m1.weight.detach().abs().flatten(1).max(1).values
        dw = m2.groups > 1 if isinstance(m2, nn.Conv2d) else False
        w2 = m2.weight.detach()
        r2 = w2.abs().flatten(1).max(1).values if dw else w2.abs().transpose(0, 1).flatten(1).max(1).values
        act = acts[b].clamp_min(1e-3 * float(acts[b].max()) + 1e-12)
        r1 = r1.clamp_min(1e-3 * float(r1.max()) + 1e-12); r2 = r2.clamp_min(1e-3 * float(r2.max()) + 1e-12)
        if variant == "A":
            t = torch.sqrt(torch.sqrt(r1 * act) / r2)
        elif variant == "B":
            t = (r1 * act) ** (1/3) * torch.ones_like(r1) / r2 ** (2/3)  # balance cube-root geometric
            t = t ** 0.5
        t = torch.nan_to_num(t, nan=1.0).clamp(1e-4, 1e4); t = t / t.min()  # gauge: keeps bounds <= their current values
        # find activation modules between a and b
        node = by_target[b].args[0]; between = []
        while node.op == "call_module" and node.target != a:
            between.append(mods[node.target]); node = node.args[0]
        if any(not hasattr(mm, "upper") and type(mm).__name__ not in ("ReLU", "Identity", "ZeroPad2d", "ConstantPad2d") for mm in between):
            continue
        with torch.no_grad():
            m1.weight.div_(t.view(-1, *[1]*(m1.weight.dim()-1)))
            if m1.bias is not None: m1.bias.div_(t)
            for mm in between:
                if hasattr(mm, "upper"): mm.upper.div_(t.to(mm.upper.dtype))
                elif type(mm).__name__ in ("ReLU", "Identity", "ZeroPad2d", "ConstantPad2d"): pass
                else: raise RuntimeError(f"between {a},{b}: {type(mm)}")
            if dw: m2.weight.mul_(t.view(-1, 1, 1, 1))
            else: m2.weight.mul_(t.view(1, -1, *[1]*(m2.weight.dim()-2)))

for v in mode:
    m = prepare_model(efficientnet_lite0()); res = equalize_model(m)
    mods, pairs = links(m, res)
    if v != "none": apply(m, mods, pairs, v)
    mb = B.export(m)
    fp = B.run(mb, x)
    for q in ("per-tensor", "per-channel"):
        out = B.run(B.quantize(mb, calib, per_channel=q == "per-channel"), x)
        print(f"{v:5s} {q:12s} SQNR {B.sqnr_db(ref, out):5.1f} dB top1 {100*np.mean(out.argmax(1)==y):5.1f} agree {100*np.mean(out.argmax(1)==ref.argmax(1)):5.1f}  (FP32 SQNR {B.sqnr_db(ref, fp):.0f}, links {len(pairs)})", flush=True)
