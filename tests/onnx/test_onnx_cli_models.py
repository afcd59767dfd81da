"""`prequant equalize` / `fold` on small ONNX models built with onnx.helper: every layer kind and
activation the ONNX reader maps, with realistic batch-norm statistics (var in [1e-2, 10],
non-zero means, negative gamma). Each model is checked against onnxruntime before/after, with
onnx.checker, by its batch-norm count, and by the per-channel ranges of every scaled pair."""

import json

import numpy as np
import onnx
import pytest
from onnx import helper

from pq_onnx_helpers import (Builder, check_cls_ranges, equalize_json, max_rel_err, op_counts,
                             opaque_batch_norms, run_cli, run_ort)


def conv_chain():
    b = Builder(1)
    y = b.relu(b.bn(b.conv("x", 3, 8), 8))
    y = b.relu(b.bn(b.conv(y, 8, 16, bias=False), 16))
    y = b.conv(y, 16, 4, k=1)
    return b, {"x": [2, 3, 10, 10]}, [y], 0


def bn_then_conv():
    # BN at the graph input folds into the unpadded 1x1 conv after it (BN→conv); the second BN
    # feeds a padded conv through nothing else, and its producer is a Relu: it must stay.
    b = Builder(2)
    y = b.conv(b.bn("x", 3), 3, 8, k=1, pad=False)
    y = b.relu(y)
    y = b.conv(b.bn(y, 8), 8, 4, k=3, pad=True)
    return b, {"x": [2, 3, 9, 9]}, [y], 1


def grouped():
    b = Builder(3)
    y = b.relu(b.bn(b.conv("x", 4, 8), 8))
    y = b.relu(b.bn(b.conv(y, 8, 8, groups=2), 8))
    y = b.conv(y, 8, 6, k=1)
    return b, {"x": [2, 4, 8, 8]}, [y], 0


def depthwise_relu6():
    b = Builder(4)
    y = b.clip(b.bn(b.conv("x", 3, 8), 8))
    y = b.clip(b.bn(b.conv(y, 8, 8, groups=8), 8), constant_nodes=True)
    y = b.bn(b.conv(y, 8, 16, k=1, bias=False), 16)
    y = b.clip(y, 0.0, 6.0)
    y = b.conv(y, 16, 16, groups=16)
    return b, {"x": [2, 3, 12, 12]}, [y], 0


def conv_transpose():
    b = Builder(5)
    y = b.relu(b.bn(b.conv("x", 3, 8), 8))
    y = b.relu(b.bn(b.conv_transpose(y, 8, 6, groups=2), 6))
    y = b.conv(y, 6, 4)
    return b, {"x": [1, 3, 6, 6]}, [y], 0


def conv1d_leaky():
    b = Builder(6)
    y = b.leaky(b.bn(b.conv("x", 3, 8, rank=1), 8), 0.1)
    y = b.leaky(b.bn(b.conv(y, 8, 8, rank=1, k=5), 8), 0.2)
    y = b.conv(y, 8, 4, rank=1, k=1)
    return b, {"x": [2, 3, 20]}, [y], 0


def conv3d_prelu():
    b = Builder(7)
    y = b.prelu(b.bn(b.conv("x", 2, 6, rank=3), 6), 6, 3)
    y = b.bn(b.conv(y, 6, 4, rank=3, k=1), 4)
    return b, {"x": [1, 2, 5, 6, 7]}, [y], 0


def gemm():
    b = Builder(8)
    y = b.relu(b.bn(b.gemm("x", 16, 32, trans_b=1), 32))
    y = b.prelu(b.bn(b.gemm(y, 32, 24, trans_b=0, bias=False), 24), 0, 0)
    y = b.gemm(y, 24, 10, trans_b=1)
    return b, {"x": [4, 16]}, [y], 0


def matmul_linear():
    # nn.Linear on a 2-d input as MatMul + Add, and a MatMul without Add that gains a bias from
    # the folded batch norm (the writer adds an Add node).
    b = Builder(9)
    y = b.relu(b.bn(b.linear_matmul("x", 16, 32), 32))
    y = b.bn(b.linear_matmul(y, 32, 8, add=False), 8)
    y = b.linear_matmul(b.relu(y), 8, 5)
    return b, {"x": [4, 16]}, [y], 0


def matmul_rank3():
    # nn.Linear on a rank-3 input: channels on the last axis. The BN normalizes axis 1, which
    # here has the same length (8) as the MatMul's output channels — it must not be folded.
    b = Builder(10)
    y = b.relu(b.linear_matmul("x", 16, 32))
    y = b.linear_matmul(y, 32, 8)
    y = b.bn(y, 8)
    return b, {"x": [2, 8, 16]}, [y], 1


def padded():
    b = Builder(11)
    y = b.relu(b.bn(b.conv("x", 3, 8), 8))
    y = b.pad(y, [0, 0, 1, 2, 0, 0, 2, 1])
    y = b.relu(b.bn(b.conv(y, 8, 8, pad=False), 8))
    y = b.pad(y, [0, 0, 1, 1, 0, 0, 1, 1], mode="reflect")  # not zero padding: opaque
    y = b.conv(y, 8, 4, pad=False)
    return b, {"x": [1, 3, 8, 8]}, [y], 0


def shared_weight():
    b = Builder(12)
    y = b.relu(b.bn(b.conv("x", 3, 8), 8))
    y = b.relu(b.bn(b.conv(y, 8, 8, bias=False, name="conv_a"), 8))
    shared = next(n for n in b.nodes if n.name == "conv_a").input[1]
    y = b.relu(b.bn(b.node("Conv", [y, shared], name="conv_b", pads=[1, 1, 1, 1]), 8))
    y = b.conv(y, 8, 4, k=1)
    return b, {"x": [1, 3, 8, 8]}, [y], 0


def passthrough():
    # An op the engine does not model and a custom-domain op must pass through untouched.
    b = Builder(13)
    y = b.relu(b.bn(b.conv("x", 3, 8), 8))
    y = b.node("Softsign", [y], name="unknown_op")
    y = b.bn(b.conv(y, 8, 8), 8)
    y = b.node("Gelu", [y], name="custom_gelu", domain="com.microsoft")
    y = b.relu(b.bn(b.conv(y, 8, 8), 8))
    y = b.conv(y, 8, 4, k=1)
    return b, {"x": [1, 3, 8, 8]}, [y], 0


def double_precision():
    # float64 weights stay float64 (onnxruntime has no float64 Conv on CPU: use Gemm).
    b = Builder(14, dtype=np.float64)
    y = b.clip(b.bn(b.gemm("x", 12, 16), 16))
    y = b.bn(b.gemm(y, 16, 6, trans_b=0), 6)
    return b, {"x": [3, 12]}, [y], 0


MODELS = {f.__name__: f for f in [conv_chain, bn_then_conv, grouped, depthwise_relu6, conv_transpose,
                                   conv1d_leaky, conv3d_prelu, gemm, matmul_linear, matmul_rank3,
                                   padded, shared_weight, passthrough, double_precision]}


def build(name):
    b, inputs, outputs, bn_after = MODELS[name]()
    extra = [("com.microsoft", 1)] if name == "passthrough" else []
    model = b.model(inputs, outputs, extra_opsets=extra)
    if name == "passthrough":
        model.metadata_props.add(key="owner", value="prequant-tests")
        model.doc_string = "kept"
    return model, b.feeds(inputs), bn_after


# The default criterion (weights_and_activations) and DFQ's ("weights") both keep the outputs;
# only DFQ's balances the weight ranges exactly, which check_cls_ranges asserts.
@pytest.mark.parametrize("criterion", ["default", "weights"])
@pytest.mark.parametrize("name", list(MODELS))
def test_equalize_bound_keeps_outputs(cli, tmp_path, name, criterion):
    model, feeds, bn_after = build(name)
    src, dst = tmp_path / "in.onnx", tmp_path / "out.onnx"
    onnx.save(model, src)
    assert op_counts(model)["BatchNormalization"] > 0
    extra = [] if criterion == "default" else ["--scale-criterion", criterion]
    result = equalize_json(cli, src, dst, "--relu6", "bound", "--no-high-bias", *extra)
    out = onnx.load(dst)
    onnx.checker.check_model(out, full_check=True)
    counts = op_counts(out)
    assert counts["BatchNormalization"] == bn_after
    assert counts["BatchNormalization"] == len(result["fold"]["declined"]) + opaque_batch_norms(cli, src)
    assert max_rel_err(run_ort(src, feeds), run_ort(dst, feeds)) < 1e-4
    if criterion == "weights":
        check_cls_ranges(out, result["cls"])
    # every layer that starts no CLS set is listed with a reason
    assert result["cls"]["declined"], "the last layer at least must be declined (graph output)"
    assert all(d["reason"] for d in result["declined"])


@pytest.mark.parametrize("name", ["conv_chain", "depthwise_relu6", "gemm", "conv3d_prelu"])
def test_equalize_scales_pairs(cli, tmp_path, name):
    model, feeds, _ = build(name)
    src, dst = tmp_path / "in.onnx", tmp_path / "out.onnx"
    onnx.save(model, src)
    result = equalize_json(cli, src, dst, "--no-high-bias", "--scale-criterion", "weights")  # DFQ's balance
    assert check_cls_ranges(onnx.load(dst), result["cls"]) >= 1
    scales = [s for st in result["cls"]["sets"] for p in st["pairs"] for s in p["scale"]]
    assert max(abs(np.log(s)) for s in scales) > 0.1, "CLS should have rescaled something"


def test_depthwise_triple_and_bounds(cli, tmp_path):
    model, feeds, _ = build("depthwise_relu6")
    src, dst = tmp_path / "in.onnx", tmp_path / "out.onnx"
    onnx.save(model, src)
    result = equalize_json(cli, src, dst, "--relu6", "bound", "--no-high-bias")
    layers = [s["layers"] for s in result["cls"]["sets"]]
    assert ["conv1", "conv2", "conv3"] in layers  # conv -> depthwise -> conv
    out = onnx.load(dst)
    counts = op_counts(out)
    # Each bounded ReLU6 is Clip(0, 6) — what quantizers fuse into the conv before it — then a
    # per-channel Min with every bound <= 6 (the engine's gauge), not Relu then Min.
    assert counts["Clip"] == 3 and counts["Min"] == 3 and counts["Relu"] == 0 and counts["Constant"] == 0
    init = {t.name: onnx.numpy_helper.to_array(t) for t in out.graph.initializer}
    producer = {o: n for n in out.graph.node for o in n.output}
    for n in out.graph.node:
        if n.op_type == "Min":
            assert list(init[n.input[1]].shape)[1:] == [1, 1]
            clip = producer[n.input[0]]
            assert clip.op_type == "Clip" and float(init[clip.input[1]]) == 0.0 and float(init[clip.input[2]]) == 6.0
            assert producer[clip.input[0]].op_type == "Conv"
            bounds = init[n.input[1]]
            assert bounds.max() <= 6.0 * (1 + 1e-6) and bounds.max() >= 6.0 * (1 - 1e-6)
    for scaled in result["cls"]["activation_edits"]:
        assert scaled["clip_max"] == 6.0 and max(scaled["upper_bound"]) <= 6.0 * (1 + 1e-12)
    assert max_rel_err(run_ort(src, feeds), run_ort(dst, feeds)) < 1e-4  # onnxruntime: Clip, then Min


def test_relu6_replace_and_skip(cli, tmp_path):
    model, feeds, _ = build("depthwise_relu6")
    src = tmp_path / "in.onnx"
    onnx.save(model, src)
    replaced = equalize_json(cli, src, tmp_path / "r.onnx", "--relu6", "replace")
    # 'replace' swaps the clips between the layers it scales, reported with the CLS result
    assert len(replaced["cls"]["activation_edits"]) == 3 and not replaced["activations"]["edits"]
    assert op_counts(onnx.load(tmp_path / "r.onnx"))["Clip"] == 0
    skipped = equalize_json(cli, src, tmp_path / "s.onnx", "--relu6", "skip", "--no-high-bias")
    assert op_counts(onnx.load(tmp_path / "s.onnx"))["Clip"] == 3
    assert any("skip" in d["reason"] for d in skipped["cls"]["declined"])
    assert max_rel_err(run_ort(src, feeds), run_ort(tmp_path / "s.onnx", feeds)) < 1e-4


def test_matmul_gains_bias_add(cli, tmp_path):
    model, feeds, _ = build("matmul_linear")
    src, dst = tmp_path / "in.onnx", tmp_path / "out.onnx"
    onnx.save(model, src)
    run_cli(cli, "fold", src, "-o", dst)
    out = onnx.load(dst)
    counts = op_counts(out)
    assert counts["BatchNormalization"] == 0
    assert counts["MatMul"] == 3 and counts["Add"] == 3
    assert max_rel_err(run_ort(src, feeds), run_ort(dst, feeds)) < 1e-5


def test_shared_weight_is_unrolled(cli, tmp_path):
    model, feeds, _ = build("shared_weight")
    src, dst = tmp_path / "in.onnx", tmp_path / "out.onnx"
    onnx.save(model, src)
    proc = run_cli(cli, "fold", src, "-o", dst, "--json")
    result = json.loads(proc.stdout)
    assert len(result["unroll"]["copies"]) == 1
    out = onnx.load(dst)
    convs = [n for n in out.graph.node if n.op_type == "Conv"]
    assert len({n.input[1] for n in convs}) == len(convs)
    assert max_rel_err(run_ort(src, feeds), run_ort(dst, feeds)) < 1e-5


def test_passthrough_untouched(cli, tmp_path):
    model, feeds, _ = build("passthrough")
    src, dst = tmp_path / "in.onnx", tmp_path / "out.onnx"
    onnx.save(model, src)
    run_cli(cli, "equalize", src, "-o", dst)
    out = onnx.load(dst)
    by_name = {n.name: n for n in out.graph.node}
    assert by_name["unknown_op"].op_type == "Softsign"
    assert by_name["custom_gelu"].domain == "com.microsoft"
    assert {(o.domain, o.version) for o in out.opset_import} == {("", 17), ("com.microsoft", 1)}
    assert {(p.key, p.value) for p in out.metadata_props} == {("owner", "prequant-tests")}
    assert out.doc_string == "kept"
    produced = {o for n in out.graph.node for o in n.output} | {i.name for i in out.graph.input}
    assert all(v.name in produced for v in out.graph.value_info), "stale value_info left behind"
    # default run (no high-bias absorption): outputs must stay sane
    assert np.all(np.isfinite(run_ort(dst, feeds)[0]))


def test_high_bias_absorption_exact_when_activations_stay_above(cli, tmp_path):
    # conv -> BN -> ReLU -> 1x1 conv, BN mean 0 and inputs so small that every pre-activation
    # sits at the BN's beta, above beta - 3|gamma|: absorption then preserves the output.
    b = Builder(21)
    y = b.conv("x", 3, 8, k=1, pad=False, bias=False)
    c = 8
    ins = [y, b.init("gamma", b.rng.uniform(0.5, 1.5, c) * np.array([1, -1] * 4)),
           b.init("beta", np.array([5.0, -1.0, 4.0, 0.5, 6.0, 2.0, -3.0, 7.0])),
           b.init("mean", np.zeros(c)), b.init("var", np.exp(b.rng.uniform(np.log(1e-2), np.log(10.0), c)))]
    y = b.relu(b.node("BatchNormalization", ins, name="bn_hb"))
    y = b.bn(b.conv(y, 8, 6, k=1, pad=False), 6)
    inputs = {"x": [1, 3, 5, 5]}
    model = b.model(inputs, [y])
    src, dst = tmp_path / "in.onnx", tmp_path / "out.onnx"
    onnx.save(model, src)
    result = equalize_json(cli, src, dst, "--high-bias")
    absorbed = result["high_bias"]["absorbed"]
    assert absorbed and sum(a > 0 for a in absorbed[0]["amount"]) >= 3
    feeds = b.feeds(inputs, scale=1e-4)
    assert max_rel_err(run_ort(src, feeds), run_ort(dst, feeds)) < 1e-4


def test_explain_and_json_mention_declined(cli, tmp_path):
    model, _, _ = build("bn_then_conv")
    src = tmp_path / "in.onnx"
    onnx.save(model, src)
    text = run_cli(cli, "equalize", src, "-o", tmp_path / "o.onnx", "--explain").stdout
    assert "declined" in text and "pads its input" in text
    proc = run_cli(cli, "equalize", src, "-o", tmp_path / "o2.onnx", "--json", "--explain")
    result = json.loads(proc.stdout)  # stdout is pure JSON even with --explain
    assert "declined" in proc.stderr
    reasons = [d["reason"] for d in result["declined"]]
    assert any("pads its input" in r for r in reasons)
    fold = json.loads(run_cli(cli, "fold", src, "-o", tmp_path / "o3.onnx", "--json").stdout)
    assert len(fold["fold"]["folded"]) == 1 and len(fold["fold"]["declined"]) == 1
    info = json.loads(run_cli(cli, "inspect", src, "--json").stdout)
    assert info["kinds"]["BatchNorm"] == 2 and info["layers"]["conv"] == 2
    assert run_cli(cli, "inspect", src).stdout.count("declined") >= 1


def test_inspect_reports_opaque_reasons(cli, tmp_path):
    model, _, _ = build("matmul_rank3")
    src = tmp_path / "in.onnx"
    onnx.save(model, src)
    info = json.loads(run_cli(cli, "inspect", src, "--json").stdout)
    reasons = [o["reason"] for o in info["opaque"] if o["reason"]]
    assert any("last axis" in r for r in reasons), reasons


def test_nothing_to_do(cli, tmp_path):
    b = Builder(30)
    y = b.conv("x", 3, 4)
    model = b.model({"x": [1, 3, 5, 5]}, [y])
    src, dst = tmp_path / "in.onnx", tmp_path / "out.onnx"
    onnx.save(model, src)
    proc = run_cli(cli, "equalize", src, "-o", dst)
    assert "nothing to do" in proc.stdout
    assert dst.exists()
    proc = run_cli(cli, "fold", src, "-o", dst, "--json")
    assert json.loads(proc.stdout)["nothing_to_do"] is True
    assert "nothing to do" in proc.stderr


def test_pools_clip_without_max_and_same_padding(cli, tmp_path):
    b = Builder(40)
    y = b.bn(b.conv("x", 3, 8), 8)
    y = b.node("Clip", [y, b.init("lo", np.array(0.0))])  # Clip(0, inf): a ReLU
    y = b.node("MaxPool", [y], kernel_shape=[2, 2], strides=[2, 2])
    w = b.init("w", b.weight((8, 8, 3, 3), 72))
    y = b.relu(b.bn(b.node("Conv", [y, w], name="conv_same", auto_pad="SAME_UPPER"), 8))
    y = b.node("AveragePool", [y], kernel_shape=[3, 3], pads=[1, 1, 1, 1], count_include_pad=1)
    y = b.conv(y, 8, 4, k=1)
    inputs = {"x": [1, 3, 8, 8]}
    model = b.model(inputs, [y])
    src, dst = tmp_path / "in.onnx", tmp_path / "out.onnx"
    onnx.save(model, src)
    result = equalize_json(cli, src, dst, "--no-high-bias", "--scale-criterion", "weights")  # DFQ's balance
    assert [s["layers"] for s in result["cls"]["sets"]] == [["conv1", "conv_same"], ["conv_same", "conv2"]]
    out = onnx.load(dst)
    onnx.checker.check_model(out, full_check=True)
    assert op_counts(out)["BatchNormalization"] == 0
    feeds = b.feeds(inputs)
    assert max_rel_err(run_ort(src, feeds), run_ort(dst, feeds)) < 1e-4
    check_cls_ranges(out, result["cls"])


def test_pad_with_axes_opset18(cli, tmp_path):
    b = Builder(41)
    y = b.relu(b.bn(b.conv("x", 3, 8), 8))
    pads = onnx.numpy_helper.from_array(np.array([1, 2, 2, 1], np.int64), "pads_ax")
    axes = onnx.numpy_helper.from_array(np.array([-2, -1], np.int64), "axes_ax")
    b.inits += [pads, axes]
    y = b.node("Pad", [y, "pads_ax", "", "axes_ax"], mode="constant")
    y = b.conv(y, 8, 4, pad=False)
    inputs = {"x": [1, 3, 6, 6]}
    model = b.model(inputs, [y], opset=18)
    src, dst = tmp_path / "in.onnx", tmp_path / "out.onnx"
    onnx.save(model, src)
    result = equalize_json(cli, src, dst, "--no-high-bias")
    assert [s["layers"] for s in result["cls"]["sets"]] == [["conv1", "conv2"]]
    feeds = b.feeds(inputs)
    assert max_rel_err(run_ort(src, feeds), run_ort(dst, feeds)) < 1e-4


def test_subgraph_reads_keep_batch_norm(cli, tmp_path):
    # An If branch reads conv1's output from the enclosing graph: folding bn1 into conv1 would
    # change what the branch sees, so bn1 must stay.
    b = Builder(42)
    c1 = b.conv("x", 3, 8, name="conv1")
    r1 = b.relu(b.bn(c1, 8, name="bn1"))
    then_g = helper.make_graph([helper.make_node("Relu", [c1], ["t_out"])], "then", [],
                               [helper.make_tensor_value_info("t_out", onnx.TensorProto.FLOAT, None)])
    else_g = helper.make_graph([helper.make_node("Sigmoid", [c1], ["e_out"])], "else", [],
                               [helper.make_tensor_value_info("e_out", onnx.TensorProto.FLOAT, None)])
    branch = b.node("If", ["cond"], name="branch", then_branch=then_g, else_branch=else_g)
    y = b.node("Add", [r1, branch])
    y = b.relu(b.bn(b.conv(y, 8, 8, name="conv2"), 8, name="bn2"))
    y = b.conv(y, 8, 4, k=1, name="conv3")
    g = helper.make_graph(b.nodes, "t",
                          [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 3, 6, 6]),
                           helper.make_tensor_value_info("cond", onnx.TensorProto.BOOL, [])],
                          [helper.make_tensor_value_info(y, onnx.TensorProto.FLOAT, [1, 4, 6, 6])],
                          b.inits)
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    src, dst = tmp_path / "in.onnx", tmp_path / "out.onnx"
    onnx.save(model, src)
    result = equalize_json(cli, src, dst, "--no-high-bias")
    assert [f["bn"] for f in result["fold"]["folded"]] == ["bn2"]
    assert any("branch" in d["reason"] for d in result["fold"]["declined"])
    onnx.checker.check_model(onnx.load(dst))
    for cond in (True, False):
        feeds = {"x": b.feeds({"x": [1, 3, 6, 6]})["x"], "cond": np.array(cond)}
        assert max_rel_err(run_ort(src, feeds), run_ort(dst, feeds)) < 1e-4


def test_unsorted_nodes_and_initializers_as_inputs(cli, tmp_path):
    model, feeds, _ = build("conv_chain")
    nodes = list(model.graph.node)[::-1]
    del model.graph.node[:]
    model.graph.node.extend(nodes)  # not topologically sorted (onnxruntime sorts on load)
    for t in model.graph.initializer:  # IR-3 style: every initializer is also a graph input
        model.graph.input.append(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
    src, dst = tmp_path / "in.onnx", tmp_path / "out.onnx"
    onnx.save(model, src)
    result = equalize_json(cli, src, dst, "--no-high-bias")
    assert len(result["fold"]["folded"]) == 2 and len(result["cls"]["sets"]) == 2
    out = onnx.load(dst)
    assert op_counts(out)["BatchNormalization"] == 0
    assert max_rel_err(run_ort(src, feeds), run_ort(dst, feeds)) < 1e-4
