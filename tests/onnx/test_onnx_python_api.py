"""prequant.onnx: the same passes as the tool, on ModelProto / bytes / paths, input untouched."""

from __future__ import annotations

import onnx
import pytest

import prequant
from prequant.onnx import equalize_model, fold_all_batch_norms
from pq_onnx_helpers import Builder, max_rel_err, op_counts, run_ort


def _model():
    b = Builder(seed=3)
    x = "x"
    h = b.bn(b.conv(x, 3, 8, pad=False), 8)
    h = b.clip(h)
    h = b.bn(b.conv(h, 8, 8, k=3, groups=8, pad=False), 8)
    h = b.clip(h)
    h = b.bn(b.conv(h, 8, 6, k=1, pad=False), 6)
    return b, b.model({"x": [1, 3, 12, 12]}, [h])


def test_equalize_model_matches_original_and_leaves_input_alone():
    b, model = _model()
    before = model.SerializeToString()
    feeds = b.feeds({"x": [1, 3, 12, 12]})
    out, result = equalize_model(model, relu6="bound", absorb_high_bias=False)
    assert model.SerializeToString() == before
    onnx.checker.check_model(out)
    assert op_counts(out)["BatchNormalization"] == 0
    assert [s.layers for s in result.cls.sets] and "fold" in result.explain().lower()
    assert max_rel_err(run_ort(out, feeds), run_ort(model, feeds)) < 1e-4


def test_fold_from_bytes_and_path(tmp_path):
    b, model = _model()
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    from_path, r1 = fold_all_batch_norms(path)
    from_bytes, r2 = fold_all_batch_norms(model.SerializeToString())
    assert len(r1.folded) == len(r2.folded) == 3
    assert from_path.SerializeToString() == from_bytes.SerializeToString()


def test_bad_input_is_a_typed_error():
    with pytest.raises(prequant.ModelFormatError):
        equalize_model(b"\x08\x07not an onnx model")
    with pytest.raises(TypeError):
        equalize_model(3.5)



def test_equalize_model_bias_correction_changes_biases_on_purpose():
    b, model = _model()
    feeds = b.feeds({"x": [1, 3, 12, 12]})
    plain, _ = equalize_model(model)
    out, result = equalize_model(model, bias_correction=True, bias_correction_bits=6)
    onnx.checker.check_model(out)
    bc = result.bias_correction
    assert bc.changes_fp32_output and len(bc.corrected) == 2  # the depthwise and the last conv
    assert "graph input" in bc.declined[0].reason
    assert result.to_dict()["bias_correction"]["changes_fp32_output"] is True
    assert max_rel_err(run_ort(out, feeds), run_ort(plain, feeds)) > 1e-6
    _, default = equalize_model(model)
    assert not default.bias_correction.corrected and not default.bias_correction.declined
