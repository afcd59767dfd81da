"""Issue 11, engine side, through the ONNX reader: pools carry their padding; messages that say
what is true (a model of another domain is not "damaged"; newer opsets point to the converter).

Before: onnx.helper models, BN statistics random (var in [1e-2, 10], non-zero mean, negative γ).
After:  an AveragePool counting its pads blocks high-bias absorption with a reason, a MaxPool or
        an AveragePool without counted pads lets it through exactly (checked with onnxruntime).
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import prequant
from prequant.onnx import equalize_model
from pq_onnx_helpers import max_rel_err, run_ort


def conv_bn_pool_conv(pool: onnx.NodeProto, opset: int = 17) -> onnx.ModelProto:
    """x → c1 (1x1) → bn → pool → c2 (1x1): nothing ReLU-like between, so c = β' moves whole."""
    rng = np.random.default_rng(7)
    inits = [
        numpy_helper.from_array(rng.normal(size=(6, 3, 1, 1)).astype("float32"), "w1"),
        numpy_helper.from_array(rng.normal(size=6).astype("float32"), "b1"),
        numpy_helper.from_array(rng.normal(size=6).astype("float32"), "gamma"),
        numpy_helper.from_array(rng.normal(size=6).astype("float32") * 3, "beta"),
        numpy_helper.from_array(rng.normal(size=6).astype("float32"), "mean"),
        numpy_helper.from_array(np.exp(rng.uniform(np.log(1e-2), np.log(10), 6)).astype("float32"), "var"),
        numpy_helper.from_array(rng.normal(size=(4, 6, 1, 1)).astype("float32"), "w2"),
        numpy_helper.from_array(rng.normal(size=4).astype("float32"), "b2"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["y1"], name="c1"),
        helper.make_node("BatchNormalization", ["y1", "gamma", "beta", "mean", "var"], ["z"], name="bn"),
        pool,
        helper.make_node("Conv", ["p", "w2", "b2"], ["out"], name="c2"),
    ]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 7, 7])],
                          [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])


@pytest.mark.parametrize("attrs, op, absorbed", [
    (dict(kernel_shape=[3, 3], pads=[1, 1, 1, 1], count_include_pad=1), "AveragePool", False),
    (dict(kernel_shape=[3, 3], auto_pad="SAME_UPPER", count_include_pad=1), "AveragePool", False),
    (dict(kernel_shape=[3, 3], pads=[1, 1, 1, 1]), "AveragePool", True),  # count_include_pad = 0
    (dict(kernel_shape=[3, 3], pads=[1, 1, 1, 1]), "MaxPool", True),
])
def test_high_bias_through_a_padded_pool(attrs, op, absorbed):
    model = conv_bn_pool_conv(helper.make_node(op, ["z"], ["p"], name="pool", **attrs))
    x = np.random.default_rng(1).normal(size=(2, 3, 7, 7)).astype("float32")
    ref = run_ort(model, {"x": x})
    new, result = equalize_model(model, absorb_high_bias=True)
    if absorbed:
        assert len(result.high_bias.absorbed) == 1, result.explain()
    else:
        assert not result.high_bias.absorbed
        assert any("counts its padded zeros" in d.reason for d in result.high_bias.declined), result.explain()
    assert max_rel_err(run_ort(new, {"x": x}), ref) < 1e-5  # exact either way


def test_a_model_of_another_domain_only_is_not_called_damaged():
    g = helper.make_graph([helper.make_node("Binarizer", ["x"], ["y"], domain="ai.onnx.ml")], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("ai.onnx.ml", 3)])
    with pytest.raises(prequant.UnsupportedError) as e:
        equalize_model(model)
    assert "ai.onnx.ml 3" in str(e.value) and "damaged" not in str(e.value) and "truncated" not in str(e.value)


def test_a_newer_opset_points_to_the_version_converter_and_the_call_works():
    model = conv_bn_pool_conv(helper.make_node("MaxPool", ["z"], ["p"], kernel_shape=[2, 2]), opset=22)
    with pytest.raises(prequant.UnsupportedError, match=r"onnx\.version_converter\.convert_version"):
        equalize_model(model)
    converted = onnx.version_converter.convert_version(model, 20)
    _, result = equalize_model(converted)
    assert result.fold.folded and result.cls.sets


def test_cli_refuses_zero_iterations(cli, tmp_path):  # CLI11's range check, then the engine's
    from pq_onnx_helpers import run_cli
    src = tmp_path / "m.onnx"
    onnx.save(conv_bn_pool_conv(helper.make_node("MaxPool", ["z"], ["p"], kernel_shape=[2, 2])), src)
    proc = run_cli(cli, "equalize", str(src), "-o", str(tmp_path / "o.onnx"), "--iterations", "0", expect_ok=False)
    assert proc.returncode != 0 and "--iterations" in proc.stderr and "1" in proc.stderr, proc.stderr
