"""`prequant report` and prequant.write_report on ONNX models: the files it writes, its statistics
against numpy on the model's own initializers, the effect of equalization it shows, and that the
model is never changed."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import prequant
import prequant.onnx
from pq_onnx_helpers import Builder, run_cli

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def mobilenet_block_model(seed: int = 0) -> onnx.ModelProto:
    """conv → BN → ReLU6 → depthwise → BN → ReLU → conv → BN → pool → Gemm, realistic BN statistics."""
    b = Builder(seed)
    x = b.clip(b.bn(b.conv("x", 3, 16, name="conv1"), 16, name="bn1"))
    x = b.relu(b.bn(b.conv(x, 16, 16, groups=16, name="dw"), 16, name="bn2"))
    x = b.bn(b.conv(x, 16, 24, k=1, name="conv3"), 24, name="bn3")
    x = b.node("Flatten", [b.node("GlobalAveragePool", [x])])
    y = b.gemm(x, 24, 10, name="fc")
    return b.model({"x": [1, 3, 8, 8]}, [y])


@pytest.fixture(scope="module")
def model_path(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("report") / "block.onnx"
    onnx.save(mobilenet_block_model(), str(path))
    return path


def layer_weights(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Each Conv/Gemm node's weight as (out channels, rest), from the initializers."""
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    out = {}
    for node in model.graph.node:
        if node.op_type in ("Conv", "Gemm"):
            w = inits[node.input[1]].astype(np.float64)
            out[node.name] = w.reshape(w.shape[0], -1)
    return out


def numpy_sqnr(w: np.ndarray, per_channel: bool, bits: int = 8) -> float:
    levels = 2 ** (bits - 1) - 1
    r = np.abs(w).max(axis=1, keepdims=True) if per_channel else np.abs(w).max()
    step = np.where(r > 0, r / levels, 1.0)
    q = np.clip(np.rint(w / step), -levels, levels) * step
    return float(10 * np.log10((w ** 2).sum() / ((w - q) ** 2).sum()))


def check_self_contained(html_path: str, images: list[str]) -> None:
    html = Path(html_path).read_text(encoding="utf-8")
    assert html.startswith("<!DOCTYPE html>")
    srcs = re.findall(r'src="([^"]*)"', html)
    assert len(srcs) == len(images) and all(s.startswith("data:image/png;base64,") for s in srcs)
    for external in ("http:", "https:", "<link", "<script", "url(", "file:"):
        assert external not in html
    for img in images:
        assert Path(img).read_bytes()[:8] == PNG_SIGNATURE


def test_stats_match_numpy_on_the_initializers(model_path):
    model = onnx.load(str(model_path))
    stats = prequant.collect_weight_stats(prequant.onnx.load(model).graph)
    weights = layer_weights(model)
    assert [l.name for l in stats.layers] == list(weights)
    for layer in stats.layers:
        w = weights[layer.name]
        assert layer.channels == w.shape[0]
        np.testing.assert_allclose(layer.min, w.min(axis=1), rtol=1e-6)
        np.testing.assert_allclose(layer.max, w.max(axis=1), rtol=1e-6)
        for name, p in (("q1", 0.25), ("median", 0.5), ("q3", 0.75)):
            np.testing.assert_allclose(getattr(layer, name), np.quantile(w, p, axis=1), rtol=1e-6, atol=1e-9)
        np.testing.assert_allclose(layer.range, np.abs(w).max(axis=1), rtol=1e-6)
        assert layer.sqnr_per_tensor_db == pytest.approx(numpy_sqnr(w, False), abs=1e-3)
        assert layer.sqnr_per_channel_db == pytest.approx(numpy_sqnr(w, True), abs=1e-3)
    assert stats.layer("dw").depthwise and stats.layer("fc").kind == "linear"


def test_cli_report(cli, model_path, tmp_path):
    digest = hashlib.sha256(model_path.read_bytes()).hexdigest()
    out = tmp_path / "out"
    # DFQ's criterion: the weight ranges balance (the default also weighs activation ranges)
    proc = run_cli(cli, "report", model_path, "-o", out, "--max-layer-plots", "2", "--scale-criterion", "weights")
    assert "report.html" in proc.stdout
    assert hashlib.sha256(model_path.read_bytes()).hexdigest() == digest
    assert sorted(p.name for p in out.iterdir()) == [
        "layer_001_conv1.png", "layer_002_dw.png", "overview.png", "report.html", "weight_stats.json"]
    check_self_contained(str(out / "report.html"), [str(p) for p in sorted(out.glob("*.png"))])

    stats = json.loads((out / "weight_stats.json").read_text())
    before = {l["name"]: l for l in stats["before"]["layers"]}
    after = {l["name"]: l for l in stats["after"]["layers"]}
    # Folded BN statistics spread the channels over orders of magnitude; CLS brings the
    # conv → depthwise → conv set's ranges together.
    for name in ("conv1", "dw"):
        assert before[name]["range_ratio"] > 10, name
        assert after[name]["range_ratio"] < before[name]["range_ratio"] / 3, name
    # "after" is the model `prequant equalize` writes.
    eq = tmp_path / "eq.onnx"
    run_cli(cli, "equalize", model_path, "-o", eq, "--scale-criterion", "weights")
    for name, w in layer_weights(onnx.load(str(eq))).items():
        np.testing.assert_allclose(after[name]["range"], np.abs(w).max(axis=1), rtol=1e-5)
    # The original baseline is the stored weights, batch norms not folded.
    run_cli(cli, "report", model_path, "-o", tmp_path / "orig", "--before", "original", "--max-layer-plots", "0")
    orig = json.loads((tmp_path / "orig" / "weight_stats.json").read_text())["before"]["layers"]
    np.testing.assert_allclose(orig[0]["range"], np.abs(layer_weights(onnx.load(str(model_path)))["conv1"]).max(axis=1),
                               rtol=1e-6)


def test_cli_report_refuses_a_file_as_output(cli, model_path, tmp_path):
    target = tmp_path / "file.txt"
    target.write_text("keep")
    proc = run_cli(cli, "report", model_path, "-o", target, expect_ok=False)
    assert proc.returncode == 1 and "directory" in proc.stderr
    assert target.read_text() == "keep"
    proc = run_cli(cli, "report", model_path, "-o", model_path, expect_ok=False)
    assert proc.returncode == 1


def test_python_write_report_on_a_model_proto(model_path, tmp_path):
    model = onnx.load(str(model_path))
    serialized = model.SerializeToString()
    report = prequant.write_report(model, tmp_path / "py", relu6="replace", max_layer_plots=1, max_channels=8,
                                   scale_criterion="weights")  # DFQ's: the weight ranges balance
    assert model.SerializeToString() == serialized
    assert len(report.images) == 2
    check_self_contained(report.html, report.images)
    assert report.result.cls.activation_edits  # relu6="replace" reached the engine
    assert report.after.layer("conv1").range_ratio < report.before.layer("conv1").range_ratio / 3
    html = Path(report.html).read_text(encoding="utf-8")
    assert "Plots are drawn for 1 of 4 layers" in html and "relu6=&#39;replace&#39;" in html
    # A path and bytes give the same statistics.
    from_path = prequant.write_report(str(model_path), tmp_path / "p", max_layer_plots=0)
    from_bytes = prequant.write_report(serialized, tmp_path / "b", max_layer_plots=0)
    assert from_path.after.to_dict() == from_bytes.after.to_dict()
    with pytest.raises(TypeError):
        prequant.write_report(object(), tmp_path / "x")
    with pytest.raises(prequant.InvalidRequestError):
        prequant.write_report(model, tmp_path / "x", before="raw")
