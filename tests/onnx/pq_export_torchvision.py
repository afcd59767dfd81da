"""Export torchvision classification models for test_onnx_torchvision.py, in a process of its own.

    python pq_export_torchvision.py OUT_DIR NAME [NAME ...]

Runs apart from pytest because importing torchvision pulls in torch._dynamo and triton, which
crash (SIGSEGV) in a process that has already loaded TensorFlow — as a full test run has, after
the Keras tests. For each model writes NAME.onnx, NAME.input.npy, NAME.ref64.npy (the output of
a float64 forward pass) and NAME.json ({"batch_norms": n} or {"error": "..."}).

Weights are random; batch-norm statistics are randomized to realistic, non-trivial values:
var log-uniform in [1e-2, 10], non-zero mean, gamma of both signs. The export uses the
TorchScript exporter with constant folding off, so the BatchNormalization nodes survive (in eval
mode with folding on, the exporter fuses them into the convs)."""

import json
import sys
import traceback
import warnings
from pathlib import Path

import numpy as np
import torch
import torchvision

MODEL_KWARGS = {"googlenet": dict(aux_logits=False, init_weights=False)}


def randomize_batch_norms(model: torch.nn.Module, gen: torch.Generator) -> int:
    count = 0
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            c = m.num_features
            with torch.no_grad():
                sign = torch.where(torch.rand(c, generator=gen) < 0.25, -1.0, 1.0)
                m.weight.copy_(sign * (0.5 + torch.rand(c, generator=gen)))
                m.bias.copy_(0.5 * torch.randn(c, generator=gen))
                m.running_mean.copy_(0.5 * torch.randn(c, generator=gen))
                m.running_var.copy_(torch.exp(
                    torch.empty(c).uniform_(float(np.log(1e-2)), float(np.log(10.0)), generator=gen)))
            count += 1
    return count


def export(name: str, out: Path) -> dict:
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = getattr(torchvision.models, name)(weights=None, **MODEL_KWARGS.get(name, {})).eval()
    n_bn = randomize_batch_norms(model, gen)
    x = torch.randn(1, 3, 64, 64, generator=gen)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x,), str(out / f"{name}.onnx"), opset_version=17, dynamo=False,
                          do_constant_folding=False, input_names=["input"], output_names=["logits"])
    with torch.no_grad():
        ref = model.double()(x.double()).numpy()
    np.save(out / f"{name}.input.npy", x.numpy())
    np.save(out / f"{name}.ref64.npy", ref)
    return {"batch_norms": n_bn}


def main() -> None:
    out = Path(sys.argv[1])
    torch.set_num_threads(1)
    for name in sys.argv[2:]:
        try:
            info = export(name, out)
        except Exception:  # reported to the test of this model
            info = {"error": traceback.format_exc()}
        (out / f"{name}.json").write_text(json.dumps(info))


if __name__ == "__main__":
    main()
