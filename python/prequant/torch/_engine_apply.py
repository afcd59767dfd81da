"""Apply the engine's results back to a PyTorch model: the structural edits its passes name.

Before: an ``EngineGraph`` whose parameter memory the engine has already changed in place, and the
        engine's result (folds, activation edits, high-bias absorption, bias correction).
After:  a folded BN is ``nn.Identity``; a layer the engine gave a bias holds it as a Parameter; a
        replaced ReLU6 is ``nn.ReLU``, a bounded one a per-channel ``BoundedReLU`` (with the final
        bounds), a scaled x·g(x) activation a ``GatedActivation``. No value is decided here.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import nn

from prequant import _core
from prequant._manual_cls import record_folded_before
from prequant.torch.activations import BoundedReLU, GatedActivation

if TYPE_CHECKING:
    from prequant.torch._engine_graph import EngineGraph


def _set_submodule(root: nn.Module, qualified: str, new: nn.Module) -> None:
    parent_name, _, child = qualified.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, new)


def _module_path(eg: EngineGraph, node_name: str) -> str:
    return eg.name_of(eg.modules[node_name])


def apply_folds(eg: EngineGraph, fold_result) -> list[tuple[nn.Module, nn.Module]]:
    """Removed BNs become nn.Identity; layers the engine gave a bias get it as a Parameter."""
    pairs = []
    for folded in fold_result.folded:
        layer = eg.modules[folded.request.layer]
        bn = eg.modules[folded.request.bn]
        if folded.bias_added:
            _give_bias(eg, folded.request.layer)
        if folded.request.direction == "bn_then_conv":  # absorption may only use a BN after its layer
            record_folded_before(layer, bn)
        _set_submodule(eg.model, _module_path(eg, folded.request.bn), nn.Identity())
        pairs.append((layer, bn))
    return pairs


def _give_bias(eg: EngineGraph, node_name: str) -> None:
    layer = eg.modules[node_name]
    if layer.bias is None:
        values = torch.from_numpy(eg.graph.added_bias(node_name)).to(layer.weight.dtype)
        layer.bias = nn.Parameter(values, requires_grad=layer.weight.requires_grad)


def _parameter_dtype(model: nn.Module) -> torch.dtype:
    """The model's floating dtype (float32 or float64), for buffers the front end creates."""
    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.float32


def apply_activation_edits(eg: EngineGraph, edits) -> None:
    """ReLU6 replaced: nn.ReLU; ReLU6 bounded per channel: BoundedReLU(bounds); SiLU / Hardswish /
    GELU scaled through: GatedActivation(gate, gate_scale)."""
    producer = _Producers(eg.graph)
    dtype = None
    for edit in edits:
        module = eg.modules.get(edit.node)
        if module is None:
            continue  # a functional ReLU; nothing to swap
        path = _module_path(eg, edit.node)
        info = eg.graph.node(edit.node)
        if info.kind != "relu" and dtype is None:
            dtype = _parameter_dtype(eg.model)
        if info.kind == "gated":  # the final scales, read from the graph (later rounds moved them)
            scale = torch.as_tensor(info.gate_scale, dtype=dtype)
            _set_submodule(eg.model, path, GatedActivation(info.gate, scale, _channel_axis(eg, producer, edit.node)))
        elif info.kind == "relu":
            _set_submodule(eg.model, path, nn.ReLU())
        else:  # the final bounds: high-bias absorption may have lowered them after scaling
            upper = torch.as_tensor(info.clip_max_per_channel, dtype=dtype)
            _set_submodule(eg.model, path, BoundedReLU(upper, max_value=info.clip_max,
                                                       channel_axis=_channel_axis(eg, producer, edit.node)))


class _Producers:
    """Tensor name -> the graph node (not removed) writing it. The front end names each tensor
    after the node that made it, so that node is asked first; only a tensor it does not write
    (a folded BN's output, now the layer's; a split's outputs) needs the snapshot of every node,
    taken once."""

    def __init__(self, graph) -> None:
        self.graph = graph
        self._all: dict | None = None

    def get(self, tensor: str):
        if self._all is None:
            try:
                node = self.graph.node(tensor)
            except _core.GraphError:
                node = None
            if node is not None and not node.removed and tensor in node.outputs:
                return node  # a tensor has one producer (Graph.lint)
            self._all = {t: n for n in self.graph.nodes() if not n.removed for t in n.outputs}
        return self._all.get(tensor)


def _channel_axis(eg: EngineGraph, producer: _Producers, node_name: str) -> int:
    """-1 if the channels reaching `node_name` come from an nn.Linear (which contracts the last
    axis: a rank > 2 tensor keeps its channels last), else 1. Walks back through the per-channel
    nodes between (the engine scaled across them, so a layer produces this tensor's channels)."""
    node = eg.graph.node(node_name)
    while node.inputs:
        node = producer.get(node.inputs[0])
        if node is None:
            break
        if node.kind in ("conv", "linear"):
            return -1 if node.kind == "linear" else 1
    return 1


def apply_high_bias(eg: EngineGraph, hb_result) -> None:
    """New biases become Parameters; bounded ReLUs between take their lowered bounds."""
    for absorbed in hb_result.absorbed:
        if absorbed.bias_added:
            _give_bias(eg, absorbed.layer2)
    for name, module in eg.modules.items():  # only these: a snapshot of every node costs more
        if not isinstance(module, BoundedReLU):
            continue
        node = eg.graph.node(name)
        if not node.removed and len(node.clip_max_per_channel):
            module.upper.copy_(torch.as_tensor(node.clip_max_per_channel, dtype=module.upper.dtype))
            module.max_value = None if math.isinf(node.clip_max) else float(node.clip_max)


def apply_equalize(eg: EngineGraph, result) -> None:
    apply_folds(eg, result.fold)
    apply_activation_edits(eg, list(result.activations.edits) + list(result.cls.activation_edits)
                           + list(result.regions.activation_edits))
    apply_high_bias(eg, result.high_bias)
    for corrected in result.bias_correction.corrected:
        if corrected.bias_added:
            _give_bias(eg, corrected.layer)
