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
from torch_cle_models import make_block, randomize_bn, rel_err

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


# ---- prepare_model: independent of the original, each tensor copied once ----------------------

import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from prequant.torch import prepare_model  # noqa: E402


class _Mixed(nn.Module):
    """A leaf conv + BN, a functional conv on a module's own parameter, a reused ReLU, a plain
    tensor attribute, and a tied weight."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.relu = nn.ReLU()
        self.w2 = nn.Parameter(torch.randn(8, 8, 1, 1))
        self.offset = torch.randn(1, 8, 1, 1)
        self.fc = nn.Linear(8, 8)
        self.fc2 = nn.Linear(8, 8)
        self.fc2.weight = self.fc.weight

    def forward(self, x):
        x = self.relu(self.bn(self.conv(x)))
        x = self.relu(F.conv2d(x, self.w2) + self.offset)
        x = x.mean((2, 3))
        return self.fc2(self.fc(x))


def _storages(model):
    out = {}
    for m in model.modules():
        for name, t in list(m._parameters.items()) + list(m._buffers.items()):
            if t is not None:
                out[t.untyped_storage().data_ptr()] = name
    for value in vars(model).values():
        if isinstance(value, torch.Tensor):
            out[value.untyped_storage().data_ptr()] = "attribute"
    return out


@pytest.mark.parametrize("make", [lambda: _Mixed().eval(), lambda: make_block()], ids=["mixed", "mobile_block"])
def test_prepared_model_shares_no_tensor_storage_with_the_original(make):
    model = make()
    x = torch.randn(2, 3, 8, 8)
    ref = model(x).detach()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    prepared = prepare_model(model)
    assert set(_storages(prepared)).isdisjoint(_storages(model))
    assert not ({id(m) for m in prepared.modules()} & {id(m) for m in model.modules()})
    assert rel_err(prepared(x).detach(), ref) < 1e-6
    equalize_model(prepared)  # in place on the prepared model only
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert rel_err(model(x).detach(), ref) == 0


def test_prepare_model_copy_false_shares_like_aimet():
    model = _Mixed().eval()
    prepared = prepare_model(model, copy=False)
    assert prepared.conv is model.conv
    assert set(_storages(prepared)) <= set(_storages(model))


def test_prepared_model_keeps_weight_tying_among_its_own_modules():
    model = _Mixed().eval()
    prepared = prepare_model(model, unroll_shared_weights=False)
    assert prepared.fc.weight is prepared.fc2.weight  # still tied, but not to the original
    assert prepared.fc.weight is not model.fc.weight


# ---- CLS: the chain solve reaches the fixed point of plain Gauss-Seidel sweeps ----------------

import math  # noqa: E402

import torchvision  # noqa: E402

from prequant.torch._engine_graph import build_engine_graph  # noqa: E402


def _chain(depth=40, channels=8):
    layers = []
    for _ in range(depth):
        layers += [nn.Conv2d(channels, channels, 3, padding=1), nn.BatchNorm2d(channels), nn.ReLU()]
    return nn.Sequential(*layers)


def _scales(make, solve_chains, max_iterations):
    torch.manual_seed(0)
    model = randomize_bn(make()).eval()
    eg = build_engine_graph(model)
    _core.fold_batch_norms(eg.graph)
    result = _core.scale_model(eg.graph, max_iterations=max_iterations, tolerance=1e-10,
                               solve_chains=solve_chains)
    return result, [[list(p.scale) for p in s.pairs] for s in result.sets]


@pytest.mark.parametrize("make,cap", [
    (lambda: torchvision.models.resnet50(weights=None), 2000),
    (lambda: torchvision.models.mobilenet_v2(weights=None), 2000),
    (lambda: _chain(), 20000),
], ids=["resnet50", "mobilenet_v2", "chain40"])
def test_chain_solve_reaches_the_fixed_point_of_gauss_seidel_sweeps(make, cap):
    reference, ref_scales = _scales(make, False, cap)
    fast, fast_scales = _scales(make, True, cap)
    assert reference.converged and fast.converged
    assert fast.iterations <= reference.iterations
    worst = max(abs(math.log(a / b))
                for set_a, set_b in zip(ref_scales, fast_scales)
                for pair_a, pair_b in zip(set_a, set_b)
                for a, b in zip(pair_a, pair_b))
    assert len(ref_scales) == len(fast_scales) and worst < 1e-6
