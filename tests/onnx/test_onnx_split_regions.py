"""ONNX Split on the channel axis as a region node: with split sizes (a constant input), with
num_outputs (opset 18; the last part smaller when the channels do not divide) and with neither
(opset < 18: equal parts). The equal forms take the channel count from the model's shapes; the
equalized model gives onnxruntime's output of the original. Without shapes the Split is declined
with a reason that says how to fix it."""

import numpy as np
import onnx
import pytest

import prequant.onnx as pqo
from pq_onnx_helpers import Builder, max_rel_err, run_ort


def _model(form: str, channels: int = 8, infer_shapes: bool = True):
    """conv-BN-ReLU (the region's source) → Split on channels → conv per part (its sinks) →
    Concat → conv."""
    b = Builder(seed=4)
    y = b.relu(b.bn(b.conv("x", 3, channels), channels))
    parts = [channels // 2 + channels % 2, channels // 2]
    outs = ["part0", "part1"]
    if form == "sizes":
        sizes = numpy_helper_int64(b, parts)
        b.node("Split", [y, sizes], outs, axis=1)
        opset = 13
    elif form == "num_outputs":
        b.node("Split", [y], outs, axis=1, num_outputs=2)
        opset = 18
    else:  # equal parts, opset 13
        b.node("Split", [y], outs, axis=1)
        opset = 13
    a = b.relu(b.conv(outs[0], parts[0], 4, name="conv_a"))
    c = b.relu(b.conv(outs[1], parts[1], 4, k=1, name="conv_b"))
    b.conv(b.node("Concat", [a, c], axis=1), 8, 3, k=1, name="head")
    inputs = {"x": (2, 3, 8, 8)}
    return b, b.model(inputs, ["head_out"], opset=opset, infer_shapes=infer_shapes), inputs


def numpy_helper_int64(b: Builder, values) -> str:
    from onnx import numpy_helper

    name = b.name("split")
    b.inits.append(numpy_helper.from_array(np.array(values, dtype=np.int64), name))
    return name


@pytest.mark.parametrize("form,channels", [("sizes", 8), ("num_outputs", 8), ("num_outputs", 7), ("equal", 8)])
def test_split_on_channels_is_a_region_node(form, channels):
    b, model, inputs = _model(form, channels)
    feeds = b.feeds(inputs, scale=2.0)
    ref = run_ort(model, feeds)
    out, result = pqo.equalize_model(model, regions=True)
    onnx.checker.check_model(out)
    regions = [(sorted(r.sources), sorted(r.sinks)) for r in result.regions.regions]
    assert (["conv1"], ["conv_a", "conv_b"]) in regions, (regions, [d.reason for d in result.regions.declined])
    assert max_rel_err(ref, run_ort(out, feeds)) < 1e-5


def test_equal_split_without_shapes_is_declined_with_the_fix():
    b, model, inputs = _model("num_outputs", infer_shapes=False)
    del model.graph.value_info[:]
    out, result = pqo.equalize_model(model, regions=True)
    assert not any("conv_a" in r.sinks for r in result.regions.regions)
    reasons = [d.reason for d in list(result.cls.declined) + list(result.regions.declined)]
    assert any("'split1' (Split)" in r and "run onnx.shape_inference.infer_shapes" in r for r in reasons), reasons
    feeds = b.feeds(inputs)
    assert max_rel_err(run_ort(model, feeds), run_ort(out, feeds)) < 1e-6
