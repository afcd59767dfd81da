"""Equalization regions (`prequant equalize --regions`) on ONNX exports of torchvision models with
random weights and randomized batch-norm statistics (exported in a separate process by
pq_export_torchvision.py): onnxruntime's output is kept, more layers are scaled than by chains
alone, and every scaled region ends with its largest source range equal to its largest sink
range per channel (checked on the equalized ONNX weights)."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from pq_onnx_helpers import equalize_json, max_rel_err, run_ort

if importlib.util.find_spec("torch") is None or importlib.util.find_spec("torchvision") is None:
    pytest.skip("torch and torchvision are needed to export the models", allow_module_level=True)

MODELS = ["resnet18", "squeezenet1_0"]


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("regions")
    script = Path(__file__).with_name("pq_export_torchvision.py")
    p = subprocess.run([sys.executable, str(script), str(out), *MODELS], stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, text=True, timeout=600)
    if p.returncode != 0:
        pytest.fail(f"exporting torchvision models failed:\n{p.stdout[-3000:]}", pytrace=False)
    return out


def scaled_layers(result: dict) -> set:
    layers = {l for s in result["cls"]["sets"] for l in s["layers"]}
    for r in result["regions"]["regions"]:
        layers |= set(r["sources"]) | set(r["sinks"])
    return layers


@pytest.mark.parametrize("name", MODELS)
def test_regions_keep_output_and_scale_more(cli, exported, tmp_path, name):
    src = exported / f"{name}.onnx"
    feeds = {"input": np.load(exported / f"{name}.input.npy")}
    chains = equalize_json(cli, src, tmp_path / "chains.onnx", "--relu6", "bound", "--no-high-bias")
    dst = tmp_path / "regions.onnx"
    regions = equalize_json(cli, src, dst, "--relu6", "bound", "--no-high-bias", "--regions")
    onnx.checker.check_model(str(dst))
    before, after = run_ort(src, feeds), run_ort(dst, feeds)
    assert max_rel_err(before, after) < 1e-4
    assert regions["regions"]["regions"], regions["regions"]["declined"]
    assert len(scaled_layers(regions)) > len(scaled_layers(chains))
    assert len(regions["declined"]) < len(chains["declined"])
    for d in regions["regions"]["declined"]:
        assert d["reason"] and d["nodes"]


def test_resnet18_stream_is_balanced(cli, exported, tmp_path):
    """Every region of resnet18 is a residual stream of a stage (or a block's input fan-out);
    at convergence of the weight criterion (DFQ's, named: regions follow scale_criterion) its
    largest source range equals its largest sink range per channel."""
    src = exported / "resnet18.onnx"
    dst = tmp_path / "regions.onnx"
    result = equalize_json(cli, src, dst, "--relu6", "bound", "--no-high-bias", "--regions",
                           "--scale-criterion", "weights")
    # sets and regions share every block's layers: alternating rounds converge linearly
    assert result["regions"]["last_max_log_scale"] < 1e-4
    model = onnx.load(dst)
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    weight = {n.name: inits[n.input[1]] for n in model.graph.node if n.op_type in ("Conv", "Gemm")}
    for region in result["regions"]["regions"]:
        # residual streams of resnet18: every tensor in the region has the same channels
        src_range = np.max([np.abs(weight[s]).reshape(weight[s].shape[0], -1).max(axis=1)
                            for s in region["sources"]], axis=0)
        sink_range = np.max([np.abs(weight[s]).swapaxes(0, 1).reshape(weight[s].shape[1], -1).max(axis=1)
                             for s in region["sinks"]], axis=0)
        np.testing.assert_allclose(src_range, sink_range, rtol=1e-3)
