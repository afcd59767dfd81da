"""The ReLU6 'bound' policy's BoundedReLU: min(clamp(x, 0, 6), upper[c]) with every bound <= 6.

Before: BoundedReLU was min(relu(x), upper) with bounds 6/s[c] of any size; exported to ONNX as
        Relu then Min, so no quantizer fused a clip into the conv and the conv's output was
        quantized over its whole unclipped range.
After:  the engine gauges each scaled pair so every bound is <= 6 (the largest is 6); the module
        clamps at 6 first, so the ONNX export is Clip(0, 6) then Min, the FP32 output is kept,
        and modules saved before (no max_value) still load and compute what they did.
"""

from __future__ import annotations

import io

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

from prequant.torch.activations import BoundedReLU
from prequant.torch.cross_layer_equalization import equalize_model
from torch_cle_models import make_block, rel_err


def _equalized():
    torch.manual_seed(0)
    model = make_block()
    with torch.no_grad():  # very different channel ranges, so the scales (and 6/s) spread widely
        model.conv1.weight.mul_(torch.logspace(-2, 2, 8).view(8, 1, 1, 1))
    x = 4 * torch.randn(4, 3, 16, 16)
    ref = model(x)
    equalize_model(model, relu6="bound")
    return model, x, ref


def test_bounds_are_at_most_six_and_the_output_is_kept():
    model, x, ref = _equalized()
    for act in (model.act1, model.act2):
        assert isinstance(act, BoundedReLU) and act.max_value == 6.0
        assert float(act.upper.max()) <= 6.0 * (1 + 1e-6)
        assert float(act.upper.max()) >= 6.0 * (1 - 1e-6)  # the gauge puts the largest at 6
        assert float(act.upper.min()) < 6.0  # bounded per channel, not a plain ReLU6
    assert rel_err(model(x), ref) < 1e-4


def test_onnx_export_is_clip_then_min_and_onnxruntime_agrees():
    model, x, ref = _equalized()
    buf = io.BytesIO()
    torch.onnx.export(model, x[:1], buf, dynamo=False, opset_version=17, input_names=["x"],
                      dynamic_axes={"x": {0: "n"}})
    proto = onnx.load_from_string(buf.getvalue())
    producer = {o: n for n in proto.graph.node for o in n.output}
    mins = [n for n in proto.graph.node if n.op_type == "Min"]
    assert len(mins) == 2
    for n in mins:
        clip = next(producer[i] for i in n.input if i in producer and producer[i].op_type == "Clip")
        assert producer[clip.input[0]].op_type == "Conv"  # Conv → Clip (fusable) → Min
    sess = ort.InferenceSession(buf.getvalue(), providers=["CPUExecutionProvider"])
    out = sess.run(None, {"x": x.numpy()})[0]
    assert np.abs(out - ref.detach().numpy()).max() / np.abs(ref.detach().numpy()).max() < 1e-4


def test_a_module_saved_before_max_value_existed_still_loads_and_computes_the_same():
    upper = torch.tensor([0.5, 7.0, 30.0])
    old = BoundedReLU(upper)
    del old.max_value  # as unpickled from an older prequant: only the `upper` buffer
    x = 20 * torch.randn(2, 3, 4, 4)
    assert torch.equal(old(x), torch.minimum(torch.relu(x), upper.view(1, 3, 1, 1)))
    new = BoundedReLU(torch.zeros(3))
    new.load_state_dict(old.state_dict())
    assert torch.equal(new.upper, upper)
    buf = io.BytesIO()
    torch.save(old, buf)
    buf.seek(0)
    again = torch.load(buf, weights_only=False)
    assert torch.equal(again(x), old(x))


def test_re_equalizing_an_equalized_model_keeps_bounds_at_most_six():
    model, x, ref = _equalized()
    with torch.no_grad():  # disturb: the second run must rescale through the BoundedReLUs
        model.conv1.weight[2].mul_(0.1)
        model.conv1.bias[2].mul_(0.1)
        model.act1.upper[2].mul_(0.1)
        model.dw.weight[2].mul_(10.0)
    assert rel_err(model(x), ref) < 1e-4
    equalize_model(model, relu6="bound")
    for act in (model.act1, model.act2):
        assert isinstance(act, BoundedReLU) and act.max_value == 6.0
        assert float(act.upper.max()) <= 6.0 * (1 + 1e-6)
    assert rel_err(model(x), ref) < 1e-4


def test_replace_policy_after_bound_gives_a_plain_relu():
    model, _, _ = _equalized()
    equalize_model(model, relu6="replace")
    assert isinstance(model.act1, nn.ReLU) and isinstance(model.act2, nn.ReLU)


def test_between_linears_on_a_rank3_tensor_the_bounds_follow_the_last_axis():
    """nn.Linear contracts the last axis: on (N, T, C) the bounded ReLU6 between two Linears must
    clip channels on the last axis (it reshaped onto axis 1 and failed at forward before)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU6(), nn.Linear(16, 4)).double().eval()
    with torch.no_grad():
        model[0].weight.mul_(torch.logspace(-2, 2, 16, dtype=torch.float64)[:, None])
    x = torch.randn(2, 5, 8, dtype=torch.float64) * 3
    with torch.no_grad():
        ref = model(x)
    result = equalize_model(model)
    assert len(result.cls.sets) == 1
    assert isinstance(model[1], BoundedReLU) and model[1].channel_axis == -1
    with torch.no_grad():
        assert float((model(x) - ref).abs().max() / ref.abs().max()) < 1e-10
