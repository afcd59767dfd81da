"""Issue 11, PyTorch front end: prequant never changes what a model computes without saying so.

Each case compares against the model's own forward pass on randomized BN statistics:
shared weights (a conv called twice, two modules sharing one Parameter), nn.Linear next to a
conv/BN on tensors that are not 2-D, subclasses of known layers that override forward, shape
reads that must not block folding, and grad-mode regions dropped by tracing.
"""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import prequant
from prequant import _core
from prequant.torch import PrepareError, prepare_model
from prequant.torch.batch_norm_fold import find_batch_norm_folds, fold_all_batch_norms
from prequant.torch.cross_layer_equalization import CrossLayerScaling, equalize_model
from torch_cle_models import randomize_bn, rel_err

pytestmark = pytest.mark.usefixtures("single_thread_torch")


def _check_kept(model, make_input, run, tol=1e-5):
    """Run `run(model)`; the output must equal the original forward to `tol` (float64)."""
    model = model.double().eval()
    x = make_input()
    x = tuple(t.double() for t in x) if isinstance(x, tuple) else x.double()
    call = (lambda m: m(*x)) if isinstance(x, tuple) else (lambda m: m(x))
    with torch.no_grad():
        ref = call(model)
    result = run(model)
    with torch.no_grad():
        got = call(model)
    assert rel_err(got, ref) < tol, rel_err(got, ref)
    return result


# ---- item 1: shared weights ----------------------------------------------------------------------

class ConvCalledTwice(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.bn1, self.bn2 = nn.BatchNorm2d(4), nn.BatchNorm2d(4)
        self.head = nn.Conv2d(4, 6, 1)

    def forward(self, x):
        y = F.relu(self.bn1(self.conv(x)))
        y = F.relu(self.bn2(self.conv(y)))
        return self.head(y)


class TiedParameter(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(4, 4, 1)
        self.b = nn.Conv2d(4, 4, 1)
        self.b.weight = self.a.weight  # one Parameter, two modules
        self.bn_a, self.bn_b = nn.BatchNorm2d(4), nn.BatchNorm2d(4)
        self.head = nn.Conv2d(4, 3, 1)

    def forward(self, x):
        y = F.relu(self.bn_a(self.a(x)))
        return self.head(F.relu(self.bn_b(self.b(y))))


def _rand(*shape):
    return lambda: torch.randn(*shape)


@pytest.mark.parametrize("make", [ConvCalledTwice, TiedParameter])
def test_plain_module_sharing_a_weight_is_declined_not_corrupted(make):
    model = randomize_bn(make())
    result = _check_kept(model, _rand(2, 4, 8, 8), lambda m: equalize_model(m))
    assert "run prepare_model first" in result.explain()
    assert not result.fold.folded and not result.cls.sets  # every candidate touches the shared weight


@pytest.mark.parametrize("make", [ConvCalledTwice, TiedParameter])
def test_graph_module_sharing_a_weight_gets_copies_written_back(make):
    model = randomize_bn(make())
    gm = torch.fx.symbolic_trace(model)
    result = _check_kept(gm, _rand(2, 4, 8, 8), lambda m: equalize_model(m))
    assert len(result.fold.folded) == 2  # both BNs, each into its own copy of the shared layer
    assert len(result.cls.sets) >= 1
    assert not result.unroll.copies  # the front end unrolled; the engine found nothing shared
    assert not any(isinstance(m, nn.BatchNorm2d) for m in gm.modules())


def test_prepare_model_without_unrolling_then_equalize_is_exact():
    model = randomize_bn(ConvCalledTwice())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prepared = prepare_model(model.eval(), unroll_shared_weights=False)
    result = _check_kept(prepared, _rand(2, 4, 8, 8), lambda m: equalize_model(m))
    assert len(result.fold.folded) == 2


def test_unrolling_is_undone_when_the_engine_fails():
    model = randomize_bn(ConvCalledTwice()).eval()
    gm = torch.fx.symbolic_trace(model)
    with torch.no_grad():
        gm.head.weight[0, 0, 0, 0] = float("nan")
    targets = [n.target for n in gm.graph.nodes if n.op == "call_module"]
    names = {n for n, _ in gm.named_modules()}
    with pytest.raises(_core.InvalidParameterError):
        equalize_model(gm)
    assert [n.target for n in gm.graph.nodes if n.op == "call_module"] == targets
    assert {n for n, _ in gm.named_modules()} == names
    gm = torch.fx.symbolic_trace(model)
    gm.head.half()  # refused while translating, after the unrolling
    with pytest.raises(_core.UnsupportedError, match="float16"):
        equalize_model(gm)
    assert [n.target for n in gm.graph.nodes if n.op == "call_module"] == targets
    assert {n for n, _ in gm.named_modules()} == names


# ---- item 6: nn.Linear contracts the last axis ------------------------------------------------

class BnThenLinearOn3d(nn.Module):
    """BatchNorm1d normalizes axis 1 of (N, C, L); the Linear contracts L (C == L == 6)."""

    def __init__(self):
        super().__init__()
        self.bn = nn.BatchNorm1d(6)
        self.fc = nn.Linear(6, 6)

    def forward(self, x):
        return self.fc(self.bn(x))


class LinearOn4dAfterConv(nn.Module):
    """The Linear contracts W of the conv's (N, C, H, W) output (C == W == 5)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 5, 3, padding=1)
        self.fc = nn.Linear(5, 4)

    def forward(self, x):
        return self.fc(F.relu(self.conv(x)))


class LinearThenBnOn3d(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(7, 7)
        self.bn = nn.BatchNorm1d(7)

    def forward(self, x):
        return self.bn(self.fc(x))


@pytest.mark.parametrize("make, shape", [(BnThenLinearOn3d, (2, 6, 6)), (LinearThenBnOn3d, (3, 7, 7))])
def test_linear_next_to_batch_norm_on_3d_is_declined(make, shape):
    model = randomize_bn(make())
    x = torch.randn(*shape)
    for kwargs in ({}, {"dummy_input": x}):
        m = copy.deepcopy(model)
        result = _check_kept(m, lambda: x, lambda m: equalize_model(m, **{k: v.double() for k, v in kwargs.items()}))
        assert not result.fold.folded
        assert "contracts the last axis" in result.explain()


def test_linear_on_4d_after_conv_is_not_scaled():
    model = LinearOn4dAfterConv()
    result = _check_kept(model, _rand(2, 3, 5, 5), lambda m: equalize_model(m))
    assert not result.cls.sets
    assert "contracts the last axis of a rank-4 tensor" in result.explain()


class Mlp(nn.Module):
    def __init__(self):
        super().__init__()
        self.flatten = nn.Flatten()
        self.fc1, self.bn1 = nn.Linear(12, 8), nn.BatchNorm1d(8)
        self.fc2, self.bn2 = nn.Linear(8, 6), nn.BatchNorm1d(6)
        self.fc3 = nn.Linear(6, 3)

    def forward(self, x):
        y = F.relu(self.bn1(self.fc1(self.flatten(x))))
        return self.fc3(F.relu(self.bn2(self.fc2(y))))


def test_mlp_with_batch_norm_on_2d_still_folds_and_scales():
    model = randomize_bn(Mlp())
    result = _check_kept(model, _rand(4, 3, 2, 2), lambda m: equalize_model(m))
    assert len(result.fold.folded) == 2
    assert len(result.cls.sets) == 2


def test_mlp_on_a_graph_input_of_unknown_rank_folds_once_the_rank_is_given():
    model = nn.Sequential(nn.Linear(5, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 3))
    randomize_bn(model)
    x = torch.randn(6, 5)
    result = _check_kept(copy.deepcopy(model), lambda: x, lambda m: fold_all_batch_norms(m, return_result=True)[1])
    assert not result.folded and "unknown rank" in result.explain()
    result = _check_kept(model, lambda: x,
                         lambda m: fold_all_batch_norms(m, input_shapes=(6, 5), return_result=True)[1])
    assert len(result.folded) == 1


def test_linear_to_linear_on_3d_still_scales():
    model = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 3))
    result = _check_kept(model, _rand(2, 7, 5), lambda m: equalize_model(m))
    assert len(result.cls.sets) == 1


# ---- item 9: subclasses that override forward ----------------------------------------------------

class BatchNormAct(nn.BatchNorm2d):
    """Like timm's BatchNormAct2d: a BatchNorm2d that applies its activation in forward."""

    def forward(self, x):
        torch._assert(x.ndim == 4, "expected a 4-D input")
        x = F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)
        return F.relu6(x)


class ConvSame(nn.Conv2d):
    """Like timm's Conv2dSame: pads inside forward."""

    def forward(self, x):
        return self._conv_forward(F.pad(x, [1, 1, 1, 1]), self.weight, self.bias)


class StdConv(nn.Conv2d):
    """Like timm's StdConv2d: standardizes its weight inside forward."""

    def forward(self, x):
        w = F.batch_norm(self.weight.reshape(1, self.out_channels, -1), None, None,
                         training=True, momentum=0.0, eps=1e-6).reshape_as(self.weight)
        return F.conv2d(x, w, self.bias, self.stride, self.padding, self.dilation, self.groups)


def _subclass_model(conv_cls, bn_cls):
    return randomize_bn(nn.Sequential(conv_cls(3, 6, 3), bn_cls(6), nn.ReLU(), conv_cls(6, 4, 3), nn.BatchNorm2d(4)))


@pytest.mark.parametrize("conv_cls, bn_cls, name", [
    (nn.Conv2d, BatchNormAct, "BatchNormAct"), (ConvSame, nn.BatchNorm2d, "ConvSame"),
    (StdConv, nn.BatchNorm2d, "StdConv")])
def test_subclass_overriding_forward_is_opaque(conv_cls, bn_cls, name):
    model = _subclass_model(conv_cls, bn_cls)
    with pytest.warns(UserWarning, match=f"{name} is kept as a leaf"):
        gm = prepare_model(model.eval(), module_classes_to_exclude=[conv_cls if conv_cls is not nn.Conv2d else bn_cls])
    assert any(f"leave every {name} alone" in n for n in gm.prequant_summary.notes)
    result = _check_kept(gm, _rand(2, 3, 12, 12), lambda m: equalize_model(m))
    assert f"{name} subclasses torch.nn" in result.explain()


def test_subclass_traced_through_by_prepare_model_folds_exactly():
    model = _subclass_model(nn.Conv2d, BatchNormAct)
    gm = prepare_model(model.eval())
    result = _check_kept(gm, _rand(2, 3, 12, 12), lambda m: equalize_model(m))
    assert len(result.fold.folded) == 2


def test_subclass_not_overriding_forward_is_its_base():
    class MyConv(nn.Conv2d):
        pass

    model = _subclass_model(MyConv, nn.BatchNorm2d)
    result = _check_kept(model, _rand(2, 3, 12, 12), lambda m: equalize_model(m))
    assert len(result.fold.folded) == 2


# ---- item 10: shape reads are not consumers -----------------------------------------------------

class ReadsShapes(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 6, 3), nn.BatchNorm2d(6)
        self.conv2, self.bn2 = nn.Conv2d(6, 4, 1), nn.BatchNorm2d(4)
        self.fc = nn.Linear(4 * 6 * 6, 5)

    def forward(self, x):
        y = self.conv1(x)
        torch._assert(y.ndim == 4, "expected NCHW")
        y = F.relu(self.bn1(y))
        y = self.conv2(y)
        n, c = y.shape[0], y.size(1)
        y = self.bn2(y) * (c // c)
        return self.fc(y.view(y.size(0), -1)) + n * 0


def test_shape_reads_do_not_block_folding():
    model = randomize_bn(ReadsShapes())
    result = _check_kept(model, _rand(2, 3, 8, 8), lambda m: equalize_model(m))
    assert {f.request.bn for f in result.fold.folded} == {"bn1", "bn2"}
    assert len(result.cls.sets) == 1


# ---- item 12: grad-mode regions ------------------------------------------------------------------

def test_no_grad_region_dropped_by_tracing_is_reported():
    class NoGrad(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 3, 1), nn.Conv2d(3, 3, 1)

        def forward(self, x):
            with torch.no_grad():
                y = self.a(x)
            return self.b(y)

    with pytest.warns(UserWarning, match="no_grad"):
        gm = prepare_model(NoGrad().eval())
    assert any("no_grad" in n and "a" in n for n in gm.prequant_summary.notes)
    with torch.no_grad(), warnings.catch_warnings():  # also when prepared under no_grad
        warnings.simplefilter("error")
        with pytest.raises(UserWarning, match="no_grad"):
            prepare_model(NoGrad().eval())


def test_no_note_without_grad_regions():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with torch.no_grad():
            gm = prepare_model(nn.Sequential(nn.Conv2d(3, 3, 1), nn.ReLU()).eval())
    assert not gm.prequant_summary.notes


# ---- PrepareError: one hierarchy ----------------------------------------------------------------

def test_prepare_error_is_a_prequant_error_naming_the_module():
    class Branchy(nn.Module):
        def forward(self, x):
            return x if x.sum() > 0 else -x

    class Outer(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = Branchy()

        def forward(self, x):
            return self.inner(x)

    with pytest.raises(prequant.PrepareError) as info:
        prepare_model(Outer().eval())
    err = info.value
    assert isinstance(err, PrepareError) and isinstance(err, prequant.Error)
    assert isinstance(err, torch.fx.proxy.TraceError)
    assert err.node == "inner"
