"""A PyTorch transform that fails midway leaves the model exactly as it was: every parameter and
buffer bit for bit, and every module (no BN replaced, no activation swapped, no bias added)."""

from __future__ import annotations

import copy

import pytest

from prequant import _core
from prequant.torch.batch_norm_fold import fold_all_batch_norms
from prequant.torch.cross_layer_equalization import CrossLayerScaling, equalize_model

from torch_cle_models import make_block


def _snapshot(model):
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    modules = [(name, type(m).__name__) for name, m in model.named_modules()]
    biases = [(name, getattr(m, "bias", None) is None) for name, m in model.named_modules()]
    return state, modules, biases


def _assert_unchanged(model, snap):
    state, modules, biases = snap
    now = model.state_dict()
    assert now.keys() == state.keys()
    for k, v in state.items():
        assert now[k].numpy().tobytes() == v.numpy().tobytes(), k
    assert [(n, type(m).__name__) for n, m in model.named_modules()] == modules
    assert [(n, getattr(m, "bias", None) is None) for n, m in model.named_modules()] == biases


def _folded_block():
    model = make_block()
    fold_all_batch_norms(model)
    return model


@pytest.mark.parametrize("make, transform", [
    (make_block, lambda m: equalize_model(m, relu6="bound")),
    (make_block, lambda m: equalize_model(m, relu6="replace")),
    (make_block, lambda m: fold_all_batch_norms(m)),
    (_folded_block, lambda m: CrossLayerScaling.scale_model(m)),
], ids=["equalize_bound", "equalize_replace", "fold", "scale_model"])
def test_injected_failure_at_every_write_changes_nothing(make, transform):
    reference = make()
    _core._set_fail_after_writes(-1)
    transform(copy.deepcopy(reference))
    total = _core._writes_seen()
    assert total > 0
    try:
        for n in range(total):
            model = copy.deepcopy(reference)
            if n and n < total - 1 and n % 3:  # every write near the ends, a sample in between
                continue
            snap = _snapshot(model)
            _core._set_fail_after_writes(n)
            with pytest.raises(_core.Error, match="injected failure"):
                transform(model)
            _core._set_fail_after_writes(-1)
            _assert_unchanged(model, snap)
    finally:
        _core._set_fail_after_writes(-1)
