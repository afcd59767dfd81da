"""torchvision classification models with random weights and randomized batch-norm statistics,
exported to ONNX (opset 17) so that their BatchNormalization nodes survive (see
pq_export_torchvision.py, which exports them in a separate process). `prequant equalize
--relu6 bound` must keep onnxruntime's output, fold every foldable batch norm, and leave every
CLS-scaled pair with equal per-channel ranges.

Outputs must agree to a relative error of 1e-4 (of the largest output magnitude), or, where the
original float32 model is itself that far from exact math (random statistics make some deep
models ill-conditioned: efficientnet_b0's logits reach 1e4), be as close to a float64 forward
pass as the original is. High-bias absorption is off for this check: it is exact only where
each pre-activation stays above the absorbed amount, and random batch-norm statistics do not
describe the activations of random inputs; test_onnx_cli_models.py covers it."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from pq_onnx_helpers import (check_cls_ranges, equalize_json, max_rel_err, op_counts,
                             opaque_batch_norms, run_ort)

if importlib.util.find_spec("torch") is None or importlib.util.find_spec("torchvision") is None:
    pytest.skip("torch and torchvision are needed to export the models", allow_module_level=True)

MODELS = ["resnet18", "mobilenet_v2", "mobilenet_v3_small", "efficientnet_b0", "mnasnet0_5",
          "shufflenet_v2_x0_5", "squeezenet1_0", "regnet_y_400mf", "densenet121", "googlenet",
          "convnext_tiny", "resnet50"]
# Every batch norm of these sits right after a conv or linear layer.
ALL_FOLDABLE = {"resnet18", "resnet50", "mobilenet_v2", "mobilenet_v3_small", "efficientnet_b0",
                "mnasnet0_5", "shufflenet_v2_x0_5", "regnet_y_400mf", "googlenet"}
NO_CLS_PAIR = {"convnext_tiny"}  # LayerNorm / GELU / permutes between all its layers


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("torchvision")
    script = Path(__file__).with_name("pq_export_torchvision.py")
    halves = [MODELS[0::2], MODELS[1::2]]  # two processes for two cores
    procs = [subprocess.Popen([sys.executable, str(script), str(out), *names],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for names in halves]
    for p in procs:
        log, _ = p.communicate(timeout=600)
        if p.returncode != 0:
            pytest.fail(f"exporting torchvision models failed:\n{log[-3000:]}", pytrace=False)
    return out


@pytest.mark.parametrize("name", MODELS)
def test_torchvision_equalize(cli, exported, tmp_path, name):
    info = json.loads((exported / f"{name}.json").read_text())
    assert "error" not in info, info.get("error")
    src, dst = exported / f"{name}.onnx", tmp_path / f"{name}_eq.onnx"
    feeds = {"input": np.load(exported / f"{name}.input.npy")}
    model = onnx.load(src)
    bn_before = op_counts(model)["BatchNormalization"]
    assert bn_before == info["batch_norms"], "the exporter folded batch norms: the test would prove nothing"

    # DFQ's criterion, whose weight balance check_cls_ranges asserts (the default's FP32 output on
    # these models: tests/torch zoo tests and bench/zoo_sweep_options.py)
    result = equalize_json(cli, src, dst, "--relu6", "bound", "--no-high-bias", "--scale-criterion", "weights")
    onnx.checker.check_model(str(dst))
    out = onnx.load(dst)
    counts = op_counts(out)
    assert counts["BatchNormalization"] == bn_before - len(result["fold"]["folded"])
    assert counts["BatchNormalization"] == len(result["fold"]["declined"]) + opaque_batch_norms(cli, src)
    if name in ALL_FOLDABLE:
        assert counts["BatchNormalization"] == 0, result["fold"]["declined"]

    before, after = run_ort(src, feeds), run_ort(dst, feeds)
    err = max_rel_err(before, after)
    if err >= 1e-4:
        exact = [np.load(exported / f"{name}.ref64.npy")]
        err_before, err_after = max_rel_err(exact, before), max_rel_err(exact, after)
        assert err_before > 1e-4 and err_after <= 2 * err_before + 1e-5, (err, err_before, err_after)

    pairs = check_cls_ranges(out, result["cls"])
    if name not in NO_CLS_PAIR:
        assert pairs > 0, f"no CLS pair in {name}: {result['cls']['declined'][:3]}"
