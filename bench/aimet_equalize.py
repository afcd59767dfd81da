"""AIMET's cross-layer equalization of the pretrained EfficientNet-Lite0, for the AIMET rows of
bench/accuracy_efficientnet_lite0.py. Runs in the AIMET venv (bench/setup_aimet.sh), which the
main script calls:

    .venv-aimet/bin/python bench/aimet_equalize.py --variant torch|torch-relu|onnx --out eq.onnx --summary eq.json

Variants:
  torch       aimet_torch.cross_layer_equalization.equalize_model(model, dummy_input=x) on the model
              as trained (aimet-torch >= 2.4 leaves conv -> ReLU6 -> conv pairs unscaled).
  torch-relu  the same after swapping every nn.ReLU6 for nn.ReLU by hand — what aimet-torch < 2.4
              did itself and what its ReLU6 warning tells users to do; it has no option for it.
  onnx        aimet_onnx.cross_layer_equalization.equalize_model on the ONNX export with BN nodes
              kept (aimet-onnx replaces ReLU6 / Clip(0, 6) by ReLU itself).

Writes the equalized model as ONNX, exported exactly as the main script exports its own variants
(TorchScript exporter, opset 17, input "input", output "logits", dynamic batch), so every row goes
through the same onnxruntime QDQ pipeline; and a JSON summary of what AIMET did (BN pairs
folded, CLS sets and pairs scaled, ReLU6 left, pairs given high-bias folding).
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import sys
import warnings

import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from prequant.demo.efficientnet_lite import efficientnet_lite0  # noqa: E402


def export(model: nn.Module, keep_batch_norms: bool = False) -> bytes:
    """Same arguments as accuracy_efficientnet_lite0.export (+ BN kept for aimet-onnx's input)."""
    buf = io.BytesIO()
    extra = dict(training=torch.onnx.TrainingMode.PRESERVE, do_constant_folding=False) if keep_batch_norms else {}
    torch.onnx.export(model.eval(), torch.zeros(1, 3, 224, 224), buf, dynamo=False, opset_version=17,
                      input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "n"}, "logits": {0: "n"}}, **extra)
    return buf.getvalue()


def swap_relu6(model: nn.Module) -> int:
    n = 0
    for m in list(model.modules()):
        for name, child in list(m.named_children()):
            if isinstance(child, nn.ReLU6):
                setattr(m, name, nn.ReLU())
                n += 1
    return n


def equalize_torch(relu: bool) -> tuple[bytes, dict]:
    import aimet_torch.cross_layer_equalization as cle

    model = efficientnet_lite0().eval()
    summary = {"relu6_swapped_by_hand": swap_relu6(model) if relu else 0}
    seen: dict = {}
    fold, scale = cle.fold_all_batch_norms, cle.CrossLayerScaling.scale_model

    def recording_fold(*a, **k):
        pairs = fold(*a, **k)
        seen["pairs"] = pairs
        return pairs

    def recording_scale(*a, **k):
        infos = scale(*a, **k)
        seen["infos"] = infos
        return infos

    cle.fold_all_batch_norms = recording_fold
    cle.CrossLayerScaling.scale_model = staticmethod(recording_scale)
    cle.equalize_model(model, dummy_input=torch.zeros(1, 3, 224, 224))
    names = {m: n for n, m in model.named_modules()}
    folded_after = {conv for conv, _ in seen["pairs"]}
    pairs = [(names.get(p.layer1, "?"), names.get(p.layer2, "?"), bool(p.relu_activation_between_layers))
             for info in seen["infos"] for p in info.cls_pair_info_list]
    summary.update(
        bn_folded=len(seen["pairs"]), cls_sets=len(seen["infos"]), cls_pairs=len(pairs),
        cls_pair_names=[f"{a} -> {b}" + (" (ReLU between)" if r else "") for a, b, r in pairs],
        # HighBiasFold.bias_fold acts on a scaled pair iff a BN was folded after its first layer.
        high_bias_pairs=sum(1 for info in seen["infos"] for p in info.cls_pair_info_list
                            if p.layer1 in folded_after),
        relu6_left=sum(isinstance(m, nn.ReLU6) for m in model.modules()),
        batch_norms_left=sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()))
    return export(model), summary


def equalize_onnx() -> tuple[bytes, dict]:
    import aimet_onnx.cross_layer_equalization as ocle
    import onnx

    proto = onnx.load_from_string(export(efficientnet_lite0(), keep_batch_norms=True))
    ops_before = [n.op_type for n in proto.graph.node]
    seen: dict = {}
    fold, scale = ocle.fold_all_batch_norms_to_weight, ocle.CrossLayerScaling.scale_model

    def recording_fold(*a, **k):
        conv_bn, bn_conv = fold(*a, **k)
        seen["folded"] = len(conv_bn) + len(bn_conv)
        return conv_bn, bn_conv

    def recording_scale(self, *a, **k):
        infos = scale(self, *a, **k)
        seen["infos"] = infos
        return infos

    ocle.fold_all_batch_norms_to_weight = recording_fold
    ocle.CrossLayerScaling.scale_model = recording_scale
    ocle.equalize_model(proto)
    ops = [n.op_type for n in proto.graph.node]
    infos = seen.get("infos", [])
    summary = dict(bn_nodes_before=ops_before.count("BatchNormalization"), clip_before=ops_before.count("Clip"),
                   bn_folded=seen.get("folded"), cls_sets=len(infos),
                   cls_pairs=sum(len(i.cls_pair_info_list) for i in infos),
                   batch_norms_left=ops.count("BatchNormalization"), clip_left=ops.count("Clip"),
                   relu_after=ops.count("Relu"))
    return proto.SerializeToString(), summary


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--variant", choices=("torch", "torch-relu", "onnx"), required=True)
    ap.add_argument("--out", required=True, help="equalized model, ONNX")
    ap.add_argument("--summary", required=True, help="what AIMET did, JSON")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    torch.manual_seed(0)
    if args.variant == "onnx":
        model_bytes, summary = equalize_onnx()
    else:
        model_bytes, summary = equalize_torch(relu=args.variant == "torch-relu")
    import importlib.metadata as md
    summary["versions"] = {p: md.version(p) for p in ("aimet-torch", "aimet-onnx", "torch")
                           if _installed(p)}
    with open(args.out, "wb") as f:
        f.write(model_bytes)
    with open(args.summary, "w") as f:
        json.dump(summary, f, indent=1)
    print(json.dumps({k: v for k, v in summary.items() if k != "cls_pair_names"}))


def _installed(name: str) -> bool:
    import importlib.metadata as md
    try:
        md.version(name)
        return True
    except md.PackageNotFoundError:
        return False


if __name__ == "__main__":
    main()
