"""Keras CLE API: numerics against the model's own forward pass, on randomized BN statistics.

Before: small functional models covering each layer kind the Keras front end translates (conv
        1-d/2-d/3-d, grouped, depthwise with multiplier, separable, transposed, dense; BN before
        and after, with and without gamma/beta; ReLU, ReLU6 as layer / Activation / fused,
        LeakyReLU, PReLU, zero padding, pooling, opaque ops), BN statistics random (var in
        [1e-2, 10], non-zero mean, negative gamma).
After:  fold and equalize return new models whose inference output equals the original's (the
        original untouched); CLS-paired per-channel ranges are equal; in-place APIs change
        weights only after the engine succeeded; refusals leave weights bit-identical.
"""

from __future__ import annotations

import re

import numpy as np
import pytest

import keras
from keras import layers as L

import prequant
from prequant.keras.activations import BoundedReLU
from prequant.keras.batch_norm_fold import find_batch_norm_folds, fold_all_batch_norms, fold_given_batch_norms
from prequant.keras.cross_layer_equalization import (
    ClsSetInfo,
    CrossLayerScaling,
    HighBiasFold,
    equalize_model,
    replace_relu6_with_relu,
)

RNG = np.random.default_rng(0)


# ---- helpers ---------------------------------------------------------------------------------

def randomize_batch_norms(model, seed=0):
    """Realistic BN statistics: var in [1e-2, 10], non-zero mean, some negative gamma."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, L.BatchNormalization):
            c = layer.moving_mean.shape
            layer.moving_variance.assign(np.exp(rng.uniform(np.log(1e-2), np.log(10.0), c)).astype("float32"))
            layer.moving_mean.assign(rng.normal(0.5, 1.0, c).astype("float32"))
            if layer.gamma is not None:
                layer.gamma.assign(rng.normal(0.0, 1.5, c).astype("float32"))
            if layer.beta is not None:
                layer.beta.assign(rng.normal(0.0, 1.0, c).astype("float32"))
    return model


def rel_err(a, b) -> float:
    a, b = np.asarray(a, "float64"), np.asarray(b, "float64")
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-12))


def absorb_high_bias_by_hand(l1, l2, gamma, beta, scale, relu_between, bounded=None, sigmas=3.0):
    """High-bias absorption computed independently of the engine (DFQ's 3σ rule, as the GUIDE states
    it), applied in place to a Conv/Dense `l2` (kernel ..., I, O); returns the amount c.

    γ' = γ/s, β' = β/s; c = max(0, β' − 3|γ'|) with a ReLU between, else β'; a per-channel bound
    between (BoundedReLU) caps c and is lowered by it; b1 −= c, b2 += c·(Σ_k W2[k, :, :])."""
    gamma = np.asarray(gamma, "float64") / np.asarray(scale, "float64")
    beta = np.asarray(beta, "float64") / np.asarray(scale, "float64")
    c = np.maximum(0.0, beta - sigmas * np.abs(gamma)) if relu_between else beta
    if bounded is not None:
        c = np.minimum(c, np.asarray(bounded.upper.numpy(), "float64"))
        bounded.upper.assign((np.asarray(bounded.upper.numpy(), "float64") - c).astype("float32"))
    l1.bias.assign((np.asarray(l1.bias.numpy(), "float64") - c).astype("float32"))
    w2 = np.asarray(l2.kernel.numpy(), "float64")
    w2 = w2.reshape(-1, *w2.shape[-2:]).sum(0)  # (I, O)
    l2.bias.assign((np.asarray(l2.bias.numpy(), "float64") + c @ w2).astype("float32"))
    return c


def run(model, x):
    return np.asarray(model(x, training=False))


def inputs_for(model, batch=2, seed=0):
    shape = (batch,) + tuple(model.inputs[0].shape[1:])
    return np.random.default_rng(seed).normal(size=shape).astype("float32")


def kernel_layout(layer):
    """(kernel, out axis, in axis, groups), per the layout table of the design guide."""
    w = np.asarray(layer.get_weights()[0] if not isinstance(layer, L.SeparableConv2D) else None)
    t = type(layer)
    if t in (L.DepthwiseConv1D, L.DepthwiseConv2D):
        return w.reshape(w.shape[:-2] + (1, -1)), -1, -2, w.shape[-2]
    if t in (L.Conv1DTranspose, L.Conv2DTranspose, L.Conv3DTranspose):
        return w, -2, -1, 1
    if t is L.Dense:
        return w, 1, 0, 1
    return w, -1, -2, layer.groups


def out_ranges(layer) -> np.ndarray:
    w, oa, ia, _ = kernel_layout(layer)
    a = np.moveaxis(np.abs(w.astype("float64")), (oa, ia), (0, 1))
    return a.reshape(a.shape[0], -1).max(1)


def in_ranges(layer) -> np.ndarray:
    w, oa, ia, groups = kernel_layout(layer)
    a = np.moveaxis(np.abs(w.astype("float64")), (oa, ia), (0, 1))
    per = a.reshape(a.shape[0], a.shape[1], -1).max(2)  # (O, I/g)
    o = per.shape[0] // groups
    return np.concatenate([per[g * o:(g + 1) * o].max(0) for g in range(groups)])


def assert_sets_equalized(model, result, rtol=1e-4):
    for s in result.cls.sets:
        layers = [model.get_layer(n) for n in s.layers]
        ranges = [out_ranges(layers[0])] + [out_ranges(m) for m in layers[1:-1]] + [in_ranges(layers[-1])]
        # Balanced up to one factor per link: the gauge that puts every ReLU6 bound at <= 6
        # multiplies whole tensors by one number (no ratio within a tensor changes).
        for a, b in zip(ranges, ranges[1:]):
            live = (a > 1e-6 * a.max()) & (b > 1e-6 * b.max())
            ratio = a[live] / b[live]
            np.testing.assert_allclose(ratio, np.full_like(ratio, ratio[0]), rtol=rtol, err_msg=str(s.layers))


def weights_of(model) -> list[np.ndarray]:
    return [np.array(v.numpy()) for v in model.weights]


def assert_bit_identical(before, model):
    after = weights_of(model)
    assert len(before) == len(after)
    for a, b in zip(before, after):
        assert a.shape == b.shape and a.tobytes() == b.tobytes()


def mobile_block(relu6=True):
    """conv → BN → ReLU6 → depthwise → BN → ReLU6 → conv → BN → conv → BN → ReLU → pool → dense."""
    act = (lambda n: L.ReLU(6.0, name=n)) if relu6 else (lambda n: L.ReLU(name=n))
    x = inp = keras.Input((12, 12, 3))
    x = L.Conv2D(8, 3, padding="same", use_bias=False, name="conv1")(x)
    x = L.BatchNormalization(name="bn1")(x)
    x = act("act1")(x)
    x = L.DepthwiseConv2D(3, padding="same", use_bias=False, name="dw")(x)
    x = L.BatchNormalization(name="bn2")(x)
    x = act("act2")(x)
    x = L.Conv2D(16, 1, use_bias=False, name="pw")(x)
    x = L.BatchNormalization(name="bn3")(x)
    x = L.Conv2D(12, 3, name="conv4")(x)
    x = L.BatchNormalization(name="bn4")(x)
    x = L.ReLU(name="act4")(x)
    x = L.GlobalAveragePooling2D(name="pool")(x)
    x = L.Dense(5, name="fc")(x)
    return randomize_batch_norms(keras.Model(inp, x, name="mobile_block"))


# ---- batch-norm folding -------------------------------------------------------------------------

def test_fold_all_batch_norms_builds_a_new_model_with_equal_outputs():
    model = mobile_block()
    x = inputs_for(model)
    ref = run(model, x)
    before = weights_of(model)
    pairs, folded = fold_all_batch_norms(model)
    assert [(a.name, b.name) for a, b in pairs] == [("conv1", "bn1"), ("dw", "bn2"), ("pw", "bn3"), ("conv4", "bn4")]
    assert all(a is folded.get_layer(a.name) for a, _ in pairs)
    assert all(b is model.get_layer(b.name) for _, b in pairs)  # the original BNs (γ, β for bias_fold)
    assert not any(isinstance(layer, L.BatchNormalization) for layer in folded.layers)
    assert all(folded.get_layer(n).use_bias for n in ("conv1", "dw", "pw"))  # re-created with a bias
    assert rel_err(run(folded, x), ref) < 1e-5
    assert_bit_identical(before, model)  # the original is untouched
    assert rel_err(run(model, x), ref) == 0


def test_fold_bn_before_dense_and_declined_reasons():
    a = keras.Input((6,), name="a")
    b = keras.Input((8, 8, 3), name="b")
    ya = L.Dense(4, name="fc")(L.BatchNormalization(name="bn_fc")(a))
    yb = L.Conv2D(4, 3, padding="same", name="conv")(L.BatchNormalization(name="bn_pad")(b))
    yc = L.Conv1D(5, 3, name="conv1d")(L.BatchNormalization(name="bn_1d")(L.Reshape((4, 6))(L.Dense(24)(a))))
    model = randomize_batch_norms(keras.Model([a, b], [ya, yb, yc]))
    xs = [RNG.normal(size=(5, 6)).astype("float32"), RNG.normal(size=(2, 8, 8, 3)).astype("float32")]
    ref = [np.asarray(o) for o in model(xs, training=False)]
    found = find_batch_norm_folds(model)  # changes nothing
    assert sorted((f.layer, f.bn, f.direction) for f in found.folded) == [
        ("conv1d", "bn_1d", "bn_then_conv"), ("fc", "bn_fc", "bn_then_conv")]
    pairs, folded, result = fold_all_batch_norms(model, return_result=True)
    assert sorted((p.name, bn.name) for p, bn in pairs) == [("conv1d", "bn_1d"), ("fc", "bn_fc")]
    assert [type(layer).__name__ for layer in folded.layers].count("BatchNormalization") == 1
    assert "pads its input" in result.explain()
    for got, want in zip(folded(xs, training=False), ref):
        assert rel_err(got, want) < 1e-5


def test_bn_without_gamma_beta_and_grouped_conv():
    x = inp = keras.Input((10, 10, 4))
    x = L.Conv2D(8, 3, groups=2, name="grouped")(x)
    x = L.BatchNormalization(center=False, scale=False, name="bn_plain")(x)
    x = L.BatchNormalization(center=False, name="bn_no_beta")(L.Conv2D(6, 1, name="c2")(x))
    x = L.BatchNormalization(scale=False, name="bn_no_gamma")(L.Conv2D(6, 1, name="c3")(x))
    model = randomize_batch_norms(keras.Model(inp, x))
    x = inputs_for(model)
    ref = run(model, x)
    pairs, folded = fold_all_batch_norms(model)
    assert len(pairs) == 3
    assert rel_err(run(folded, x), ref) < 1e-5


def test_fold_given_batch_norms_invalid_pair_changes_nothing():
    model = mobile_block()
    x = inputs_for(model)
    ref = run(model, x)
    conv1, bn1, bn2 = model.get_layer("conv1"), model.get_layer("bn1"), model.get_layer("bn2")
    before = weights_of(model)
    with pytest.raises(prequant.InvalidRequestError, match="does not read the output"):
        fold_given_batch_norms(model, [(conv1, bn1, True), (conv1, bn2, True)])
    assert_bit_identical(before, model)
    assert not hasattr(bn1, "op")
    with pytest.raises(prequant.InvalidRequestError, match="not a layer of model"):
        fold_given_batch_norms(model, [(L.Conv2D(8, 3), bn1, True)])
    new = fold_given_batch_norms(model, [(conv1, bn1, True)])
    assert bn1.op is bn1  # AIMET's manual example reads `bn_op_with_meta.op`
    assert [layer.name for layer in new.layers if isinstance(layer, L.BatchNormalization)] == ["bn2", "bn3", "bn4"]
    assert rel_err(run(new, x), ref) < 1e-5
    assert_bit_identical(before, model)


def test_fused_activation_is_split_and_blocks_a_following_bn():
    x = inp = keras.Input((10, 10, 3))
    x = L.Conv2D(6, 3, activation="relu", name="conv_relu")(x)
    x = L.BatchNormalization(name="bn_after_fused")(x)
    x = L.Conv2D(8, 3, padding="same", activation="relu6", name="conv_relu6")(x)
    x = L.BatchNormalization(name="bn_ok")(L.Conv2D(5, 1, name="conv_plain")(x))
    x = L.Dense(3, activation="softmax", name="head")(L.Flatten()(x))
    model = randomize_batch_norms(keras.Model(inp, x))
    x = inputs_for(model)
    ref = run(model, x)
    with pytest.warns(UserWarning, match="'bn_after_fused' follows Conv2D 'conv_relu', whose fused activation='relu'"):
        pairs, folded, result = fold_all_batch_norms(model, return_result=True)
    assert [(a.name, b.name) for a, b in pairs] == [("conv_plain", "bn_ok")]
    explain = result.explain()
    assert "bn_after_fused" in explain and "conv_relu_relu" in explain  # the fused activation's node
    names = [layer.name for layer in folded.layers]
    assert names.index("conv_relu") + 1 == names.index("conv_relu_relu")
    assert folded.get_layer("conv_relu").get_config()["activation"] == "linear"
    assert isinstance(folded.get_layer("head_softmax"), L.Activation)
    assert rel_err(run(folded, x), ref) < 1e-5


# ---- equalize_model ------------------------------------------------------------------------------

@pytest.mark.parametrize("relu6", ["bound", "replace", "skip"])
def test_equalize_model_relu6_policies(relu6):
    model = mobile_block()
    x = inputs_for(model)
    ref = run(model, x)
    before = weights_of(model)
    eq, result = equalize_model(model, relu6=relu6, absorb_high_bias=False, return_result=True,
                                scale_criterion="weights")  # DFQ's balance: assert_sets_equalized
    assert_bit_identical(before, model)
    acts = [type(eq.get_layer(n)) for n in ("act1", "act2")]
    layers = [s.layers for s in result.cls.sets]
    if relu6 == "bound":
        assert acts == [BoundedReLU, BoundedReLU]
        assert rel_err(run(eq, x), ref) < 1e-4
        assert ["conv1", "dw", "pw"] in layers
    elif relu6 == "replace":
        assert acts == [L.ReLU, L.ReLU] and eq.get_layer("act1").max_value is None
        assert ["conv1", "dw", "pw"] in layers
        relu_block = mobile_block(relu6=False)  # the same weights with ReLU: what 'replace' must compute
        relu_block.set_weights(model.get_weights())
        assert rel_err(run(eq, x), run(relu_block, x)) < 1e-4
    else:
        assert acts == [L.ReLU, L.ReLU] and eq.get_layer("act1").max_value == 6.0
        assert rel_err(run(eq, x), ref) < 1e-4
        assert "skip" in result.explain()
    assert ["pw", "conv4"] in layers
    assert_sets_equalized(eq, result)


def test_high_bias_absorption_applied_and_close():
    model = mobile_block()
    x = inputs_for(model, batch=4)
    ref = run(model, x)
    eq, result = equalize_model(model, absorb_high_bias=True, return_result=True)
    assert result.high_bias.absorbed, result.explain()
    # Against the same equalization without absorption, then the 3σ rule computed by hand.
    expected = equalize_model(model, absorb_high_bias=False)
    scaled = {(p.layer1, p.layer2): p for st in result.cls.sets for p in st.pairs}
    bn_after = {"conv1": "bn1", "dw": "bn2", "pw": "bn3", "conv4": "bn4"}
    between = {("dw", "pw"): expected.get_layer("act2")}
    for a in result.high_bias.absorbed:
        p, bn = scaled[(a.layer1, a.layer2)], model.get_layer(bn_after[a.layer1])
        c = absorb_high_bias_by_hand(expected.get_layer(a.layer1), expected.get_layer(a.layer2), bn.gamma.numpy(),
                                     bn.beta.numpy(), p.scale, p.relu_between, between.get((a.layer1, a.layer2)))
        np.testing.assert_allclose(a.amount, c, rtol=1e-6, atol=1e-6)
    assert rel_err(run(eq, x), run(expected, x)) < 1e-5
    assert max(np.abs(a.amount).max() for a in result.high_bias.absorbed) > 1e-2  # something moved
    assert rel_err(run(eq, x), ref) < 1e-2  # here the 3σ rule is (close to) exact on these inputs
    by_pair = {(a.layer1, a.layer2) for a in result.high_bias.absorbed}
    assert ("pw", "conv4") in by_pair and ("conv1", "dw") not in by_pair  # dw pads: declined
    _, default = equalize_model(model, return_result=True)
    assert not default.high_bias.absorbed and not default.high_bias.declined  # off by default


@pytest.mark.parametrize("dims", [1, 3])
def test_conv1d_conv3d_transposed_leaky_prelu_padding(dims):
    conv = {1: L.Conv1D, 3: L.Conv3D}[dims]
    conv_t = {1: L.Conv1DTranspose, 3: L.Conv3DTranspose}[dims]
    pad = {1: L.ZeroPadding1D, 3: L.ZeroPadding3D}[dims]
    x = inp = keras.Input((6,) * dims + (3,))
    x = L.BatchNormalization(name="bn0")(conv(6, 3, name="c1")(x))
    x = L.LeakyReLU(0.1, name="leaky")(x)
    x = pad(1, name="pad")(x)
    x = L.BatchNormalization(name="bn1")(conv_t(4, 3, strides=2, name="ct")(x))
    x = L.PReLU(name="prelu")(x)
    x = L.BatchNormalization(name="bn2")(conv(5, 1, name="c3")(x))
    model = randomize_batch_norms(keras.Model(inp, x))
    prelu = model.get_layer("prelu")
    prelu.alpha.assign(RNG.uniform(-0.5, 0.5, prelu.alpha.shape).astype("float32"))
    x = inputs_for(model)
    ref = run(model, x)
    eq, result = equalize_model(model, absorb_high_bias=False, return_result=True,
                                scale_criterion="weights")  # DFQ's balance: assert_sets_equalized
    assert len(result.fold.folded) == 3
    assert [s.layers for s in result.cls.sets] == [["c1", "ct"], ["ct", "c3"]]
    assert rel_err(run(eq, x), ref) < 1e-4
    assert_sets_equalized(eq, result)


def test_separable_conv_is_split_and_scaled_inside():
    x = inp = keras.Input((12, 12, 3))
    x = L.BatchNormalization(name="bn1")(L.Conv2D(8, 3, padding="same", use_bias=False, name="conv1")(x))
    x = L.ReLU(name="relu1")(x)
    x = L.SeparableConv2D(10, 3, padding="same", activation="relu", name="sep")(x)
    x = L.DepthwiseConv2D(3, depth_multiplier=2, name="dw2")(x)  # multiplier 2: not a CLS middle
    x = L.BatchNormalization(name="bn2")(x)
    x = L.Conv2D(4, 1, name="head")(L.MaxPooling2D(name="maxpool")(L.ReLU(name="relu2")(x)))
    model = randomize_batch_norms(keras.Model(inp, x))
    sep = model.get_layer("sep")
    x = inputs_for(model)
    ref = run(model, x)
    eq, result = equalize_model(model, absorb_high_bias=False, return_result=True,
                                scale_criterion="weights")  # DFQ's balance: assert_sets_equalized
    assert type(eq.get_layer("sep_depthwise")) is L.DepthwiseConv2D
    assert type(eq.get_layer("sep_pointwise")) is L.Conv2D
    assert eq.get_layer("sep_pointwise").get_config()["activation"] == "linear"
    assert isinstance(eq.get_layer("sep_relu"), L.Activation)
    assert ["conv1", "sep_depthwise", "sep_pointwise"] in [s.layers for s in result.cls.sets]
    assert ["sep_pointwise", "dw2"] in [s.layers for s in result.cls.sets]
    assert rel_err(run(eq, x), ref) < 1e-4
    assert_sets_equalized(eq, result)
    assert not any(type(layer) is L.SeparableConv2D for layer in eq.layers)
    assert model.get_layer("sep") is sep


def test_activation_layers_and_opaque_ops():
    a = inp = keras.Input((10, 10, 3))
    a = L.Conv2D(6, 3, padding="same", name="c1")(a)
    a = L.Activation("relu6", name="act_relu6")(a)
    a = L.Dropout(0.5, name="drop")(a)
    a = L.Conv2D(6, 3, padding="same", name="c2")(a)
    a = L.Activation("relu", name="act_relu")(a)
    b = L.Conv2D(6, 1, name="c3")(a)
    s = keras.ops.add(a, b)  # a keras operation: opaque, and a fork of c2's output
    s = L.Conv2D(4, 1, name="c4")(L.Activation("swish", name="swish")(s))
    model = keras.Model(inp, s)
    x = inputs_for(model)
    ref = run(model, x)
    eq, result = equalize_model(model, absorb_high_bias=False, return_result=True)
    assert [s.layers for s in result.cls.sets] == [["c1", "c2"]]
    assert isinstance(eq.get_layer("act_relu6"), BoundedReLU)
    # keras.ops.add's layer is auto-named: 'add', or 'add_<n>' after other tests in the process
    assert re.search(r"the output of 'act_relu' feeds 'c3' and 'add(_\d+)?'", result.explain())
    assert rel_err(run(eq, x), ref) < 1e-4


def test_shared_layer_is_opaque_and_sequential_works():
    conv = L.Conv2D(4, 3, padding="same", name="shared")
    x = inp = keras.Input((8, 8, 4))
    y = L.BatchNormalization(name="bn")(conv(conv(x)))
    model = randomize_batch_norms(keras.Model(inp, y))
    pairs, folded, result = fold_all_batch_norms(model, return_result=True)
    assert pairs == [] and "shared#1" in result.explain()
    assert rel_err(run(folded, inputs_for(model)), run(model, inputs_for(model))) < 1e-6

    seq = keras.Sequential([keras.Input((8, 8, 3)), L.Conv2D(4, 3), L.BatchNormalization(), L.ReLU(),
                            L.Conv2D(4, 3), L.BatchNormalization()])
    randomize_batch_norms(seq)
    x = inputs_for(seq)
    eq = equalize_model(seq, absorb_high_bias=False)
    assert isinstance(eq, keras.Model) and len(eq.layers) == 4  # input, conv, relu, conv
    assert rel_err(run(eq, x), run(seq, x)) < 1e-4


def test_subclassed_model_is_refused_with_the_fix():
    class Sub(keras.Model):
        def __init__(self):
            super().__init__()
            self.conv = L.Conv2D(3, 3)

        def call(self, x):
            return self.conv(x)

    model = Sub()
    model(np.zeros((1, 8, 8, 3), "float32"))
    with pytest.raises(prequant.UnsupportedError, match="prepare_model"):
        equalize_model(model)


def test_nan_weight_raises_and_changes_nothing():
    model = mobile_block()
    kernel = model.get_layer("conv4").kernel
    w = kernel.numpy()
    w[0, 0, 0, 0] = np.nan
    kernel.assign(w)
    before = weights_of(model)
    with pytest.raises(prequant.InvalidParameterError, match="conv4"):
        equalize_model(model)
    with pytest.raises(prequant.InvalidParameterError, match="conv4"):
        fold_all_batch_norms(model)
    after = weights_of(model)
    for a, b in zip(before, after):
        assert a.tobytes() == b.tobytes()


def test_nan_weight_in_place_scaling_changes_nothing():
    _, folded = fold_all_batch_norms(mobile_block(relu6=False))
    kernel = folded.get_layer("fc").kernel
    w = kernel.numpy()
    w[0, 0] = np.inf
    kernel.assign(w)
    before = weights_of(folded)
    with pytest.raises(prequant.InvalidParameterError, match="fc"):
        CrossLayerScaling.scale_model(folded)
    assert_bit_identical(before, folded)


def test_in_place_scaling_inside_unsplit_layers():
    """scale_model on a model as built: a SeparableConv2D's two kernels and a fused ReLU6
    ('replace' sets the layer's activation to relu) change in place."""
    x = inp = keras.Input((10, 10, 3))
    x = L.Conv2D(6, 3, activation="relu6", name="c1")(x)
    x = L.SeparableConv2D(8, 3, activation="relu", name="sep")(x)
    x = L.Conv2D(4, 1, name="c2")(x)
    model = keras.Model(inp, x)
    x = inputs_for(model)
    infos = CrossLayerScaling.scale_model(model)  # 'skip': the fused ReLU6 blocks c1's set
    assert [[(p.layer1.name, p.layer2.name) for p in i.cls_pair_info_list] for i in infos] == \
        [[("sep", "sep")], [("sep", "c2")]]  # depthwise part → pointwise part, pointwise part → c2
    config = model.get_config()  # the same model with ReLU at c1: what 'replace' must compute
    (c1_config,) = [entry["config"] for entry in config["layers"] if entry["config"]["name"] == "c1"]
    c1_config["activation"] = "relu"
    relu_model = keras.Model.from_config(config)
    relu_model.set_weights(model.get_weights())
    relu_ref = run(relu_model, x)
    sep, c1 = model.get_layer("sep"), model.get_layer("c1")
    dw_before = sep.depthwise_kernel.numpy().copy()
    infos = CrossLayerScaling.scale_model(model, relu6="replace")
    assert c1.activation is keras.activations.relu and model.get_layer("sep") is sep
    assert [[(p.layer1.name, p.layer2.name) for p in i.cls_pair_info_list] for i in infos][0] == \
        [("c1", "sep"), ("sep", "sep")]  # conv → depthwise part → pointwise part
    assert not np.array_equal(sep.depthwise_kernel.numpy(), dw_before)
    assert rel_err(run(model, x), relu_ref) < 1e-4


def test_equalized_model_saves_and_reloads(tmp_path):
    model = mobile_block()
    x = inputs_for(model)
    eq = equalize_model(model)
    path = tmp_path / "eq.keras"
    eq.save(path)
    loaded = keras.models.load_model(path)
    assert isinstance(loaded.get_layer("act1"), BoundedReLU)
    np.testing.assert_array_equal(run(loaded, x), run(eq, x))


# ---- the step-by-step (in place) API ---------------------------------------------------------------

def test_stepwise_api_like_aimet():
    model = mobile_block()
    x = inputs_for(model)
    relu_model, edits = replace_relu6_with_relu(model)
    assert [e.node for e in edits.edits] == ["act1", "act2"]
    assert relu_model.get_layer("act1").max_value is None and model.get_layer("act1").max_value == 6.0
    relu_ref = run(relu_model, x)
    pairs, folded = fold_all_batch_norms(relu_model)
    bn_dict = {layer: bn for layer, bn in pairs}
    folded_ref = run(folded, x)
    infos = CrossLayerScaling.scale_model(folded)  # in place
    assert infos and all(isinstance(i, ClsSetInfo) for i in infos)
    assert rel_err(run(folded, x), folded_ref) < 1e-4 and rel_err(folded_ref, relu_ref) < 1e-5
    assert [len(i.cls_pair_info_list) for i in infos] == [2, 1, 1]
    assert infos[0].cls_pair_info_list[0].layer1 is folded.get_layer("conv1")
    np.testing.assert_allclose(out_ranges(folded.get_layer("pw")), in_ranges(folded.get_layer("conv4")), rtol=1e-4)
    expected = keras.models.clone_model(folded)
    expected.set_weights(folded.get_weights())
    HighBiasFold.bias_fold(infos, bn_dict)
    assert HighBiasFold.last_result.absorbed
    # Against the 3σ rule computed by hand on the copy (ReLU between: ReLU6 was replaced).
    absorbed = {(a.layer1, a.layer2): a for a in HighBiasFold.last_result.absorbed}
    for p in (p for i in infos for p in i.cls_pair_info_list):
        a = absorbed.pop((p.layer1.name, p.layer2.name), None)
        if a is not None:
            bn = bn_dict[p.layer1]
            c = absorb_high_bias_by_hand(expected.get_layer(p.layer1.name), expected.get_layer(p.layer2.name),
                                         bn.gamma.numpy(), bn.beta.numpy(), p.scale_factor,
                                         p.relu_activation_between_layers)
            np.testing.assert_allclose(a.amount, c, rtol=1e-6, atol=1e-6)
    assert not absorbed
    assert rel_err(run(folded, x), run(expected, x)) < 1e-5


def test_scale_model_in_place_relu6_policies_and_refusal():
    pairs, folded = fold_all_batch_norms(mobile_block())
    x = inputs_for(folded)
    ref = run(folded, x)
    before = weights_of(folded)
    with pytest.raises(prequant.UnsupportedError, match="equalize_model"):
        CrossLayerScaling.scale_model(folded, relu6="bound")  # would need a new BoundedReLU layer
    assert_bit_identical(before, folded)
    infos = CrossLayerScaling.scale_model(folded)  # 'skip': pairs with a ReLU6 between stay unscaled
    assert [[p.layer1.name for p in i.cls_pair_info_list] for i in infos] == [["pw"], ["conv4"]]
    assert "skip" in CrossLayerScaling.last_result.explain()
    assert rel_err(run(folded, x), ref) < 1e-4
    act1 = folded.get_layer("act1")
    infos = CrossLayerScaling.scale_model(folded, relu6="replace")  # ReLU.max_value -> None, in place
    assert folded.get_layer("act1") is act1 and act1.max_value is None
    assert len(infos) == 3


def test_bounded_relu_bounds_follow_in_place_scaling_and_bias_fold():
    """Random function-preserving rescaling (1e-2..1e2) through a BoundedReLU, undone in place;
    then high-bias absorption lowers the bounds with the bias it moves (into the unpadded pw:
    a padded dw is declined)."""
    model = mobile_block()
    model.get_layer("bn2").beta.assign(np.full(8, 4.0, "float32"))
    eq = equalize_model(model, absorb_high_bias=False)
    conv1, act1, dw = eq.get_layer("conv1"), eq.get_layer("act1"), eq.get_layer("dw")
    s = 10 ** RNG.uniform(-2, 2, 8)
    conv1.kernel.assign(conv1.kernel.numpy() * s)
    conv1.bias.assign(conv1.bias.numpy() * s)
    act1.upper.assign(act1.upper.numpy() * s)
    dw.kernel.assign(dw.kernel.numpy() / s[:, None])
    x = inputs_for(eq)
    ref = run(eq, x)
    infos = CrossLayerScaling.scale_model(eq, relu6="bound")
    assert eq.get_layer("act1") is act1
    ratio = out_ranges(conv1) / out_ranges(dw)  # balanced up to the ReLU6 gauge's one factor
    np.testing.assert_allclose(ratio, np.full_like(ratio, ratio[0]), rtol=1e-4)
    assert rel_err(run(eq, x), ref) < 1e-4
    act2 = eq.get_layer("act2")
    upper_before = act2.upper.numpy().copy()
    HighBiasFold.bias_fold(infos, {conv1: model.get_layer("bn1"), dw: model.get_layer("bn2")})
    absorbed = {(a.layer1, a.layer2): a.amount for a in HighBiasFold.last_result.absorbed}
    assert ("conv1", "dw") not in absorbed
    c = absorbed[("dw", "pw")]
    assert c.max() > 0
    np.testing.assert_allclose(act2.upper.numpy(), upper_before - c, rtol=1e-5, atol=1e-5)


def test_manual_scale_cls_sets_and_info_list():
    _, folded = fold_all_batch_norms(mobile_block(relu6=False))
    x = inputs_for(folded)
    ref = run(folded, x)
    get = folded.get_layer
    sets = [(get("conv1"), get("dw"), get("pw")), (get("pw"), get("conv4"))]
    scales = CrossLayerScaling.scale_cls_sets(sets)
    assert isinstance(scales[0], tuple) and len(scales[0]) == 2 and scales[1].shape == (16,)
    assert rel_err(run(folded, x), ref) < 1e-4
    np.testing.assert_allclose(out_ranges(get("pw")), in_ranges(get("conv4")), rtol=1e-4)
    infos = CrossLayerScaling.create_cls_set_info_list(sets, scales, [(True, True), False])
    assert len(infos[0].cls_pair_info_list) == 2 and len(infos[1].cls_pair_info_list) == 1
    assert infos[1].cls_pair_info_list[0].relu_activation_between_layers is False
    infos = CrossLayerScaling.create_cls_set_info_list(sets, scales, [])  # unknown: counted as ReLU
    assert all(p.relu_activation_between_layers for i in infos for p in i.cls_pair_info_list)


def test_manual_scale_checks_against_model_and_high_bias_without_model():
    model = mobile_block(relu6=False)
    pairs, folded = fold_all_batch_norms(model)
    get = folded.get_layer
    before = weights_of(folded)
    with pytest.raises(prequant.InvalidRequestError, match="not adjacent"):
        CrossLayerScaling.scale_cls_sets([(get("conv1"), get("pw"))], model=folded)
    with pytest.raises(prequant.InvalidRequestError):
        CrossLayerScaling.scale_cls_sets([(get("conv1"), get("conv4"))])  # 8 vs 16 channels
    with pytest.raises(prequant.InvalidRequestError, match="split it first|cannot be cross-layer scaled"):
        CrossLayerScaling.scale_cls_sets([(get("conv1"), get("act1"))])
    assert_bit_identical(before, folded)
    scales = CrossLayerScaling.scale_cls_sets([(get("pw"), get("conv4"))], model=folded)
    infos = CrossLayerScaling.create_cls_set_info_list([(get("pw"), get("conv4"))], scales, [False])
    bias_before = get("conv4").bias.numpy().copy()
    HighBiasFold.bias_fold(infos, [(layer, bn) for layer, bn in pairs])  # a list of pairs, as AIMET's example
    (absorbed,) = HighBiasFold.last_result.absorbed
    assert np.abs(absorbed.amount).max() > 0  # no ReLU between: all of β' moves
    assert not np.array_equal(get("conv4").bias.numpy(), bias_before)


def test_manual_sets_bias_fold_matches_the_3_sigma_rule():
    """AIMET's manual path (no model): scale_cls_sets on given sets, create_cls_set_info_list,
    bias_fold with the folded BNs — against the 3σ rule computed by hand; the pair into the padded
    depthwise is declined (its border taps would miss the shift)."""
    model = mobile_block(relu6=False)
    model.get_layer("bn3").beta.assign(model.get_layer("bn3").beta.numpy() + 2.0)
    pairs, folded = fold_all_batch_norms(model)
    bn_dict = dict(pairs)
    x = inputs_for(folded, batch=4)
    g = folded.get_layer
    sets = [(g("conv1"), g("dw"), g("pw")), (g("pw"), g("conv4"))]
    scales = CrossLayerScaling.scale_cls_sets(sets)
    infos = CrossLayerScaling.create_cls_set_info_list(sets, scales, [(True, True), False])
    expected = keras.models.clone_model(folded)
    expected.set_weights(folded.get_weights())
    HighBiasFold.bias_fold(infos, bn_dict)
    result = HighBiasFold.last_result
    assert [list(d.nodes) for d in result.declined] == [["conv1", "dw"]] and "border" in result.declined[0].reason
    assert sorted((a.layer1, a.layer2) for a in result.absorbed) == [("dw", "pw"), ("pw", "conv4")]
    by_pair = {(p.layer1.name, p.layer2.name): p for i in infos for p in i.cls_pair_info_list}
    for a in result.absorbed:
        p = by_pair[(a.layer1, a.layer2)]
        bn = bn_dict[p.layer1]
        c = absorb_high_bias_by_hand(expected.get_layer(a.layer1), expected.get_layer(a.layer2), bn.gamma.numpy(),
                                     bn.beta.numpy(), p.scale_factor, p.relu_activation_between_layers)
        np.testing.assert_allclose(a.amount, c, rtol=1e-6, atol=1e-6)
    assert max(np.abs(a.amount).max() for a in result.absorbed) > 1e-2  # something moved
    assert rel_err(run(folded, x), run(expected, x)) < 1e-5


def test_manual_sets_that_no_chain_can_hold_are_refused_unchanged():
    """Without a model the given sets are connected by the engine (connect_layer_chains): a layer
    fed by two different layers, or a cycle, is refused before any weight changes."""
    _, folded = fold_all_batch_norms(mobile_block(relu6=False))
    g = folded.get_layer
    before = weights_of(folded)
    with pytest.raises(prequant.InvalidRequestError, match="Conv2D 'conv4' is fed by two different layers"):
        CrossLayerScaling.scale_cls_sets([(g("pw"), g("conv4")), (g("dw"), g("conv4"))])
    with pytest.raises(prequant.InvalidRequestError, match="in a cycle"):
        CrossLayerScaling.scale_cls_sets([(g("pw"), g("conv4")), (g("conv4"), g("pw"))])
    assert_bit_identical(before, folded)


def test_high_bias_gives_a_bias_in_place_and_ignores_bns_folded_before():
    x = inp = keras.Input((8, 8, 3))
    x = L.BatchNormalization(name="bn1")(L.Conv2D(6, 3, name="c1")(x))
    x = L.Conv2D(5, 1, use_bias=False, name="c2")(L.ReLU(name="r")(x))
    y = L.Dense(3, name="fc")(L.BatchNormalization(name="bn_first")(L.Flatten()(x)))
    model = randomize_batch_norms(keras.Model(inp, y))
    model.get_layer("bn1").beta.assign(np.full(6, 5.0, "float32"))  # large bias: something to absorb
    pairs, folded = fold_all_batch_norms(model)
    bn_dict = dict(pairs)
    assert {(a.name, b.name) for a, b in pairs} == {("c1", "bn1"), ("fc", "bn_first")}
    infos = CrossLayerScaling.scale_model(folded)
    c2 = folded.get_layer("c2")
    assert not c2.use_bias
    HighBiasFold.bias_fold(infos, bn_dict)
    assert [(a.layer1, a.layer2, a.bias_added) for a in HighBiasFold.last_result.absorbed] == [("c1", "c2", True)]
    assert c2.use_bias and c2.bias.shape == (5,)
    assert [v.path for v in c2.weights] == ["c2/kernel", "c2/bias"]
    xs = inputs_for(folded)
    before = run(folded, xs)
    reloaded = keras.Model.from_config(folded.get_config())
    reloaded.set_weights(folded.get_weights())
    np.testing.assert_allclose(run(reloaded, xs), before, rtol=1e-6, atol=1e-6)


# ---- the same network in PyTorch and in Keras ------------------------------------------------------

def test_torch_and_keras_come_out_with_the_same_weights():
    torch = pytest.importorskip("torch")
    from torch import nn

    from prequant.torch.cross_layer_equalization import equalize_model as torch_equalize

    torch.manual_seed(0)
    tm = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU6(),
        nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False), nn.BatchNorm2d(8), nn.ReLU6(),
        nn.Conv2d(8, 16, 1, bias=False), nn.BatchNorm2d(16),
    ).eval()
    g = torch.Generator().manual_seed(3)
    for m in tm:
        if isinstance(m, nn.BatchNorm2d):
            c = m.num_features
            with torch.no_grad():
                m.running_var.copy_(10 ** (torch.rand(c, generator=g) * 3 - 2))
                m.running_mean.copy_(torch.randn(c, generator=g))
                m.weight.copy_(torch.randn(c, generator=g))
                m.bias.copy_(torch.randn(c, generator=g) + 1.0)

    x = inp = keras.Input((10, 10, 3))
    x = L.Conv2D(8, 3, padding="same", use_bias=False, name="conv1")(x)
    x = L.ReLU(6.0, name="act1")(L.BatchNormalization(epsilon=1e-5, name="bn1")(x))
    x = L.DepthwiseConv2D(3, padding="same", use_bias=False, name="dw")(x)
    x = L.ReLU(6.0, name="act2")(L.BatchNormalization(epsilon=1e-5, name="bn2")(x))
    x = L.BatchNormalization(epsilon=1e-5, name="bn3")(L.Conv2D(16, 1, use_bias=False, name="pw")(x))
    km = keras.Model(inp, x)

    def np_(t):
        return t.detach().numpy()

    km.get_layer("conv1").kernel.assign(np_(tm[0].weight).transpose(2, 3, 1, 0))  # (O,I,kh,kw) -> (kh,kw,I,O)
    km.get_layer("dw").kernel.assign(np_(tm[3].weight).transpose(2, 3, 0, 1))     # (C,1,kh,kw) -> (kh,kw,C,1)
    km.get_layer("pw").kernel.assign(np_(tm[6].weight).transpose(2, 3, 1, 0))
    for bn_t, name in ((tm[1], "bn1"), (tm[4], "bn2"), (tm[7], "bn3")):
        bn_k = km.get_layer(name)
        bn_k.set_weights([np_(bn_t.weight), np_(bn_t.bias), np_(bn_t.running_mean), np_(bn_t.running_var)])

    xt = torch.randn(2, 3, 10, 10)
    xk = np.transpose(xt.numpy(), (0, 2, 3, 1))
    np.testing.assert_allclose(run(km, xk), np.transpose(np_(tm(xt)), (0, 2, 3, 1)), rtol=1e-4, atol=1e-5)

    t_result = torch_equalize(tm, absorb_high_bias=True)  # in place; relu6='bound'
    keq, k_result = equalize_model(km, absorb_high_bias=True, return_result=True)
    assert [s.layers for s in k_result.cls.sets] == [["conv1", "dw", "pw"]]
    assert len(t_result.cls.sets) == 1 and t_result.high_bias.absorbed and k_result.high_bias.absorbed

    def close(keras_array, torch_array):
        np.testing.assert_allclose(keras_array, torch_array, rtol=1e-5, atol=1e-6 * np.abs(torch_array).max())

    close(keq.get_layer("conv1").kernel.numpy(), np_(tm[0].weight).transpose(2, 3, 1, 0))
    close(keq.get_layer("dw").kernel.numpy(), np_(tm[3].weight).transpose(2, 3, 0, 1))
    close(keq.get_layer("pw").kernel.numpy(), np_(tm[6].weight).transpose(2, 3, 1, 0))
    for k_name, t_mod in (("conv1", tm[0]), ("dw", tm[3]), ("pw", tm[6])):
        close(keq.get_layer(k_name).bias.numpy(), np_(t_mod.bias))
    close(keq.get_layer("act1").upper.numpy(), tm[2].upper.numpy())
    close(keq.get_layer("act2").upper.numpy(), tm[5].upper.numpy())
    np.testing.assert_allclose(run(keq, xk), np.transpose(np_(tm(xt)), (0, 2, 3, 1)), rtol=1e-4, atol=1e-4)


def test_bias_correction_moves_biases_by_the_engine_correction():
    model = mobile_block()
    x = inputs_for(model, batch=2)
    plain = equalize_model(model)
    corrected, result = equalize_model(model, return_result=True, bias_correction=True,
                                       bias_correction_per_channel=True)
    bc = result.bias_correction
    assert bc.changes_fp32_output and "Bias correction" in result.explain()
    # dw and pw read a BN's statistics (folded into conv1 / dw) through ReLU6; conv4 reads pw's
    # folded BN directly; fc reads ReLU → global average pooling (mean kept); conv1 reads the graph input.
    assert {c.layer for c in bc.corrected} == {"dw", "pw", "conv4", "fc"}
    assert {d.nodes[0] for d in bc.declined} == {"conv1"}
    for c in bc.corrected:
        before = plain.get_layer(c.layer).bias.numpy()
        after = corrected.get_layer(c.layer).bias.numpy()
        np.testing.assert_allclose(after, before - np.asarray(c.correction), rtol=1e-5, atol=1e-6)
    assert rel_err(run(corrected, x), run(plain, x)) > 0  # the FP32 function changes on purpose


def test_bias_correction_through_residual_add_and_declined_after_max_pooling():
    """A residual Add of two BN outputs: E[a + b] = E[a] + E[b] feeds the conv after it; a Dense
    behind max pooling is declined, naming the pool (max pooling raises the mean)."""
    x = inp = keras.Input((10, 10, 4))
    a = L.BatchNormalization(name="bn_a")(L.Conv2D(6, 3, padding="same", name="conv_a")(x))
    b = L.BatchNormalization(name="bn_b")(L.Conv2D(6, 1, name="conv_b")(x))
    s = L.Add(name="res")([a, b])
    y = L.Conv2D(8, 3, padding="same", name="after_add")(s)
    y = L.ReLU(name="relu")(L.BatchNormalization(name="bn_y")(y))
    y = L.Dense(3, name="fc")(L.GlobalMaxPooling2D(name="gmp")(y))
    model = randomize_batch_norms(keras.Model(inp, y))
    plain = equalize_model(model)
    corrected, result = equalize_model(model, return_result=True, bias_correction=True)
    bc = result.bias_correction
    by_layer = {c.layer: c for c in bc.corrected}
    assert set(by_layer) == {"after_add"}, [(d.nodes, d.reason) for d in bc.declined]
    assert set(by_layer["after_add"].statistics_from.split(", ")) == {"conv_a", "conv_b"}
    reasons = {d.nodes[0]: d.reason for d in bc.declined}
    assert "max pooling 'gmp'" in reasons["fc"], reasons
    before, after = plain.get_layer("after_add").bias.numpy(), corrected.get_layer("after_add").bias.numpy()
    np.testing.assert_allclose(after, before - np.asarray(by_layer["after_add"].correction), rtol=1e-5, atol=1e-6)
    assert np.abs(np.asarray(by_layer["after_add"].correction)).max() > 0
