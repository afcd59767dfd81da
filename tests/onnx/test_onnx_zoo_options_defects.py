"""Defects found by bench/zoo_sweep_options.py in the ONNX reader, reproduced on minimal PyTorch
modules exported as the TorchScript exporter writes them (opset 17, BatchNormalization kept).
GELU written with Erf is read since the reader learned the form (it was declined 'feeds /2/Div and
/2/Mul' on every ViT/DeiT/ConvNeXt/PoolFormer); Resize scales written as a Concat of constants
since the reader folds such a Concat (it was declined 'its scales are not constants' on HRNet's
fuse layers: torch scaled 92 layers, the CLI 79)."""

import json
import warnings

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from pq_onnx_helpers import equalize_json, max_rel_err, run_cli, run_ort


def _export(model: nn.Module, path, opset: int = 17) -> np.ndarray:
    x = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model.eval(), (x,), str(path), opset_version=opset, dynamo=False,
                          do_constant_folding=False, input_names=["x"])
    return x.numpy()


def test_gelu_as_exported_below_opset_20_is_scaled(cli, tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 1), nn.BatchNorm2d(8), nn.GELU(), nn.Conv2d(8, 4, 1))
    x = _export(model, tmp_path / "m.onnx")
    result = equalize_json(cli, tmp_path / "m.onnx", tmp_path / "eq.onnx", "--gated-activations")
    assert max_rel_err(run_ort(tmp_path / "eq.onnx", {"x": x}), run_ort(tmp_path / "m.onnx", {"x": x})) < 1e-5
    assert len(result["cls"]["sets"]) == 1, result["cls"]["declined"]


class _UpsampleFuse(nn.Module):
    """HRNet's fuse layer: a = conv(x); b = upsample2(bn(conv(pool(a)))); head(relu(a + b))."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.low = nn.Sequential(nn.MaxPool2d(2), nn.Conv2d(8, 8, 1), nn.BatchNorm2d(8),
                                 nn.Upsample(scale_factor=2, mode="nearest"))
        self.skip = nn.Sequential(nn.Conv2d(8, 8, 1), nn.BatchNorm2d(8))
        self.head = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        y = self.stem(x)
        return self.head(torch.relu(self.skip(y) + self.low(y)))


def test_upsample_scales_written_as_a_concat_of_constants_join_a_region(cli, tmp_path):
    torch.manual_seed(0)
    x = _export(_UpsampleFuse(), tmp_path / "m.onnx")
    result = equalize_json(cli, tmp_path / "m.onnx", tmp_path / "eq.onnx", "--regions")
    assert max_rel_err(run_ort(tmp_path / "eq.onnx", {"x": x}), run_ort(tmp_path / "m.onnx", {"x": x})) < 1e-5
    declined = result["cls"]["declined"] + result["regions"]["declined"]
    assert not any("scales are not constants" in d["reason"] for d in declined), declined
    assert any("/low/low.1/Conv" in r["sources"] for r in result["regions"]["regions"]), declined
    model = onnx.load(str(tmp_path / "m.onnx"))
    resize = next(n for n in model.graph.node if n.op_type == "Resize")
    scales = next(n for n in model.graph.node if resize.input[2] in n.output)
    assert scales.op_type == "Concat", scales.op_type  # the exporter's form this test is about


def _resize_by_sizes(src, dst, sizes) -> None:
    """The exported model with its Resize given constant sizes (an initializer) instead of scales."""
    model = onnx.load(str(src))
    resize = next(n for n in model.graph.node if n.op_type == "Resize")
    resize.input[2] = ""
    while len(resize.input) < 4:
        resize.input.append("")
    resize.input[3] = "pq_sizes"
    model.graph.initializer.append(onnx.numpy_helper.from_array(np.array(sizes, np.int64), "pq_sizes"))
    onnx.save(onnx.shape_inference.infer_shapes(model), str(dst))


@pytest.mark.parametrize("sizes, joins", [([1, 8, 8, 8], True), ([1, 4, 8, 8], False)])
def test_upsample_by_constant_sizes_joins_a_region_when_they_keep_batch_and_channels(cli, tmp_path, sizes, joins):
    torch.manual_seed(0)
    x = _export(_UpsampleFuse(), tmp_path / "m.onnx")
    _resize_by_sizes(tmp_path / "m.onnx", tmp_path / "s.onnx", sizes)
    result = equalize_json(cli, tmp_path / "s.onnx", tmp_path / "eq.onnx", "--regions")
    if not joins:  # sizes that change the channel count (the model no longer runs): declined
        assert not any("/low/low.1/Conv" in r["sources"] for r in result["regions"]["regions"])
        assert "it resizes the batch or channel axis" in _resize_reason(cli, tmp_path / "s.onnx")
        return
    assert max_rel_err(run_ort(tmp_path / "eq.onnx", {"x": x}), run_ort(tmp_path / "s.onnx", {"x": x})) < 1e-5
    declined = result["cls"]["declined"] + result["regions"]["declined"]
    assert any("/low/low.1/Conv" in r["sources"] for r in result["regions"]["regions"]), declined


def _resize_reason(cli, path) -> str:
    info = json.loads(run_cli(cli, "inspect", path, "--json").stdout)
    return next(o["reason"] for o in info["opaque"] if o["op_type"] == "Resize")


def test_upsample_to_sizes_computed_from_the_input_shape_is_declined_with_a_reason(cli, tmp_path):
    # nn.Upsample(size=...) exports its sizes as Concat(Slice(Shape(x)), Cast(Constant)): not
    # constant-foldable without shapes, so the Resize stays opaque and says why.
    torch.manual_seed(0)
    model = _UpsampleFuse()
    model.low[3] = nn.Upsample(size=(8, 8), mode="nearest")
    _export(model, tmp_path / "m.onnx")
    assert "its sizes are not constants" in _resize_reason(cli, tmp_path / "m.onnx")
