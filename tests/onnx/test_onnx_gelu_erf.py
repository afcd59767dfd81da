"""GELU written with Erf, 0.5·x·(1 + Erf(x/√2)) — what torch.onnx (TorchScript and dynamo) exports for nn.GELU below opset
20 and what many exporters emit — is read as one gated activation (gate gelu_erf), in each of the
groupings exporters use; with gated_activations=True the equalized model gives onnxruntime's output
of the original, and the scaled form prequant writes (Mul(x, s/√2) inside) is read back.
Negative cases: a different constant, or an intermediate read twice, is not a GELU."""

from collections import Counter

import numpy as np
import onnx
import pytest

import prequant.onnx as pqo
from pq_onnx_helpers import Builder, max_rel_err, run_ort


def _gelu_erf(b: Builder, x: str, form: str, half: float = 0.5) -> str:
    """GELU (erf) in one of the exporters' groupings."""
    if form == "div":  # torch.onnx: Mul(Mul(x, Add(Erf(Div(x, √2)), 1)), 0.5)
        u = b.node("Div", [x, b.init("sqrt2", np.array(np.sqrt(2.0)))])
    else:
        u = b.node("Mul", [x, b.init("inv_sqrt2", np.array(1 / np.sqrt(2.0)))])
    e = b.node("Erf", [u])
    a = b.node("Add", [b.init("one", np.array(1.0)), e] if form == "half_first" else [e, b.init("one", np.array(1.0))])
    h = b.init("half", np.array(half))
    if form == "half_first":  # Mul(Mul(x, 0.5), Add(1, Erf(Mul(x, 1/√2))))
        return b.node("Mul", [b.node("Mul", [x, h]), a])
    return b.node("Mul", [h, b.node("Mul", [a, x])]) if form == "mul" else b.node("Mul", [b.node("Mul", [x, a]), h])


def _model(form: str, half: float = 0.5):
    b = Builder(seed=5)
    y = _gelu_erf(b, b.bn(b.conv("x", 3, 8), 8), form, half)
    y = _gelu_erf(b, b.bn(b.conv(y, 8, 8, groups=8), 8), form, half)
    b.conv(y, 8, 4, k=1, name="head")
    inputs = {"x": (2, 3, 9, 9)}
    return b, b.model(inputs, ["head_out"]), inputs


@pytest.mark.parametrize("form", ["div", "mul", "half_first"])
def test_erf_gelu_is_read_as_a_gated_activation(form):
    b, model, inputs = _model(form)
    feeds = b.feeds(inputs, scale=3.0)
    ref = run_ort(model, feeds)
    out, result = pqo.equalize_model(model, gated_activations=True)
    onnx.checker.check_model(out)
    assert max_rel_err(ref, run_ort(out, feeds)) < 1e-5
    assert [s.layers for s in result.cls.sets] == [["conv1", "conv2", "head"]], \
        (result.cls.sets, [d.reason for d in result.cls.declined])
    assert sum(e.kind == "gate_scaled" for e in result.cls.activation_edits) == 2
    # the scaled form prequant writes is read back: a second pass scales through it again
    again, result2 = pqo.equalize_model(out, gated_activations=True)
    assert [s.layers for s in result2.cls.sets] == [["conv1", "conv2", "head"]]
    assert max_rel_err(ref, run_ort(again, feeds)) < 1e-5


def test_without_the_option_an_erf_gelu_declines_as_gated():
    b, model, inputs = _model("div")
    out, result = pqo.equalize_model(model)
    reasons = [d.reason for d in result.cls.declined]
    assert sum("gated_activations=True" in r for r in reasons) == 2, reasons
    feeds = b.feeds(inputs, scale=3.0)
    assert max_rel_err(run_ort(model, feeds), run_ort(out, feeds)) < 1e-6


def test_not_a_gelu_other_constant_or_intermediate_read_twice():
    _, model, _ = _model("div", half=0.4)  # 0.4·x·(1 + erf(x/√2)): not GELU
    _, result = pqo.equalize_model(model, gated_activations=True)
    assert not result.cls.sets
    assert not any("gated_activations" in d.reason for d in result.cls.declined)
    b = Builder(seed=2)
    y = b.conv("x", 3, 4)
    u = b.node("Div", [y, b.init("sqrt2", np.array(np.sqrt(2.0)))])
    e = b.node("Erf", [u])
    a = b.node("Add", [e, b.init("one", np.array(1.0))])
    g = b.node("Mul", [b.node("Mul", [y, a]), b.init("half", np.array(0.5))])
    b.conv(g, 4, 2, k=1, name="head")
    b.node("Identity", [e], ["erf_out"])  # the Erf is read twice
    inputs = {"x": (1, 3, 6, 6)}
    model = b.model(inputs, ["head_out", "erf_out"])
    feeds = b.feeds(inputs)
    out, result = pqo.equalize_model(model, gated_activations=True)
    assert not result.cls.sets
    assert max_rel_err(run_ort(model, feeds), run_ort(out, feeds)) == 0


@pytest.mark.parametrize("dynamo,opset", [(False, 17), (True, 18)], ids=["torchscript-17", "dynamo-18"])
def test_torch_export_of_nn_gelu(tmp_path, dynamo, opset):
    """TorchScript: Mul(Mul(x, Add(Erf(Div(x, √2)), 1)), 0.5); dynamo: Mul(x, Mul(Add(...), 0.5))."""
    torch = pytest.importorskip("torch")
    from torch import nn

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.GELU(),
                        nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.GELU(), nn.Conv2d(8, 4, 1)).eval()
    bn = net[1]
    bn.running_mean.uniform_(-1, 1)
    bn.running_var.copy_(torch.exp(torch.empty(8).uniform_(np.log(1e-2), np.log(10))))
    bn.weight.data.copy_(torch.randn(8) * 1.5)
    with torch.no_grad():
        net[0].weight.mul_(torch.exp(torch.empty(8, 1, 1, 1).uniform_(-2.3, 2.3)))
    path = tmp_path / "gelu.onnx"
    torch.onnx.export(net, (torch.randn(1, 3, 9, 9),), str(path), opset_version=opset, dynamo=dynamo)
    model = onnx.load(str(path))
    ops = Counter(n.op_type for n in model.graph.node)
    assert ops["Erf"] == 2 and ops["Gelu"] == 0, ops
    feeds = {model.graph.input[0].name: np.random.default_rng(0).normal(0, 2, (1, 3, 9, 9)).astype(np.float32)}
    out, result = pqo.equalize_model(model, gated_activations=True)
    assert sum(e.kind == "gate_scaled" for e in result.cls.activation_edits) == 2, \
        [d.reason for d in result.cls.declined]
    assert max_rel_err(run_ort(model, feeds), run_ort(out, feeds)) < 1e-5
