"""The documented user path (prepare_model, then equalize_model(dummy_input=...)): no hidden
forward pass, a prepared model independent of the original, and CLS that reaches its fixed point.
Correctness only; speed lives in bench/bench_speed.py."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch

from prequant import _core
from prequant.torch.cross_layer_equalization import equalize_model
from torch_cle_models import make_block, rel_err

torch.manual_seed(0)


def _count_forward_calls(model):
    calls = []
    model.register_forward_pre_hook(lambda m, a: calls.append(1))
    return calls


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("how", ["dummy_input", "input_shapes"])
def test_equalize_model_runs_no_forward_pass_and_gives_identical_weights(how):
    plain, given = make_block(), make_block()
    given.load_state_dict(plain.state_dict())
    x = torch.randn(1, 3, 16, 16)
    calls = _count_forward_calls(given)
    equalize_model(plain)
    kwargs = {"dummy_input": x} if how == "dummy_input" else {"input_shapes": (1, 3, 16, 16)}
    equalize_model(given, **kwargs)
    assert calls == []  # the shapes come from the graph, not from running the model
    a, b = _state(plain), _state(given)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k  # bit-identical


def test_equalize_model_verify_runs_the_model_and_keeps_weights_identical():
    plain, checked = make_block(), make_block()
    checked.load_state_dict(plain.state_dict())
    x = torch.randn(2, 3, 16, 16)
    ref = checked(x)
    calls = _count_forward_calls(checked)
    equalize_model(plain)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # exact policy: verification must not warn
        equalize_model(checked, dummy_input=x, verify=True)
    assert len(calls) == 2  # before and after
    assert rel_err(checked(x), ref) < 1e-5
    for k, v in _state(plain).items():
        assert torch.equal(v, checked.state_dict()[k]), k


def test_equalize_model_verify_warns_when_the_function_moves():
    model = make_block()
    with pytest.warns(UserWarning, match="moved"):
        # replacing ReLU6 by ReLU is not exact; with input scaled up activations exceed 6
        equalize_model(model, dummy_input=100 * torch.randn(2, 3, 16, 16), verify=True, relu6="replace")


def test_equalize_model_verify_needs_an_input():
    with pytest.raises(_core.InvalidRequestError, match="dummy_input"):
        equalize_model(make_block(), verify=True)
