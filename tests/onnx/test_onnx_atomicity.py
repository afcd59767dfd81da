"""prequant.onnx: a transform that fails midway changes nothing.

Before: conv→BN→ReLU→depthwise→BN→Clip(0, 6)→conv→BN, then a Gemm pair, with random BN
        statistics; the n-th engine parameter write made to fail (``_core._set_fail_after_writes``).
After:  the typed error is raised; the ModelProto given (or the file given) is byte for byte
        what it was, and the engine's own OnnxModel serializes to the same bytes as before the
        failed pass (its graph and weight buffers were rolled back). With n past the last write
        the transform runs clean and matches onnxruntime on the original within 1e-4.
"""

from __future__ import annotations

import onnx
import pytest

from prequant import _core
from prequant.onnx import equalize_model, fold_all_batch_norms, load
from pq_onnx_helpers import Builder, max_rel_err, op_counts, run_ort

INPUTS = {"x": [2, 3, 8, 8]}
MAX_WRITES = 2000


def _model():
    b = Builder(seed=11)
    h = b.relu(b.bn(b.conv("x", 3, 8, bias=False), 8))
    h = b.clip(b.bn(b.conv(h, 8, 8, groups=8), 8))
    h = b.bn(b.conv(h, 8, 12, k=1), 12)
    h = b.node("Flatten", [b.node("GlobalAveragePool", [h])])
    h = b.gemm(b.relu(b.gemm(h, 12, 16)), 16, 5)
    return b, b.model(INPUTS, [h])


def _with_relu6_replaced(model):
    """The original function under the 'replace' policy: every Clip a Relu."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    for n in m.graph.node:
        if n.op_type == "Clip":
            n.op_type = "Relu"
            del n.input[1:]
    return m


def _fail_at_every_write(transform):
    """transform() with the n-th write failing, n = 0, 1, ... until it runs clean; returns what the
    clean run returned. `transform` checks what must be unchanged itself after each failure."""
    try:
        for n in range(MAX_WRITES):
            _core._set_fail_after_writes(n)
            try:
                out = transform()
                writes = _core._writes_seen()
            except _core.Error as e:
                assert "injected failure" in str(e), e
                continue
            finally:
                _core._set_fail_after_writes(-1)
            assert writes == n > 0, f"ran clean with {writes} writes when failing at write {n}"
            return out
    finally:
        _core._set_fail_after_writes(-1)
    raise AssertionError(f"the transform still failed after {MAX_WRITES} writes")


@pytest.mark.parametrize("transform, replaced, tolerance", [
    (lambda m: fold_all_batch_norms(m), False, 1e-4),
    (lambda m: equalize_model(m, relu6="bound", absorb_high_bias=False), False, 1e-4),
    (lambda m: equalize_model(m, relu6="replace"), True, 5e-2),  # the 3σ rule is approximate
], ids=["fold", "equalize_bound", "equalize_replace"])
def test_front_end_leaves_model_proto_alone(transform, replaced, tolerance):
    b, model = _model()
    before = model.SerializeToString()

    def run():
        try:
            return transform(model)
        finally:
            assert model.SerializeToString() == before

    out, _ = _fail_at_every_write(run)
    assert op_counts(out)["BatchNormalization"] == 0
    feeds = b.feeds(INPUTS)
    reference = _with_relu6_replaced(model) if replaced else model
    assert max_rel_err(run_ort(out, feeds), run_ort(reference, feeds)) < tolerance


@pytest.mark.parametrize("policy", ["bound", "replace"])
def test_engine_model_is_rolled_back(policy, tmp_path):
    """The engine's OnnxModel after a failed pass writes the same bytes as before it: nothing of
    a partial fold or scaling (weights, removed BNs, added biases, swapped Clips) leaks out."""
    b, model = _model()
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    on_disk = path.read_bytes()
    m = load(path)
    before = m.to_bytes()

    def run():
        try:
            return _core.equalize_model(m.graph, relu6=policy)
        except _core.Error:
            assert m.to_bytes() == before
            raise

    result = _fail_at_every_write(run)
    assert result.fold.folded and result.cls.sets
    assert path.read_bytes() == on_disk
    out = onnx.load_from_string(m.to_bytes())
    assert op_counts(out)["BatchNormalization"] == 0
    feeds = b.feeds(INPUTS)
    reference = _with_relu6_replaced(model) if policy == "replace" else model
    # high-bias absorption (the 3σ rule) changes the FP32 function a little
    assert max_rel_err(run_ort(out, feeds), run_ort(reference, feeds)) < 5e-2
