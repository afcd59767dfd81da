"""The README's main job, `python -m prequant.demo`, in a fast mode (2 photos, 2 calibration crops
each): it runs end to end on the pretrained EfficientNet-Lite0, prints progress and the tables,
and equalization beats naive per-tensor INT8 in output SQNR (onnxruntime numbers)."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from prequant.demo import _images, _int8
from prequant.demo.__main__ import main
from prequant.demo._pipeline import NAIVE, PER_CHANNEL, PREQUANT
from prequant.demo.efficientnet_lite import efficientnet_lite0

VARIANTS = ["FP32", NAIVE, PREQUANT, PER_CHANNEL]


def _table(lines: list[str], header_start: str) -> list[list[str]]:
    """Rows (cells) of the Markdown table whose header starts with `header_start`."""
    start = next(i for i, line in enumerate(lines) if line.startswith(header_start))
    rows = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip("|").split("|")])
    assert re.fullmatch(r"(---:?)+", "".join(rows[1])), rows[1]
    return [rows[0]] + rows[2:]


def test_demo_prints_tables_and_prequant_beats_naive(capsys):
    assert main(["--photos", "2", "--crops", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()

    steps = [line for line in lines if re.match(r"\[\s*\d+\.\d s\] \d/\d ", line)]
    assert [s.split("] ")[1][:3] for s in steps] == [f"{i}/8" for i in range(1, 9)]

    per_photo = _table(lines, "| photo |")
    assert per_photo[0] == ["photo"] + VARIANTS
    assert [row[0] for row in per_photo[1:]] == ["chelsea", "coffee"]
    for row in per_photo[1:]:
        assert all(re.fullmatch(r"[^|]+ \d+ %( \*)?", cell) for cell in row[1:]), row
        assert not row[1].endswith("*")  # FP32 agrees with itself
    # The pretrained weights are really loaded: random weights would not see the espresso.
    assert per_photo[2][1].startswith("espresso ")

    summary = _table(lines, "| variant |")
    assert [row[0] for row in summary[1:]] == VARIANTS
    sqnr = {row[0]: row[2] for row in summary[1:]}
    assert sqnr["FP32"] == "inf" and summary[1][1] == "2/2"
    naive, prequant, per_channel = (float(sqnr[v]) for v in (NAIVE, PREQUANT, PER_CHANNEL))
    # Paper and bench (400 images): naive ~7 dB, prequant ~12 dB, per-channel ~19 dB.
    assert prequant > naive + 3, (naive, prequant)
    assert per_channel > naive + 3, (naive, per_channel)

    stress_start = next(i for i, line in enumerate(lines) if line.startswith("Stress case"))
    stress = _table(lines[stress_start:], "| variant |")
    assert [row[0] for row in stress[1:]] == [NAIVE, PREQUANT]
    stress_naive, stress_prequant = float(stress[1][2]), float(stress[2][2])
    assert stress_prequant > stress_naive + 5, (stress_naive, stress_prequant)
    assert any(line.startswith("==> per-tensor INT8 output SQNR: naive") for line in lines)
    assert lines[-1].startswith("done in ")


def test_demo_fp32_logits_match_torch():
    """The demo's FP32 path (ONNX export run by onnxruntime) gives the PyTorch model's own logits."""
    _, x, calibration = _images.build_inputs(1, 2)
    assert x.shape == (1, 3, 224, 224) and calibration.shape == (2, 3, 224, 224)
    model = efficientnet_lite0()
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(_int8.run_onnx(_int8.export_onnx(model), x), ref, rtol=1e-3, atol=1e-3)
    assert np.isinf(_int8.sqnr_db(ref, ref)) and abs(_int8.sqnr_db(ref, 0.9 * ref) - 20) < 1e-4


def test_demo_rejects_a_photo_count_it_does_not_have():
    with pytest.raises(SystemExit):
        main(["--photos", "6"])
