"""Cross-layer scaling through x·g(x) activations in ONNX models (gated_activations=True /
`prequant equalize --gated-activations`): SiLU as Mul(x, Sigmoid(x)), HardSwish, Gelu (opset 20,
both approximations) and the Mul(x, Sigmoid(Mul(x, s))) form prequant writes are read as one
gated activation; the equalized model, written with standard ops, gives onnxruntime's output of
the original; equalizing the written model again reads its gates back."""

from collections import Counter

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import prequant.onnx as pqo
from pq_onnx_helpers import Builder, equalize_json, find_cli, max_rel_err, run_ort


def _silu(b: Builder, x: str, swap: bool = False) -> str:
    s = b.node("Sigmoid", [x])
    return b.node("Mul", [s, x] if swap else [x, s])


def _model(gelu: bool, dtype=np.float32):
    """conv-BN-SiLU → conv-BN-SiLU(Mul inputs swapped) → conv-BN-HardSwish → depthwise-BN-[Gelu] → conv."""
    b = Builder(seed=3, dtype=dtype)
    y = _silu(b, b.bn(b.conv("x", 3, 8), 8))
    y = _silu(b, b.bn(b.conv(y, 8, 8, k=1), 8), swap=True)
    y = b.node("HardSwish", [b.bn(b.conv(y, 8, 12, k=1), 12)])
    y = b.bn(b.conv(y, 12, 12, groups=12), 12)
    if gelu:
        y = b.node("Gelu", [y], approximate="none")
        y = b.node("Gelu", [b.bn(b.conv(y, 12, 12, k=1), 12)], approximate="tanh")
    b.conv(y, 12, 5, k=1, name="head")
    inputs = {"x": (2, 3, 9, 9)}
    return b, b.model(inputs, ["head_out"], opset=20 if gelu else 17), inputs


def _unbalance(model: onnx.ModelProto, seed: int = 0) -> onnx.ModelProto:
    """BN gammas and betas times 1e-2..1e2 per channel: work for CLS."""
    rng = np.random.default_rng(seed)
    for t in model.graph.initializer:
        if t.name.startswith(("gamma", "beta")):
            a = numpy_helper.to_array(t)
            f = 10 ** rng.uniform(-2, 2, a.shape)
            t.CopyFrom(numpy_helper.from_array((a * f).astype(a.dtype), t.name))
    return model


@pytest.mark.parametrize("gelu", [False, True])
def test_equalized_model_keeps_onnxruntime_output(gelu):
    if gelu and onnx.defs.onnx_opset_version() < 20:
        pytest.skip("Gelu needs opset 20")
    b, model, inputs = _model(gelu)
    model = _unbalance(model)
    feeds = b.feeds(inputs, scale=3.0)
    ref = run_ort(model, feeds)
    out, result = pqo.equalize_model(model, gated_activations=True)
    onnx.checker.check_model(out)
    assert max_rel_err(ref, run_ort(out, feeds)) < 1e-5
    edits = [e for e in result.cls.activation_edits if e.kind == "gate_scaled"]
    assert len(edits) == (5 if gelu else 3)
    ops = Counter(n.op_type for n in out.graph.node)
    assert ops["HardSwish"] == 0 and ops["HardSigmoid"] == 1 and ops["Sigmoid"] == 2
    if gelu:
        assert ops["Erf"] == 1 and ops["Gelu"] == 1
    # Written back with the gate scales, read back as gated activations (the SiLU, HardSwish and
    # GELU Erf forms; Gelu(s·x, tanh)·(1/s) is not read back): a second pass scales through them again.
    again, result2 = pqo.equalize_model(out, gated_activations=True)
    assert sum(e.kind == "gate_scaled" for e in result2.cls.activation_edits) == (4 if gelu else 3)
    # gelu: conv3 → conv4 → conv5 through the Erf GELU; the Gelu(tanh)·(1/s) before the head is opaque
    assert len(result2.cls.sets) == 3
    assert max_rel_err(ref, run_ort(again, feeds)) < 1e-5


def test_off_by_default_declines_and_keeps_the_model():
    b, model, inputs = _model(False)
    out, result = pqo.equalize_model(model)
    reasons = [d.reason for d in result.cls.declined]
    assert sum("gated_activations=True" in r for r in reasons) == 3, reasons
    ops = Counter(n.op_type for n in out.graph.node)
    assert ops["Sigmoid"] == 2 and ops["HardSwish"] == 1 and ops["HardSigmoid"] == 0


def test_a_sigmoid_read_twice_is_not_a_gate():
    """Sigmoid(x) also read elsewhere: Mul(x, Sigmoid(x)) is not a self-contained SiLU."""
    b = Builder(seed=1)
    y = b.conv("x", 3, 4)
    s = b.node("Sigmoid", [y])
    m = b.node("Mul", [y, s])
    b.conv(m, 4, 2, k=1, name="head")
    b.node("Identity", [s], ["gate_out"])
    inputs = {"x": (1, 3, 6, 6)}
    model = b.model(inputs, ["head_out", "gate_out"])
    feeds = b.feeds(inputs)
    out, result = pqo.equalize_model(model, gated_activations=True)
    assert not result.cls.sets
    assert max_rel_err(run_ort(model, feeds), run_ort(out, feeds)) == 0


def test_cli_flag(tmp_path):
    cli = find_cli()
    if cli is None:
        pytest.skip("the prequant tool is not built")
    b, model, inputs = _model(False)
    model = _unbalance(model)
    src, dst = tmp_path / "m.onnx", tmp_path / "eq.onnx"
    onnx.save(model, src)
    report = equalize_json(cli, src, dst, "--gated-activations")
    gates = [e for e in report["cls"]["activation_edits"] if e["kind"] == "gate_scaled"]
    assert len(gates) == 3 and all(len(e["gate_scale"]) > 1 for e in gates)
    feeds = b.feeds(inputs, scale=3.0)
    assert max_rel_err(run_ort(model, feeds), run_ort(str(dst), feeds)) < 1e-5
