"""The user path's fast paths change no value: prepare_model's prefaulted copies and the front end's
shortcuts (leaf state tables, the cheap parameter view, producer lookups) give bit-identical
weights and the same modules as the straightforward code they replace, on torchvision models.
Correctness only; speed lives in bench/."""

from __future__ import annotations

import io
import itertools

import pytest
import torch
import torchvision
from torch import nn

import prequant.torch._engine_apply as apply_module
import prequant.torch._engine_graph as eg_module
import prequant.torch._engine_nodes as nodes_module
import prequant.torch._fresh_memory as fresh_memory
from prequant.torch import prepare_model
from prequant.torch.cross_layer_equalization import equalize_model
from torch_cle_models import randomize_bn, rel_err


# ---- the straightforward versions the fast paths replace ---------------------------------------

def _state_straightforward(module):
    return [(n, t) for n, t in itertools.chain(module.named_parameters(remove_duplicate=False),
                                               module.named_buffers(remove_duplicate=False))
            if t is not None]


def _view_straightforward(tensor, owner, role):
    assert tensor.device.type == "cpu" and tensor.dtype in (torch.float32, torch.float64)
    assert tensor.is_contiguous()
    return tensor.detach().numpy()


class _ProducersStraightforward:
    def __init__(self, graph):
        self._all = {t: n for n in graph.nodes() if not n.removed for t in n.outputs}

    def get(self, tensor):
        return self._all.get(tensor)


@pytest.fixture
def straightforward(monkeypatch):
    """Every fast path off: plain clone(), and the front end's reference helpers."""
    def switch():
        monkeypatch.setattr(fresh_memory, "enabled", False)
        monkeypatch.setattr(eg_module, "_state", _state_straightforward)
        monkeypatch.setattr(nodes_module, "_view", _view_straightforward)
        monkeypatch.setattr(apply_module, "_Producers", _ProducersStraightforward)
    return switch


def _model(name):
    torch.manual_seed(0)
    return randomize_bn(getattr(torchvision.models, name)(weights=None)).eval()


def _whole_path(model, x, **kwargs):
    prepared = prepare_model(model)
    result = equalize_model(prepared, dummy_input=x, **kwargs)
    return prepared, result


def _assert_same_model(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for key in sa:
        assert sa[key].dtype == sb[key].dtype and sa[key].shape == sb[key].shape, key
        assert torch.equal(sa[key], sb[key]), key  # bit-identical
    # (n, class) per submodule; the root's class is made per GraphModule instance
    assert [(n, type(m)) for n, m in a.named_modules() if n] == [(n, type(m)) for n, m in b.named_modules() if n]
    assert a.code == b.code


@pytest.mark.parametrize("name,kwargs", [
    ("resnet50", {}),
    ("mobilenet_v2", {}),                      # ReLU6 → BoundedReLU: the producer lookup
    ("efficientnet_b0", {"gated_activations": True}),  # SiLU → GatedActivation
])
def test_fast_paths_give_bit_identical_weights_on_torchvision_models(name, kwargs, straightforward):
    model = _model(name)
    x = torch.rand(1, 3, 64, 64)
    fast, fast_result = _whole_path(model, x, **kwargs)
    straightforward()
    slow, slow_result = _whole_path(model, x, **kwargs)
    _assert_same_model(fast, slow)
    assert fast_result.explain() == slow_result.explain()
    with torch.no_grad():
        assert torch.equal(fast(x), slow(x))


# ---- prefaulted copies ----------------------------------------------------------------------------

@pytest.mark.parametrize("make", [
    lambda: torch.randn(512, 256, 3, 3),                        # large: prefaulted
    lambda: torch.randn(300001, dtype=torch.float64),           # large, not a multiple of a page
    lambda: torch.randn(16, 8),                                 # small: plain clone
    lambda: torch.randn(256, 512, 3, 3)[:, ::2],                # a strided view: plain clone
    lambda: torch.randn(64, 128, 28, 28).to(memory_format=torch.channels_last),
    lambda: torch.randint(0, 100, (400000,)),                   # integer buffer
    lambda: torch.randn(600, 600)[100:],                         # a view with an offset
], ids=["conv", "odd_f64", "small", "strided", "channels_last", "int", "offset"])
def test_copy_tensor_data_is_an_exact_copy_in_memory_of_its_own(make):
    source = make()
    copy = fresh_memory.copy_tensor_data(source)
    assert torch.equal(copy, source)
    assert copy.dtype == source.dtype and copy.shape == source.shape
    assert copy.stride() == source.clone(memory_format=torch.preserve_format).stride()  # clone's layout
    assert copy.untyped_storage().data_ptr() != source.untyped_storage().data_ptr()
    assert not copy.requires_grad
    copy.add_(1)
    assert not torch.equal(copy, source)  # really apart


def test_copy_tensor_data_matches_clone_with_the_fast_path_off(monkeypatch):
    source = torch.randn(1024, 1024)
    fast = fresh_memory.copy_tensor_data(source)
    monkeypatch.setattr(fresh_memory, "enabled", False)
    plain = fresh_memory.copy_tensor_data(source)
    assert torch.equal(fast, plain) and fast.stride() == plain.stride()


# ---- the prepared model is an ordinary, independent model ----------------------------------------

def _storages(model):
    return {t.untyped_storage().data_ptr() for t in itertools.chain(model.parameters(), model.buffers())}


def test_prepared_torchvision_model_is_independent_and_saves_loads_and_converts():
    model = _model("resnet18")
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        ref = model(x)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    prepared = prepare_model(model)

    # own storage for every tensor, none shared with the original or with another tensor
    tensors = list(itertools.chain(prepared.parameters(), prepared.buffers()))
    assert len(_storages(prepared)) == len(tensors)
    assert _storages(prepared).isdisjoint(_storages(model))
    # same keys and values as the original
    sp, so = prepared.state_dict(), model.state_dict()
    assert set(sp) == set(so)
    assert all(torch.equal(sp[k], so[k]) for k in so)

    # torch.save / torch.load round trip of the whole module and of its state_dict
    buffer = io.BytesIO()
    torch.save(prepared, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    buffer = io.BytesIO()
    torch.save(prepared.state_dict(), buffer)
    assert buffer.tell() < 1.1 * sum(t.nbytes for t in tensors) + 200_000  # each tensor saved once
    buffer.seek(0)
    states = torch.load(buffer)
    assert all(torch.equal(states[k], sp[k]) for k in sp)
    with torch.no_grad():
        assert torch.equal(loaded(x), prepared(x))

    # .to(dtype) converts the prepared model only
    double = prepared.to(torch.float64)
    with torch.no_grad():
        assert rel_err(double(x.double()).float(), ref) < 1e-4
    assert all(v.dtype == torch.float32 for v in model.state_dict().values() if v.is_floating_point())

    # editing the prepared model in place leaves the original alone
    prepared = prepare_model(model)
    equalize_model(prepared, dummy_input=x)
    with torch.no_grad():
        for p in prepared.parameters():
            p.mul_(2)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


class _Tied(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(600, 600)  # 1.4 MB: a prefaulted copy
        self.b = nn.Linear(600, 600)
        self.b.weight = self.a.weight

    def forward(self, x):
        return self.b(torch.relu(self.a(x)))


def test_tied_large_weights_stay_tied_among_the_prepared_models_own_modules():
    model = _Tied().eval()
    prepared = prepare_model(model, unroll_shared_weights=False)
    assert prepared.a.weight is prepared.b.weight
    assert prepared.a.weight.untyped_storage().data_ptr() != model.a.weight.untyped_storage().data_ptr()
    assert torch.equal(prepared.a.weight, model.a.weight)
    x = torch.randn(3, 600)
    with torch.no_grad():
        assert torch.equal(prepared(x), model(x))
