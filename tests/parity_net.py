"""One network with residual Adds, fan-out and a channel Concat, as framework-neutral numpy
weights, and its ONNX form: the fixture of the front-end parity tests.

The PyTorch test (tests/torch/test_torch_parity_regions.py) and the Keras test
(tests/keras/test_keras_parity_regions.py) build the same network from ``weights()`` in their
framework, equalize it through their front end with regions on, and compare the equalized
weights with what the `prequant` tool makes of ``onnx_model()``: torch == ONNX and
Keras == ONNX, so the three front ends agree (the two frameworks cannot share one process).

    x ─ c0·b0·relu ─ s ─┬───────────────────────────── add ─ relu ─ t ─┬─ ca·ba·relu ─┐
                        └─ c1·b1·relu ─ c2·b2 ─────────┘                └─ cb·bb·relu ─ concat ─ cc·bc·relu ─ gap ─ fc

Layouts are PyTorch's (conv OIHW, linear (out, in)); 3×3 convs pad 1 (Keras 'same').

The gated variant (``gated=True``; the tests run it with gated_activations=True) puts x·g(x)
activations after c1 (SiLU), ca (HardSwish) and cc (GELU, erf) instead of ReLU: in ONNX
Mul(x, Sigmoid(x)), HardSwish and 0.5·x·(1 + Erf(x/√2)) (torch.onnx's GELU below opset 20).
"""

from __future__ import annotations

import numpy as np

INPUT_SHAPE = (1, 3, 12, 12)  # NCHW
EPS = 1e-5
# name: (in, out, kernel); every conv is followed by the BN named "b" + name[1:]
CONVS = {"c0": (3, 8, 3), "c1": (8, 8, 3), "c2": (8, 8, 1), "ca": (8, 4, 1), "cb": (8, 4, 3), "cc": (8, 6, 1)}
FC = (6, 5)
GATED = {"c1": "silu", "ca": "hard_swish", "cc": "gelu"}  # the gated variant's activations


def activation(conv: str, gated: bool) -> str:
    """The activation after `conv`'s BN: 'relu', or in the gated variant GATED's."""
    return GATED.get(conv, "relu") if gated else "relu"


def bn_name(conv: str) -> str:
    return "b" + conv[1:]


def weights(seed: int = 0) -> dict[str, np.ndarray]:
    """Float32 weights with realistic imbalance: per-channel weight scales over two decades and
    random BN statistics (var in [1e-2, 10], non-zero means, some negative gamma)."""
    rng = np.random.default_rng(seed)
    w = {}
    for name, (cin, cout, k) in CONVS.items():
        spread = np.exp(rng.uniform(-2.3, 2.3, (cout, 1, 1, 1)))
        w[name + ".weight"] = rng.normal(0, 1 / np.sqrt(cin * k * k), (cout, cin, k, k)) * spread
        w[name + ".bias"] = rng.normal(0, 0.1, cout)
        bn = bn_name(name)
        w[bn + ".weight"] = rng.uniform(0.5, 2.0, cout) * rng.choice([1.0, -1.0], cout, p=[0.8, 0.2])
        w[bn + ".bias"] = rng.normal(0.2, 0.5, cout)
        w[bn + ".running_mean"] = rng.normal(0.5, 1.0, cout)
        w[bn + ".running_var"] = np.exp(rng.uniform(np.log(1e-2), np.log(10), cout))
    w["fc.weight"] = rng.normal(0, 1 / np.sqrt(FC[0]), (FC[1], FC[0]))
    w["fc.bias"] = rng.normal(0, 0.1, FC[1])
    return {k: v.astype(np.float32) for k, v in w.items()}


def onnx_model(w: dict[str, np.ndarray], gated: bool = False):
    """The network as an ONNX model (opset 17), initializers named like ``weights()``."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes = []
    consts = {"sqrt2": np.sqrt(2.0), "one": 1.0, "half": 0.5}
    extra = [numpy_helper.from_array(np.array(v, np.float32), k) for k, v in consts.items()] if gated else []

    def act(kind: str, x: str) -> str:
        y = x + "_" + kind
        if kind == "relu":
            nodes.append(helper.make_node("Relu", [x], [y], name=y))
        elif kind == "silu":
            nodes.append(helper.make_node("Sigmoid", [x], [x + "_sig"], name=x + "_sig"))
            nodes.append(helper.make_node("Mul", [x, x + "_sig"], [y], name=y))
        elif kind == "hard_swish":
            nodes.append(helper.make_node("HardSwish", [x], [y], name=y))
        else:  # gelu, as torch.onnx writes it below opset 20
            for op, ins, out in [("Div", [x, "sqrt2"], "_u"), ("Erf", [x + "_u"], "_erf"),
                                 ("Add", [x + "_erf", "one"], "_a"), ("Mul", [x, x + "_a"], "_xa")]:
                nodes.append(helper.make_node(op, ins, [x + out], name=x + out))
            nodes.append(helper.make_node("Mul", [x + "_xa", "half"], [y], name=y))
        return y

    def conv_bn_relu(name: str, x: str, relu: bool = True) -> str:
        k = CONVS[name][2]
        nodes.append(helper.make_node("Conv", [x, name + ".weight", name + ".bias"], [name], name=name,
                                      kernel_shape=[k, k], pads=[k // 2] * 4))
        bn = bn_name(name)
        nodes.append(helper.make_node("BatchNormalization",
                                      [name] + [f"{bn}.{p}" for p in ("weight", "bias", "running_mean", "running_var")],
                                      [bn], name=bn, epsilon=EPS))
        return act(activation(name, gated), bn) if relu else bn

    s = conv_bn_relu("c0", "x")
    r = conv_bn_relu("c2", conv_bn_relu("c1", s), relu=False)
    nodes.append(helper.make_node("Add", [s, r], ["add"], name="add"))
    nodes.append(helper.make_node("Relu", ["add"], ["t"], name="add_relu"))
    nodes.append(helper.make_node("Concat", [conv_bn_relu("ca", "t"), conv_bn_relu("cb", "t")], ["cat"],
                                  name="cat", axis=1))
    nodes.append(helper.make_node("GlobalAveragePool", [conv_bn_relu("cc", "cat")], ["gap"], name="gap"))
    nodes.append(helper.make_node("Flatten", ["gap"], ["flat"], name="flat", axis=1))
    nodes.append(helper.make_node("Gemm", ["flat", "fc.weight", "fc.bias"], ["y"], name="fc", transB=1))
    graph = helper.make_graph(
        nodes, "parity", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(INPUT_SHAPE))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [INPUT_SHAPE[0], FC[1]])],
        [numpy_helper.from_array(v, k) for k, v in w.items()] + extra)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    return model


def cli() -> str:
    """The `prequant` tool under test: $PREQUANT_CLI, else the one on PATH."""
    import os
    import shutil

    import pytest

    path = os.environ.get("PREQUANT_CLI") or shutil.which("prequant")
    if not path:
        pytest.fail("the `prequant` tool is not on PATH (pip install .) and PREQUANT_CLI is not set")
    return path


def equalize_onnx(tmp_path, w: dict[str, np.ndarray], extra_args=(), gated: bool = False) -> dict[str, np.ndarray]:
    """Run `prequant equalize --regions` on ``onnx_model(w, gated)`` (gated: with
    --gated-activations); returns every Conv and Gemm's weight and bias after it, keyed like
    ``weights()`` ("c0.weight", "fc.bias"...)."""
    import subprocess

    import onnx
    from onnx import numpy_helper

    src, dst = tmp_path / "parity.onnx", tmp_path / "parity_eq.onnx"
    onnx.save(onnx_model(w, gated), str(src))
    gate_flag = ["--gated-activations"] if gated else []
    subprocess.run([cli(), "equalize", str(src), "-o", str(dst), "--regions", *gate_flag, *extra_args],
                   check=True, capture_output=True)
    out = onnx.load(str(dst))
    inits = {i.name: numpy_helper.to_array(i) for i in out.graph.initializer}
    found = {}
    for node in out.graph.node:
        if node.op_type in ("Conv", "Gemm"):
            found[node.name + ".weight"] = inits[node.input[1]]
            found[node.name + ".bias"] = inits[node.input[2]]
    assert sorted(found) == sorted(f"{n}.{p}" for n in [*CONVS, "fc"] for p in ("weight", "bias")), sorted(found)
    return found


def assert_regions(result) -> None:
    """The regions every front end must find: the residual stream (c0 and c2 write it; c1, ca and
    cb read it) and the concat (ca, cb → cc)."""
    regions = sorted((sorted(r.sources), sorted(r.sinks)) for r in result.regions.regions)
    assert regions == [(["c0", "c2"], ["c1", "ca", "cb"]), (["ca", "cb"], ["cc"])], \
        (regions, [d.reason for d in result.regions.declined])


def assert_gates_scaled(result) -> None:
    """The gated variant: all three x·g(x) activations were scaled through (by a set or a region)."""
    edits = list(result.cls.activation_edits) + list(result.regions.activation_edits)
    assert len({e.node for e in edits if e.kind == "gate_scaled"}) == 3, edits


def assert_same_weights(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    """Every equalized weight and bias equal to 1e-5 of its tensor's largest magnitude."""
    assert sorted(got) == sorted(want)
    for key in sorted(want):
        scale = float(np.max(np.abs(want[key]))) or 1.0
        np.testing.assert_allclose(got[key], want[key], rtol=0, atol=1e-5 * scale, err_msg=key)
