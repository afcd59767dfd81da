"""prequant.write_report on PyTorch models: the baseline is the model with its batch norms folded
(checked against the fold formula applied by hand), "after" is what the front end's
equalize_model makes of a copy, and the model given is left exactly as it was."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

import prequant
from prequant.torch.cross_layer_equalization import equalize_model

from torch_cle_models import make_block, out_ranges, randomize_bn


def snapshot(model: torch.nn.Module) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_unchanged(model: torch.nn.Module, before: dict) -> None:
    after = model.state_dict()
    assert after.keys() == before.keys()
    for k, v in before.items():
        assert torch.equal(after[k], v), k


def test_block_report(tmp_path, single_thread_torch):
    torch.manual_seed(0)
    model = make_block()
    state = snapshot(model)
    # DFQ's criterion: the weight ranges line up (checked below; the default also weighs activations)
    report = prequant.write_report(model, tmp_path, max_layer_plots=3, scale_criterion="weights")
    assert_unchanged(model, state)
    assert isinstance(model.bn1, torch.nn.BatchNorm2d)

    names = [l.name for l in report.before.layers]
    assert names == ["conv1", "dw", "pw", "conv4", "fc"]
    # Baseline: conv → BN folded, W'[o] = W[o]·γ[o]/σ[o], so the ranges scale by |γ/σ|.
    for conv, bn in (("conv1", model.bn1), ("dw", model.bn2), ("pw", model.bn3), ("conv4", model.bn4)):
        s = (bn.weight / torch.sqrt(bn.running_var + bn.eps)).detach().double().abs().numpy()
        np.testing.assert_allclose(report.before.layer(conv).range, out_ranges(getattr(model, conv)) * s, rtol=1e-5)
    # After: the front end's own equalize_model on a copy.
    equalized = copy.deepcopy(model)
    equalize_model(equalized, scale_criterion="weights")
    for name in names:
        np.testing.assert_allclose(report.after.layer(name).range, out_ranges(getattr(equalized, name)), rtol=1e-5)
    # The conv → depthwise → conv set's channels line up.
    for name in ("conv1", "dw"):
        assert report.before.layer(name).range_ratio > 5, name
        assert report.after.layer(name).range_ratio < report.before.layer(name).range_ratio / 3, name

    assert len(report.images) == 4 and all(Path(p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in report.images)
    html = Path(report.html).read_text(encoding="utf-8")
    assert len(re.findall(r'src="data:image/png;base64,', html)) == 4
    assert "http:" not in html and "https:" not in html  # (":" is not a base64 character)
    assert "MobileBlock" in html

    original = prequant.write_report(model, tmp_path / "orig", before="original", max_layer_plots=0)
    np.testing.assert_allclose(original.before.layer("conv1").range, out_ranges(model.conv1), rtol=1e-6)
    assert_unchanged(model, state)


def test_torchvision_model(tmp_path, single_thread_torch):
    torch.manual_seed(0)
    model = randomize_bn(torchvision.models.mobilenet_v2(weights=None, width_mult=0.35)).eval()
    state = snapshot(model)
    report = prequant.write_report(model, tmp_path, relu6="bound", max_layer_plots=2, max_channels=32)
    assert_unchanged(model, state)
    assert len(report.before.layers) == len(report.after.layers) == 53
    ratios_before = np.array([l.range_ratio for l in report.before.layers])
    ratios_after = np.array([l.range_ratio for l in report.after.layers])
    assert np.median(ratios_before) > 10 * np.median(ratios_after)
    assert len(report.result.cls.sets) > 10
    assert Path(report.json).is_file() and len(report.images) == 3


def test_training_mode_is_refused(tmp_path):
    model = make_block().train()
    with pytest.raises(prequant.UnsupportedError, match="eval"):
        prequant.write_report(model, tmp_path)
    assert not (tmp_path / "report.html").exists()
