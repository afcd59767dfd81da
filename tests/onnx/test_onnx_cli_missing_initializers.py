"""The `prequant` tool on layers whose weights are not initializers.

Before: a model conv→BN→ReLU→conv→BN whose first conv's weight is (a) a graph input, (b) a
        Constant node's output or a DequantizeLinear's (an already quantized model), or (c) a
        name nothing defines.
After:  (a), (b): the first conv is skipped — `inspect` and `equalize --explain` print why (the
        tensor, where it comes from, what to do) — its BN stays, the second BN is folded, and the
        written model computes what the input did (onnxruntime, 1e-4). (c): one error line naming
        the node and the missing tensor; nothing written.
"""

from __future__ import annotations

import json
import re

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import prequant
import prequant.onnx

from pq_onnx_helpers import IR_VERSION, Builder, max_rel_err, op_counts, run_cli, run_ort

X_SHAPE = [1, 3, 8, 8]
W_SHAPE = [6, 3, 3, 3]


def _model(source: str):
    """(model, feeds, reason words) with the first conv's weight coming from `source`."""
    b = Builder(seed=21)
    w = b.weight(W_SHAPE, 27).astype(np.float32)
    inputs = {"x": X_SHAPE}
    words = ["conv1", "weight 'W'"]
    if source == "graph_input":
        inputs["W"] = W_SHAPE
        words += ["graph input", "export_params"]
    elif source == "constant":
        b.node("Constant", [], ["W"], name="w_const", value=numpy_helper.from_array(w))
        words += ["Constant node 'w_const'", "initializer"]
    elif source == "dequantize":
        scale = np.float32(np.abs(w).max() / 127)
        b.inits += [numpy_helper.from_array(np.round(w / scale).astype(np.int8), "Wq"),
                    numpy_helper.from_array(np.array(scale, np.float32), "Ws")]
        b.node("DequantizeLinear", ["Wq", "Ws"], ["W"], name="dq")
        words += ["DequantizeLinear node 'dq'", "already quantized"]
    h = b.node("Conv", ["x", "W", b.init("b", b.rng.normal(0, 0.2, 6))], name="conv1", pads=[1, 1, 1, 1])
    h = b.relu(b.bn(h, 6, name="bn1"))
    h = b.bn(b.conv(h, 6, 4, name="conv2"), 4, name="bn2")
    model = b.model(inputs, [h])
    feeds = b.feeds({"x": X_SHAPE})
    if source == "graph_input":
        feeds["W"] = w
    return model, feeds, words


@pytest.mark.parametrize("source", ["graph_input", "constant", "dequantize"])
def test_layer_without_initializer_is_skipped_with_its_reason(cli, tmp_path, source):
    model, feeds, words = _model(source)
    src, dst = tmp_path / "m.onnx", tmp_path / "o.onnx"
    onnx.save(model, src)

    info = json.loads(run_cli(cli, "inspect", src, "--json").stdout)
    conv1 = [o for o in info["opaque"] if o["name"] == "conv1"]
    assert len(conv1) == 1 and all(w in conv1[0]["reason"] for w in words), conv1
    text = run_cli(cli, "inspect", src, "--explain").stdout
    assert all(w in text for w in words), text

    proc = run_cli(cli, "equalize", src, "-o", dst, "--explain")
    skipped = proc.stdout.split("Opaque nodes")[1]
    assert all(w in skipped for w in words), proc.stdout
    out = onnx.load(dst)
    assert [n.name for n in out.graph.node if n.op_type == "BatchNormalization"] == ["bn1"]
    conv = next(n for n in out.graph.node if n.name == "conv1")
    assert conv.input[1] == "W"  # the skipped conv still reads its weight as it was
    assert op_counts(out)["Conv"] == 2
    assert max_rel_err(run_ort(src, feeds), run_ort(dst, feeds)) < 1e-4


def test_dangling_weight_is_a_one_line_error(cli, tmp_path):
    b = Builder(seed=22)
    h = b.node("Conv", ["x", "W_missing"], name="conv1")
    h = b.bn(h, 6, name="bn1")
    g = helper.make_graph(b.nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, X_SHAPE)],
                          [helper.make_tensor_value_info(h, TensorProto.FLOAT, None)], b.inits)
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = IR_VERSION
    with pytest.raises(onnx.checker.ValidationError):  # the model really is broken
        onnx.checker.check_model(model)
    src, dst = tmp_path / "m.onnx", tmp_path / "o.onnx"
    onnx.save(model, src)
    for cmd in (["inspect", src], ["equalize", src, "-o", dst]):
        proc = run_cli(cli, *cmd, expect_ok=False)
        assert proc.returncode == 1
        assert re.match(r"^prequant: error: \S.*\n$", proc.stderr), proc.stderr
        for w in ("Conv node 'conv1'", "'W_missing'", "missing initializer"):
            assert w in proc.stderr, proc.stderr
    assert not dst.exists()
    # the same typed error from Python, with the node named
    with pytest.raises(prequant.ModelFormatError, match="W_missing") as e:
        prequant.onnx.equalize_model(model)
    assert e.value.node == "conv1"
