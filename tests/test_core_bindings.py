"""prequant._core: graphs built from numpy arrays, passes run in place, results, errors.

Numerics use numpy only: a small interpreter runs the engine's graph (the live nodes, through
Graph.nodes() and Graph.parameter()) on NCHW inputs, so a model's function can be compared
before and after a pass. Batch-norm statistics are realistic: var in [1e-2, 10], non-zero
means, negative gammas.
"""

import gc
import json
import pickle
import threading
import weakref

import numpy as np
import pytest

import prequant
from prequant import _core

# ---------------------------------------------------------------------------------------------
# A numpy interpreter for the engine's graph (torch layout: weight (O, I/g, k...), NCHW)


def _conv(x, w, b, groups):
    """Valid (unpadded), stride-1 convolution of x (N, C, *spatial) with w (O, C/g, *k)."""
    spatial = w.ndim - 2
    if spatial == 0:  # linear
        y = x @ w.T
        return y if b is None else y + b
    windows = np.lib.stride_tricks.sliding_window_view(
        x, w.shape[2:], axis=tuple(range(2, 2 + spatial))
    )
    o, ig = w.shape[:2]
    og = o // groups
    letters = "ijk"[:spatial]
    spec = f"nc{'hwd'[:spatial]}{letters},oc{letters}->no{'hwd'[:spatial]}"
    parts = [
        np.einsum(spec, windows[:, g * ig : (g + 1) * ig], w[g * og : (g + 1) * og])
        for g in range(groups)
    ]
    y = np.concatenate(parts, axis=1)
    if b is not None:
        y = y + b.reshape((1, -1) + (1,) * spatial)
    return y


def _channel(v, x):
    return np.asarray(v, dtype=np.float64).reshape((1, -1) + (1,) * (x.ndim - 2))


def run(graph, x):
    """Runs the live nodes of `graph` on x (float64) and returns the graph outputs."""
    env = {graph.graph_inputs[0]: np.asarray(x, dtype=np.float64)}
    for node in graph.nodes():
        inp = env[node.inputs[0]]
        if node.kind in ("conv", "linear"):
            w = graph.parameter(node.name, "weight").astype(np.float64)
            b = graph.parameter(node.name, "bias").astype(np.float64) if node.has_bias else None
            y = _conv(inp, w, b, node.layout.groups)
        elif node.kind == "batch_norm":
            p = {r: graph.parameter(node.name, r).astype(np.float64) for r in ("gamma", "beta", "mean", "var")}
            y = _channel(p["gamma"], inp) * (inp - _channel(p["mean"], inp)) / np.sqrt(
                _channel(p["var"], inp) + node.eps
            ) + _channel(p["beta"], inp)
        elif node.kind == "relu":
            y = np.maximum(inp, 0)
        elif node.kind == "clip":
            upper = node.clip_max_per_channel
            hi = _channel(upper, inp) if upper.size else node.clip_max
            y = np.minimum(np.maximum(inp, node.clip_min), hi)
        elif node.kind == "leaky_relu":
            y = np.where(inp >= 0, inp, node.alpha * inp)
        elif node.kind == "identity":
            y = inp
        else:
            raise AssertionError(f"the test interpreter cannot run {node.kind} ({node.name})")
        env[node.outputs[0]] = y
    return env[graph.graph_outputs[0]]


# ---------------------------------------------------------------------------------------------
# Test models


def bn_stats(rng, c, dtype=np.float64):
    gamma = rng.uniform(0.2, 2.0, c) * rng.choice([-1.0, 1.0], c)
    beta = rng.normal(0.0, 1.0, c)
    mean = rng.normal(0.0, 1.0, c)
    var = np.exp(rng.uniform(np.log(1e-2), np.log(10.0), c))
    return [np.ascontiguousarray(a, dtype=dtype) for a in (gamma, beta, mean, var)]


class ConvBnReluConv:
    """conv1 (8←3, 3x3) → bn1 → relu1 → conv2 (6←8, 3x3): the arrays the graph views."""

    def __init__(self, dtype=np.float64, seed=0, bias1=True, activation="relu"):
        rng = np.random.default_rng(seed)
        self.w1 = rng.normal(0, 1, (8, 3, 3, 3)).astype(dtype)
        self.b1 = rng.normal(0, 0.5, 8).astype(dtype) if bias1 else None
        self.gamma, self.beta, self.mean, self.var = bn_stats(rng, 8, dtype)
        self.w2 = rng.normal(0, 1, (6, 8, 3, 3)).astype(dtype)
        self.b2 = rng.normal(0, 0.5, 6).astype(dtype)
        # A deliberately unbalanced network: per-channel rescaling CLS should undo.
        self.w1 *= np.exp(rng.uniform(-3, 3, 8)).reshape(8, 1, 1, 1).astype(dtype)
        g = _core.Graph()
        g.graph_inputs = ["x"]
        g.graph_outputs = ["y"]
        g.add_conv("conv1", ["x"], ["t1"], self.w1, (0, 1, 1, False), self.b1)
        g.add_batch_norm("bn1", ["t1"], ["t2"], self.gamma, self.beta, self.mean, self.var, eps=1e-3)
        if activation == "relu6":
            g.add_activation("act1", "clip", ["t2"], ["t3"], clip_min=0.0, clip_max=6.0)
        else:
            g.add_activation("act1", activation, ["t2"], ["t3"])
        g.add_conv("conv2", ["t3"], ["y"], self.w2, _core.ChannelLayout(0, 1, 1, False), self.b2)
        self.graph = g
        self.x = rng.normal(0, 1, (2, 3, 9, 9))


def depthwise_chain(seed=1):
    """conv1 (8←4, 1x1) → relu → dw (8, 3x3, groups 8) → relu → conv3 (5←8, 1x1)."""
    rng = np.random.default_rng(seed)
    arrays = dict(
        w1=rng.normal(0, 1, (8, 4, 1, 1)),
        b1=rng.normal(0, 1, 8),
        wd=rng.normal(0, 1, (8, 1, 3, 3)),
        bd=rng.normal(0, 1, 8),
        w3=rng.normal(0, 1, (5, 8, 1, 1)),
        b3=rng.normal(0, 1, 5),
    )
    arrays["w1"] *= np.exp(rng.uniform(-3, 3, 8)).reshape(8, 1, 1, 1)
    g = _core.Graph()
    g.graph_inputs = ["x"]
    g.graph_outputs = ["y"]
    g.add_conv("conv1", "x", "a", arrays["w1"], (0, 1), arrays["b1"])
    g.add_activation("relu1", "relu", "a", "b")
    g.add_conv("dw", "b", "c", arrays["wd"], (0, 1, 8), arrays["bd"])
    g.add_activation("relu2", "relu", "c", "d")
    g.add_conv("conv3", "d", "y", arrays["w3"], (0, 1), arrays["b3"])
    return g, arrays, rng.normal(0, 1, (2, 4, 7, 7))


# ---------------------------------------------------------------------------------------------
# Module surface


def test_module_surface():
    for name in [
        "Graph", "ChannelLayout", "NodeInfo", "OnnxModel",
        "unroll_shared_weights", "find_batch_norm_folds", "fold_batch_norms", "fold_given_batch_norms",
        "replace_relu6_with_relu", "find_cls_sets", "scale_cls_sets", "scale_model", "absorb_high_bias",
        "equalize_model",
        "Declined", "FoldRequest", "FoldedBnStats", "FoldedPair", "FoldResult", "ClsPairResult", "ClsSetSpec",
        "ClsCandidates", "ClsSetResult", "ClsResult", "BiasAbsorption", "HighBiasResult", "ActivationEdit",
        "ActivationResult", "UnrolledParameter", "UnrollResult", "EqualizeResult",
    ]:
        assert hasattr(_core, name), name


def test_exception_hierarchy():
    assert issubclass(_core.Error, Exception)
    for name in ["GraphError", "ModelFormatError", "InvalidParameterError", "InvalidRequestError"]:
        cls = getattr(_core, name)
        assert issubclass(cls, _core.Error) and issubclass(cls, ValueError), name
        assert getattr(prequant, name) is cls
    assert issubclass(_core.UnsupportedError, _core.Error)
    assert not issubclass(_core.UnsupportedError, ValueError)
    assert prequant.Error is _core.Error
    e = _core.InvalidRequestError("bad pair", node="conv1")
    assert e.node == "conv1" and str(e) == "bad pair"
    e2 = pickle.loads(pickle.dumps(e))
    assert type(e2) is _core.InvalidRequestError and e2.node == "conv1" and str(e2) == "bad pair"
    assert _core.Error("x").node == ""


# ---------------------------------------------------------------------------------------------
# Graph building


def test_graph_building_and_node_view():
    m = ConvBnReluConv()
    g = m.graph
    assert len(g) == 4 and "bn1" in g and "nope" not in g
    assert g.node_names() == ["conv1", "bn1", "act1", "conv2"]
    g.lint()
    n = g.node("conv1")
    assert n.kind == "conv" and n.has_bias and not n.removed
    assert n.inputs == ["x"] and n.outputs == ["t1"]
    assert n.weight_shape == (8, 3, 3, 3) and n.weight_dtype in ("float64", "Float64", "f64", "double")
    assert n.weight_name == "conv1.weight" and n.bias_name == "conv1.bias"
    assert (n.layout.out_axis, n.layout.in_axis, n.layout.groups, n.layout.transposed) == (0, 1, 1, False)
    assert n.spatial_rank == 2
    assert g.node("bn1").kind == "batch_norm" and g.node("bn1").eps == pytest.approx(1e-3)
    assert g.node("act1").kind == "relu"
    with pytest.raises(AttributeError):
        n.kind = "relu"  # a read-only snapshot
    np.testing.assert_array_equal(g.parameter("conv1", "weight"), m.w1)
    assert g.parameter("conv1", "weight").dtype == np.float64
    assert g.parameter("bn1", "var").tolist() == m.var.tolist()
    assert "Graph" in repr(g) and "conv1" in repr(n)


def test_keras_layout_negative_axes_and_names():
    g = _core.Graph()
    w = np.ones((3, 3, 4, 8), dtype=np.float32)  # Keras Conv2D kernel (kh, kw, I, O)
    g.add_conv("k", "x", "y", w, (-1, -2), names={"weight": "k/kernel:0"}, op_type="Conv2D")
    n = g.node("k")
    assert (n.layout.out_axis, n.layout.in_axis) == (3, 2)
    assert n.weight_name == "k/kernel:0" and n.op_type == "Conv2D" and not n.has_bias
    assert n.weight_dtype.lower() in ("float32", "f32", "float")
    d = _core.Graph()
    d.add_conv("dense", "x", "y", np.ones((4, 3)), (1, 0), kind="linear")
    assert d.node("dense").kind == "linear" and d.node("dense").spatial_rank == 0


def test_duplicate_node_name_is_graph_error():
    g = _core.Graph()
    g.add_activation("r", "relu", "a", "b")
    with pytest.raises(_core.GraphError) as info:
        g.add_activation("r", "relu", "b", "c")
    assert info.value.node == "r" and "unique" in str(info.value)
    assert isinstance(info.value, ValueError)
    assert len(g) == 1


def test_lint_reports_how_to_fix():
    g = _core.Graph()
    g.graph_inputs = ["x"]
    g.add_activation("r1", "relu", "t", "u")
    g.add_activation("r0", "relu", "x", "t")
    with pytest.raises(_core.GraphError, match="topological order") as info:
        g.lint()
    assert info.value.node == "r1"
    bad = _core.Graph()
    bad.add_conv("c", "x", "y", np.ones((4, 3, 1, 1)), (0, 1), np.ones(5))
    with pytest.raises(_core.GraphError, match="bias"):
        bad.lint()


def test_unknown_names_and_kinds():
    g = _core.Graph()
    with pytest.raises(_core.InvalidRequestError, match="leaky_relu"):
        g.add_activation("a", "gelu", "x", "y")
    with pytest.raises(_core.InvalidRequestError):
        g.add_conv("c", "x", "y", np.ones((2, 2)), kind="matmul")
    with pytest.raises(_core.InvalidRequestError, match="slope"):
        g.add_activation("p", "prelu", "x", "y")
    with pytest.raises(_core.GraphError) as info:
        g.node("missing")
    assert info.value.node == "missing"
    assert len(g) == 0


# ---------------------------------------------------------------------------------------------
# Array refusal: every rejected array raises UnsupportedError naming the parameter and the fix


def _refused(array, role="weight", match=None):
    g = _core.Graph()
    kwargs = dict(bias=np.zeros(4)) if role == "weight" else dict(bias=array)
    weight = array if role == "weight" else np.ones((4, 3, 1, 1))
    with pytest.raises(_core.UnsupportedError, match=match) as info:
        g.add_conv("conv7", "x", "y", weight, (0, 1), **kwargs)
    msg = str(info.value)
    assert f"'{role}'" in msg and "'conv7'" in msg, msg
    assert len(g) == 0  # nothing was added
    return msg


def test_float16_is_refused_with_the_fix():
    msg = _refused(np.ones((4, 3, 1, 1), dtype=np.float16), match="float16")
    assert "float32 or float64" in msg and "model.float()" in msg


def test_int_and_bias_dtype_refused():
    _refused(np.ones((4, 3, 1, 1), dtype=np.int32), match="int32")
    _refused(np.ones(4, dtype=np.float16), role="bias", match="float16")


def test_non_contiguous_is_refused():
    base = np.ones((4, 6, 1, 1))
    msg = _refused(base[:, ::2], match="contiguous")
    assert "ascontiguousarray" in msg
    _refused(np.asfortranarray(np.ones((4, 3, 2, 2))), match="contiguous")


def test_read_only_is_refused():
    w = np.ones((4, 3, 1, 1))
    w.flags.writeable = False
    msg = _refused(w, match="read-only")
    assert "writable" in msg


def test_non_array_is_refused():
    _refused([[1.0, 2.0]], match="not an array")


def test_torch_tensors():
    torch = pytest.importorskip("torch")
    conv = torch.nn.Conv2d(3, 4, 1)
    msg = _refused(conv.weight, match="requires grad")
    assert "detach()" in msg
    _refused(conv.weight.detach().half(), match="float16")
    _refused(conv.weight.detach().bfloat16(), match="bfloat16")
    _refused(conv.weight.detach().transpose(0, 1), match="contiguous")
    # A detached parameter is a zero-copy view: folding writes into the module.
    bn = torch.nn.BatchNorm2d(4).eval()
    with torch.no_grad():
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.1, 2.0)
        bn.weight.normal_()
        bn.bias.normal_()
    x = torch.randn(2, 3, 5, 5)
    with torch.no_grad():
        ref = bn(conv(x))
    g = _core.Graph()
    g.graph_inputs, g.graph_outputs = ["x"], ["z"]
    g.add_conv("conv", "x", "y", conv.weight.detach(), (0, 1), conv.bias.detach())
    g.add_batch_norm("bn", "y", "z", bn.weight.detach(), bn.bias.detach(), bn.running_mean, bn.running_var, bn.eps)
    result = _core.fold_batch_norms(g)
    assert [(p.layer, p.bn) for p in result.folded] == [("conv", "bn")]
    with torch.no_grad():
        torch.testing.assert_close(conv(x), ref, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# Zero copy and lifetime


def test_graph_keeps_arrays_alive():
    rng = np.random.default_rng(3)
    w = rng.normal(size=(4, 3, 1, 1))
    ref = weakref.ref(w)
    g = _core.Graph()
    g.add_conv("c", "x", "y", w, (0, 1))
    del w
    gc.collect()
    assert ref() is not None, "the graph must keep the viewed array alive"
    assert g.parameter("c", "weight").shape == (4, 3, 1, 1)
    del g
    gc.collect()
    assert ref() is None, "the array must be released with the graph"


def test_contiguous_view_into_a_larger_buffer_is_edited_in_place():
    rng = np.random.default_rng(4)
    buffer = rng.normal(size=(3, 4, 3, 1, 1))  # the weight is buffer[1]: contiguous, at an offset
    gamma, beta, mean, var = bn_stats(rng, 4)
    g = _core.Graph()
    g.graph_inputs, g.graph_outputs = ["x"], ["z"]
    g.add_conv("conv", "x", "y", buffer[1], (0, 1))
    g.add_batch_norm("bn", "y", "z", gamma, beta, mean, var)
    original = buffer.copy()
    _core.fold_batch_norms(g)
    s = gamma / np.sqrt(var + 1e-5)
    np.testing.assert_allclose(buffer[1], original[1] * s.reshape(-1, 1, 1, 1), rtol=1e-12)
    np.testing.assert_array_equal(buffer[[0, 2]], original[[0, 2]])


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_fold_conv_then_bn_in_place(dtype):
    m = ConvBnReluConv(dtype=dtype)
    before = run(m.graph, m.x)
    w1_object, w1_copy, b1_copy = m.w1, m.w1.copy(), m.b1.copy()
    plan = _core.find_batch_norm_folds(m.graph)
    assert [(p.layer, p.bn, p.direction) for p in plan.folded] == [("conv1", "bn1", "conv_then_bn")]
    np.testing.assert_array_equal(m.w1, w1_copy)  # finding changes nothing
    result = _core.fold_batch_norms(m.graph)
    assert isinstance(result, _core.FoldResult)
    (pair,) = result.folded
    assert (pair.layer, pair.bn, pair.direction, pair.bias_added) == ("conv1", "bn1", "conv_then_bn", False)
    np.testing.assert_array_equal(pair.bn_stats.gamma, m.gamma.astype(np.float64))
    assert m.graph.node("bn1").removed and "bn1" not in m.graph and len(m.graph) == 3
    # The caller's arrays changed in place, to the documented formula.
    s = m.gamma.astype(np.float64) / np.sqrt(m.var.astype(np.float64) + 1e-3)
    assert m.w1 is w1_object and m.w1.dtype == dtype
    tol = dict(rtol=1e-12) if dtype == np.float64 else dict(rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(m.w1, w1_copy * s.reshape(-1, 1, 1, 1), **tol)
    np.testing.assert_allclose(m.b1, m.beta + (b1_copy - m.mean) * s, **tol)
    np.testing.assert_array_equal(m.graph.parameter("conv1", "weight"), m.w1)
    after = run(m.graph, m.x)
    np.testing.assert_allclose(after, before, **(dict(rtol=1e-10) if dtype == np.float64 else dict(rtol=2e-4, atol=2e-4)))


def test_fold_adds_bias_in_arena():
    m = ConvBnReluConv(bias1=False)
    before = run(m.graph, m.x)
    (pair,) = _core.fold_batch_norms(m.graph).folded
    assert pair.bias_added
    bias = m.graph.added_bias("conv1")
    assert isinstance(bias, np.ndarray) and bias.dtype == np.float64 and bias.shape == (8,)
    s = m.gamma / np.sqrt(m.var + 1e-3)
    np.testing.assert_allclose(bias, m.beta - m.mean * s, rtol=1e-12)
    bias[:] = 0  # a copy: the engine's bias is untouched
    assert np.abs(m.graph.added_bias("conv1")).max() > 0
    np.testing.assert_allclose(run(m.graph, m.x), before, rtol=1e-10)
    with pytest.raises(_core.InvalidRequestError) as info:
        m.graph.added_bias("act1")
    assert info.value.node == "act1"


def test_fold_given_batch_norms_and_atomic_refusal():
    m = ConvBnReluConv()
    w1, w2 = m.w1.copy(), m.w2.copy()
    with pytest.raises(_core.InvalidRequestError) as info:
        _core.fold_given_batch_norms(m.graph, [("conv1", "bn1", "conv_then_bn"), ("conv2", "nope")])
    assert info.value.node == "nope"
    np.testing.assert_array_equal(m.w1, w1)
    np.testing.assert_array_equal(m.w2, w2)
    assert not m.graph.node("bn1").removed
    with pytest.raises(_core.InvalidRequestError, match="direction"):
        _core.fold_given_batch_norms(m.graph, [("conv1", "bn1", "sideways")])
    with pytest.raises(_core.InvalidRequestError):
        _core.fold_given_batch_norms(m.graph, ["conv1"])
    before = run(m.graph, m.x)
    result = _core.fold_given_batch_norms(m.graph, [_core.FoldRequest("conv1", "bn1")])
    assert [p.bn for p in result.folded] == ["bn1"] and result.declined == []
    np.testing.assert_allclose(run(m.graph, m.x), before, rtol=1e-10)


def test_bn_then_conv_fold():
    rng = np.random.default_rng(5)
    gamma, beta, mean, var = bn_stats(rng, 3)
    w = rng.normal(size=(4, 3, 3, 3))
    b = rng.normal(size=4)
    g = _core.Graph()
    g.graph_inputs, g.graph_outputs = ["x"], ["y"]
    g.add_batch_norm("bn0", "x", "t", gamma, beta, mean, var)
    g.add_conv("conv", "t", "y", w, (0, 1), b, has_padding=False)
    x = rng.normal(size=(2, 3, 6, 6))
    before = run(g, x)
    result = _core.fold_given_batch_norms(g, [("conv", "bn0", "bn_then_conv")])
    assert result.folded[0].direction == "bn_then_conv"
    assert g.node("conv").inputs == ["x"]
    np.testing.assert_allclose(run(g, x), before, rtol=1e-10, atol=1e-12)


def test_invalid_bn_statistics_raise_invalid_parameter():
    m = ConvBnReluConv()
    m.var[2] = -1.0
    w1 = m.w1.copy()
    with pytest.raises(_core.InvalidParameterError) as info:
        _core.fold_batch_norms(m.graph)
    assert info.value.node == "bn1" and "variance" in str(info.value)
    assert isinstance(info.value, ValueError)
    np.testing.assert_array_equal(m.w1, w1)
    m.var[2] = 1.0
    m.w1[0, 0, 0, 0] = np.nan
    with pytest.raises(_core.InvalidParameterError, match="NaN"):
        _core.fold_batch_norms(m.graph)


# ---------------------------------------------------------------------------------------------
# Cross-layer scaling, ReLU6, high-bias absorption, equalize_model


def _ranges(w, axis):
    return np.abs(np.moveaxis(w, axis, 0)).reshape(w.shape[axis], -1).max(axis=1)


def test_scale_cls_pair_in_place():
    m = ConvBnReluConv()
    _core.fold_batch_norms(m.graph)
    before = run(m.graph, m.x)
    w1, b1, w2 = m.w1.copy(), m.b1.copy(), m.w2.copy()
    candidates = _core.find_cls_sets(m.graph)
    assert isinstance(candidates, _core.ClsCandidates)
    assert [s.layers for s in candidates.sets] == [["conv1", "conv2"]]
    result = _core.scale_cls_sets(m.graph, [["conv1", "conv2"]])
    assert isinstance(result, _core.ClsResult) and result.iterations >= 1
    (pair,) = result.sets[0].pairs
    assert (pair.layer1, pair.layer2, pair.relu_between) == ("conv1", "conv2", True)
    assert pair.activations_between == ["act1"]
    assert result.sets[0].layers == ["conv1", "conv2"]
    s = pair.scale
    assert isinstance(s, np.ndarray) and s.dtype == np.float64 and s.shape == (8,)
    np.testing.assert_allclose(m.w1, w1 / s.reshape(-1, 1, 1, 1), rtol=1e-12)
    np.testing.assert_allclose(m.b1, b1 / s, rtol=1e-12)
    np.testing.assert_allclose(m.w2, w2 * s.reshape(1, -1, 1, 1), rtol=1e-12)
    np.testing.assert_allclose(_ranges(m.w1, 0), _ranges(m.w2, 1), rtol=1e-6)
    np.testing.assert_allclose(run(m.graph, m.x), before, rtol=1e-10)
    # The same sets as spec objects or as the candidates object.
    again = _core.scale_cls_sets(m.graph, candidates, max_iterations=3)
    np.testing.assert_allclose(again.sets[0].pairs[0].scale, 1.0, atol=1e-6)
    _core.scale_cls_sets(m.graph, [_core.ClsSetSpec(["conv1", "conv2"])])


def test_scale_depthwise_triple():
    g, a, x = depthwise_chain()
    before = run(g, x)
    candidates = _core.find_cls_sets(g)
    assert [s.layers for s in candidates.sets] == [["conv1", "dw", "conv3"]]
    result = _core.scale_model(g)
    (cls_set,) = result.sets
    assert len(cls_set.pairs) == 2 and cls_set.layers == ["conv1", "dw", "conv3"]
    r1, rd, r3 = _ranges(a["w1"], 0), _ranges(a["wd"], 0), _ranges(a["w3"], 1)
    np.testing.assert_allclose(r1, rd, rtol=1e-6)
    np.testing.assert_allclose(rd, r3, rtol=1e-6)
    np.testing.assert_allclose(run(g, x), before, rtol=1e-9)


@pytest.mark.parametrize("policy", ["bound", "replace", "skip"])
def test_relu6_policies(policy):
    m = ConvBnReluConv(activation="relu6")
    _core.fold_batch_norms(m.graph)
    before = run(m.graph, m.x)
    w1 = m.w1.copy()
    result = _core.scale_model(m.graph, relu6=policy)
    node = m.graph.node("act1")
    if policy == "bound":
        (pair,) = result.sets[0].pairs
        assert node.kind == "clip"
        np.testing.assert_allclose(node.clip_max_per_channel, 6.0 / pair.scale, rtol=1e-12)
        np.testing.assert_allclose(run(m.graph, m.x), before, rtol=1e-9, atol=1e-12)
    elif policy == "replace":
        assert node.kind == "relu" and len(result.sets) == 1
    else:
        assert result.sets == [] and node.kind == "clip"
        assert any("act1" in d.nodes or "conv1" in d.nodes for d in result.declined)
        np.testing.assert_array_equal(m.w1, w1)


def test_clip_bounded_per_channel_from_front_end():
    g = _core.Graph()
    g.add_activation("b", "clip", "x", "y", clip_min=0.0, clip_max=float("inf"),
                     clip_max_per_channel=np.array([1.0, 2.0, 3.0]))
    n = g.node("b")
    assert n.kind == "clip" and n.clip_max == float("inf")
    np.testing.assert_array_equal(n.clip_max_per_channel, [1.0, 2.0, 3.0])
    g.add_activation("c", "clip", "y", "z", clip_max_per_channel=[4.0, 5.0])
    assert g.node("c").clip_max_per_channel.tolist() == [4.0, 5.0]


def test_replace_relu6_with_relu():
    m = ConvBnReluConv(activation="relu6")
    result = _core.replace_relu6_with_relu(m.graph)
    assert isinstance(result, _core.ActivationResult)
    (edit,) = result.edits
    assert (edit.node, edit.kind) == ("act1", "replaced_with_relu")
    assert m.graph.node("act1").kind == "relu"


def test_bad_policy_and_iterations():
    m = ConvBnReluConv()
    with pytest.raises(_core.InvalidRequestError, match="bound"):
        _core.find_cls_sets(m.graph, relu6="sometimes")
    with pytest.raises(_core.InvalidRequestError, match="max_iterations"):
        _core.scale_model(m.graph, max_iterations=0)
    with pytest.raises(_core.InvalidRequestError):
        _core.scale_cls_sets(m.graph, "conv1")


def test_absorb_high_bias():
    m = ConvBnReluConv()
    fold = _core.fold_batch_norms(m.graph)
    cls = _core.scale_model(m.graph)
    b1, b2 = m.b1.copy(), m.b2.copy()
    result = _core.absorb_high_bias(m.graph, cls, fold)
    assert isinstance(result, _core.HighBiasResult)
    (a,) = result.absorbed
    assert (a.layer1, a.layer2, a.bias_added) == ("conv1", "conv2", False)
    s = cls.sets[0].pairs[0].scale
    gamma, beta = m.gamma / s, m.beta / s
    c = np.maximum(0.0, beta - 3 * np.abs(gamma))
    np.testing.assert_allclose(a.amount, c, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(m.b1, b1 - c, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(m.b2, b2 + m.w2.sum(axis=(2, 3)) @ c, rtol=1e-9, atol=1e-12)
    # The same call with explicit statistics and result lists.
    m2 = ConvBnReluConv()
    _core.fold_batch_norms(m2.graph)
    cls2 = _core.scale_model(m2.graph)
    r2 = _core.absorb_high_bias(m2.graph, cls2.sets, {"conv1": (m2.gamma, m2.beta)}, sigmas=3.0)
    np.testing.assert_allclose(r2.absorbed[0].amount, a.amount, rtol=1e-12)
    # Sets a front end scaled itself, rebuilt from their scales.
    m3 = ConvBnReluConv()
    _core.fold_batch_norms(m3.graph)
    pair = _core.scale_model(m3.graph).sets[0].pairs[0]
    rebuilt = [_core.ClsSetResult([_core.ClsPairResult("conv1", "conv2", pair.scale.tolist(), True, ["act1"])])]
    assert rebuilt[0].layers == ["conv1", "conv2"] and rebuilt[0].pairs[0].activations_between == ["act1"]
    r3 = _core.absorb_high_bias(m3.graph, rebuilt, {"conv1": _core.FoldedBnStats(m3.gamma, m3.beta)})
    np.testing.assert_allclose(r3.absorbed[0].amount, a.amount, rtol=1e-12)
    with pytest.raises(_core.InvalidRequestError):
        _core.absorb_high_bias(m2.graph, [1, 2], {})
    with pytest.raises(_core.InvalidRequestError):
        _core.absorb_high_bias(m2.graph, cls2, "conv1")


def test_equalize_model_preserves_function():
    m = ConvBnReluConv()
    before = run(m.graph, m.x)
    # DFQ's criterion: its balanced ranges are checked below (the default also weighs activations)
    result = _core.equalize_model(m.graph, absorb_high_bias=False, scale_criterion="weights")
    assert isinstance(result, _core.EqualizeResult)
    assert [p.bn for p in result.fold.folded] == ["bn1"]
    assert len(result.cls.sets) == 1 and result.high_bias.absorbed == []
    assert result.cls.iterations >= 1
    np.testing.assert_allclose(run(m.graph, m.x), before, rtol=1e-9)
    np.testing.assert_allclose(_ranges(m.w1, 0), _ranges(m.w2, 1), rtol=1e-6)


def test_equalize_model_with_high_bias_absorption():
    m = ConvBnReluConv(seed=7)
    result = _core.equalize_model(m.graph, relu6="replace", max_iterations=5, absorb_high_bias=True,
                                  high_bias_sigmas=3.0)
    assert len(result.high_bias.absorbed) == 1
    assert result.unroll.copies == []


def test_unroll_shared_weights():
    rng = np.random.default_rng(9)
    w = rng.normal(size=(4, 4, 1, 1))
    g = _core.Graph()
    g.graph_inputs, g.graph_outputs = ["x"], ["z"]
    g.add_conv("a", "x", "y", w, (0, 1), names={"weight": "shared.weight"})
    g.add_conv("b", "y", "z", w, (0, 1), names={"weight": "shared.weight"})
    result = _core.unroll_shared_weights(g)
    assert isinstance(result, _core.UnrollResult)
    assert len(result.copies) == 1
    (copy,) = result.copies
    assert copy.node in ("a", "b") and copy.original_name == "shared.weight" and copy.new_name != "shared.weight"
    assert g.node(copy.node).weight_name == copy.new_name
    np.testing.assert_array_equal(g.parameter(copy.node, "weight"), w)


# ---------------------------------------------------------------------------------------------
# Results as data


def test_results_are_read_only_data():
    m = ConvBnReluConv()
    result = _core.equalize_model(m.graph)
    d = result.to_dict()
    assert {"unroll", "fold", "activations", "cls", "high_bias", "declined"} <= set(d)
    assert d["fold"]["folded"][0]["bn"] == "bn1"
    assert isinstance(d["cls"]["sets"][0]["pairs"][0]["scale"], list)
    assert d["cls"]["sets"][0]["layers"] == ["conv1", "conv2"]
    # The parts of a result serialize in the same shapes as the whole.
    assert result.fold.folded[0].to_dict() == d["fold"]["folded"][0]
    assert result.cls.sets[0].to_dict() == d["cls"]["sets"][0]
    assert result.cls.sets[0].pairs[0].to_dict() == d["cls"]["sets"][0]["pairs"][0]
    assert result.high_bias.to_dict() == d["high_bias"]
    assert json.loads(result.fold.to_json(indent=0)) == d["fold"]
    text = result.to_json()
    parsed = json.loads(text)
    assert "fold" in json.dumps(parsed) and "bn1" in text
    explanation = result.explain()
    assert isinstance(explanation, str) and "bn1" in explanation and "conv1" in explanation
    with pytest.raises(AttributeError):
        result.fold = None
    pair = result.cls.sets[0].pairs[0]
    with pytest.raises(AttributeError):
        pair.layer1 = "x"
    pair.scale[:] = 0  # a copy
    assert result.cls.sets[0].pairs[0].scale.min() > 0
    assert "EqualizeResult" in repr(result) and "ClsPairResult" in repr(pair)


def test_declined_candidates_have_reasons():
    g = _core.Graph()
    rng = np.random.default_rng(2)
    gamma, beta, mean, var = bn_stats(rng, 4)
    g.graph_inputs, g.graph_outputs = ["x"], ["y", "t"]
    g.add_conv("conv", "x", "t", rng.normal(size=(4, 3, 1, 1)), (0, 1))
    g.add_batch_norm("bn", "t", "y", gamma, beta, mean, var)  # conv output is also a graph output
    result = _core.find_batch_norm_folds(g)
    assert result.folded == []
    (d,) = result.declined
    assert isinstance(d, _core.Declined) and d.reason and "bn" in d.nodes
    assert d.pass_name == d.to_dict()["pass"]
    assert d.reason in d.explain() and json.loads(d.to_json())["nodes"] == d.nodes
    assert result.explain() and "bn" in result.explain()


# ---------------------------------------------------------------------------------------------
# Threads: passes release the GIL; one graph's passes are serialized


def test_passes_in_threads():
    models = [ConvBnReluConv(seed=s) for s in range(6)]
    expected = [run(m.graph, m.x) for m in models]
    errors = []

    def work(m):
        try:
            _core.equalize_model(m.graph, absorb_high_bias=False)
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(m,)) for m in models]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    for m, ref in zip(models, expected):
        np.testing.assert_allclose(run(m.graph, m.x), ref, rtol=1e-9)


# ---------------------------------------------------------------------------------------------
# ONNX as bytes


def _onnx_conv_bn_relu_conv(rng):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    gamma, beta, mean, var = bn_stats(rng, 8, np.float32)
    inits = {
        "w1": rng.normal(size=(8, 3, 3, 3)).astype(np.float32),
        "b1": rng.normal(size=8).astype(np.float32),
        "gamma": gamma, "beta": beta, "mean": mean, "var": var,
        "w2": rng.normal(size=(6, 8, 1, 1)).astype(np.float32),
        "b2": rng.normal(size=6).astype(np.float32),
    }
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["t1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["t1", "gamma", "beta", "mean", "var"], ["t2"], name="bn1",
                         epsilon=1e-3),
        helper.make_node("Relu", ["t2"], ["t3"], name="relu1"),
        helper.make_node("Conv", ["t3", "w2", "b2"], ["y"], name="conv2"),
    ]
    graph = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 6, 8, 8])],
        [numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def test_onnx_bytes_round_trip(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    rng = np.random.default_rng(11)
    model = _onnx_conv_bn_relu_conv(rng)
    data = model.SerializeToString()
    x = rng.normal(size=(1, 3, 8, 8)).astype(np.float32)

    def infer(b):
        return ort.InferenceSession(b, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]

    ref = infer(data)
    om = _core.OnnxModel.from_bytes(data)
    assert om.opset == 17
    g = om.graph
    assert g.node("bn1").kind == "batch_norm" and g.node("conv1").has_padding
    result = _core.equalize_model(g, absorb_high_bias=False)
    assert [p.bn for p in result.fold.folded] == ["bn1"]
    out = om.to_bytes()
    assert isinstance(out, bytes)
    saved = onnx.load_from_string(out)
    assert [n.op_type for n in saved.graph.node].count("BatchNormalization") == 0
    np.testing.assert_allclose(infer(out), ref, rtol=1e-4, atol=1e-4)
    path = tmp_path / "model.onnx"
    om.save(path)
    again = _core.OnnxModel.load(str(path))
    assert "bn1" not in again.graph and "conv1" in again.graph
    np.testing.assert_allclose(infer(path.read_bytes()), ref, rtol=1e-4, atol=1e-4)
    # The graph keeps its model alive.
    del om, again
    gc.collect()
    assert g.node("conv1").kind == "conv"


def test_onnx_malformed_bytes():
    with pytest.raises(_core.ModelFormatError) as info:
        _core.OnnxModel.from_bytes(b"\x08\x07this is not a model")
    assert isinstance(info.value, ValueError)
    with pytest.raises(_core.ModelFormatError):
        _core.OnnxModel.load("/nonexistent/model.onnx")
