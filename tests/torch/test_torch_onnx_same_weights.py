"""The same model equalized through the PyTorch API and through ONNX export + the `prequant`
tool comes out with the same weights: one engine, two front ends."""

from __future__ import annotations

import copy
import os
import shutil
import subprocess
import warnings

import numpy as np
import onnx
import onnx.numpy_helper
import pytest
import torch
from torch import nn

from prequant.torch.cross_layer_equalization import equalize_model

from torch_cle_models import make_block


def _cli() -> str:
    path = os.environ.get("PREQUANT_CLI") or shutil.which("prequant")
    if not path:
        pytest.fail("the `prequant` tool is not on PATH (pip install .) and PREQUANT_CLI is not set")
    return path


def _export(model: nn.Module, path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # The TorchScript exporter folds BN in eval mode unless constant folding is off.
        torch.onnx.export(model, (torch.randn(1, 3, 16, 16),), str(path), opset_version=17,
                          dynamo=False, do_constant_folding=False)
    assert any(n.op_type == "BatchNormalization" for n in onnx.load(str(path)).graph.node)


@pytest.mark.parametrize("relu6,bias_correction", [("bound", False), ("replace", False), ("bound", True)])
def test_torch_api_and_onnx_cli_agree(tmp_path, relu6, bias_correction):
    model = make_block()
    exported = copy.deepcopy(model)
    _export(exported, tmp_path / "in.onnx")
    result = equalize_model(model, relu6=relu6, absorb_high_bias=True, bias_correction=bias_correction,
                            bias_correction_per_channel=True)
    assert bool(result.bias_correction.corrected) == bias_correction
    extra = ["--bias-correction", "--bias-correction-per-channel"] if bias_correction else []
    subprocess.run([_cli(), "equalize", str(tmp_path / "in.onnx"), "-o", str(tmp_path / "out.onnx"),
                    "--relu6", relu6, "--high-bias", *extra], check=True, capture_output=True)
    out = onnx.load(str(tmp_path / "out.onnx"))
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in out.graph.initializer}
    compared = 0
    for node in out.graph.node:
        if node.op_type not in ("Conv", "Gemm"):
            continue
        layer = node.input[1].rsplit(".", 1)[0]
        module = dict(model.named_modules())[layer]
        np.testing.assert_allclose(inits[node.input[1]], module.weight.detach().numpy(), rtol=1e-5, atol=1e-6,
                                   err_msg=f"{layer}.weight")
        assert len(node.input) > 2 and module.bias is not None
        np.testing.assert_allclose(inits[node.input[2]], module.bias.detach().numpy(), rtol=1e-5, atol=1e-5,
                                   err_msg=f"{layer}.bias")
        compared += 1
    assert compared == 5
    assert not any(n.op_type == "BatchNormalization" for n in out.graph.node)
