"""Translate a PyTorch model into the engine's graph, and apply the engine's edits back.

Before: an ``nn.Module`` in eval mode (ideally one ``prepare_model`` returned).
After:  a ``_core.Graph`` whose parameters are zero-copy views of the module's parameters, and a
        map from engine node names back to modules. The engine changes the parameter memory in
        place; ``apply_*`` then makes the structural edits the engine's results name (a folded BN
        becomes ``nn.Identity``, a new bias becomes a ``Parameter``, a ReLU6 becomes ``nn.ReLU`` or
        a per-channel ``BoundedReLU``).

The front end decides nothing about folding or scaling: it only says what each fx node is.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

from prequant import _core
from prequant.torch.activations import BoundedReLU

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_CONV_T = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_IDENTITY = (nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout)
_POOL = (
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
    nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d,
)
_ZERO_PAD = (nn.ZeroPad1d, nn.ZeroPad2d, nn.ZeroPad3d)
_CONST_PAD = (nn.ConstantPad1d, nn.ConstantPad2d, nn.ConstantPad3d)
_RELU_FUNCTIONS = {F.relu, torch.relu, torch.nn.functional.relu}


class PrequantTorchError(_core.UnsupportedError):
    """A PyTorch model the engine cannot work on as it is; the message says the fix."""


@dataclass
class EngineGraph:
    """A model's engine graph and the way back from engine names to modules."""

    graph: _core.Graph
    model: nn.Module
    modules: dict[str, nn.Module] = field(default_factory=dict)   # engine node -> module
    module_names: dict[int, str] = field(default_factory=dict)    # id(module) -> qualified name

    def module(self, node_name: str) -> nn.Module:
        return self.modules[node_name]

    def name_of(self, module: nn.Module) -> str:
        try:
            return self.module_names[id(module)]
        except KeyError:
            raise _core.InvalidRequestError(
                f"{type(module).__name__} object is not a module of this model"
            ) from None


def _view(tensor: torch.Tensor, owner: str, role: str):
    """A writable, zero-copy NumPy view of a CPU float32/float64 parameter."""
    if tensor.device.type != "cpu":
        raise PrequantTorchError(
            f"{owner}.{role} is on {tensor.device}; the engine works on CPU memory — call "
            f"model.cpu() first (and .to(device) afterwards)"
        )
    if tensor.dtype not in (torch.float32, torch.float64):
        raise PrequantTorchError(
            f"{owner}.{role} is {tensor.dtype}; convert the model to float32 first "
            f"(model.float()) and back afterwards"
        )
    if not tensor.is_contiguous():
        raise PrequantTorchError(f"{owner}.{role} is not contiguous; call .contiguous() on it first")
    return tensor.detach().numpy()


def _pool_counts_padding(pool: nn.Module) -> bool:
    """An average pool whose border outputs are not plain averages of real inputs: it counts padded
    zeros (count_include_pad with padding) or divides by a fixed divisor. Max pools pad with -inf."""
    if not isinstance(pool, (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d)):
        return False
    padding = pool.padding if isinstance(pool.padding, (tuple, list)) else (pool.padding,)
    return getattr(pool, "divisor_override", None) is not None or (
        pool.count_include_pad and any(p != 0 for p in padding))


def _has_padding(conv: nn.Module) -> bool:
    padding = conv.padding
    if isinstance(padding, str):
        return padding == "same" and any(k > 1 for k in conv.kernel_size)
    return any(p != 0 for p in padding) or getattr(conv, "output_padding", (0,)) != (0,) * len(padding)


def _data_inputs(node: torch.fx.Node) -> list[str]:
    names: list[str] = []
    torch.fx.node.map_arg((node.args, node.kwargs), lambda n: names.append(n.name))
    return list(dict.fromkeys(names))


class _LeafTracer(torch.fx.Tracer):
    """torch.nn's modules and prequant's BoundedReLU stay single nodes."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, BoundedReLU) or super().is_leaf_module(m, qualname)


def trace_graph(model: nn.Module) -> torch.fx.Graph:
    """The model's fx graph (its own if it is a GraphModule); call_module targets name modules of
    `model`. No GraphModule is built: its generated code is not needed here, and building it
    costs about half as much again as the trace itself."""
    if isinstance(model, torch.fx.GraphModule):
        return model.graph
    try:
        return _LeafTracer().trace(model)
    except Exception as exc:  # fx raises many types; all mean "cannot trace"
        raise PrequantTorchError(
            f"torch.fx cannot trace {type(model).__name__}: {exc}. Run "
            f"prequant.torch.prepare_model(model, concrete_args=..., modules_to_exclude=...) first"
        ) from exc


def build_engine_graph(model: nn.Module) -> EngineGraph:
    """Translate `model` (eval mode, CPU, float32/64) into an engine graph."""
    if model.training:
        raise PrequantTorchError(
            f"{type(model).__name__} is in training mode: batch norms then use batch statistics "
            f"and folding would change the model — call model.eval() first"
        )
    fx_graph = trace_graph(model)
    modules = dict(model.named_modules(remove_duplicate=False))
    result = EngineGraph(_core.Graph(), model)
    result.module_names = {id(m): name for name, m in model.named_modules()}
    calls: dict[str, int] = {}
    for node in fx_graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1

    g = result.graph
    seen: dict[str, int] = {}
    for node in fx_graph.nodes:
        if node.op == "placeholder":
            g.graph_inputs = [*g.graph_inputs, node.name]
            continue
        if node.op == "output":
            outs: list[str] = []
            torch.fx.node.map_arg(node.args, lambda n: outs.append(n.name))
            g.graph_outputs = outs
            continue
        inputs, outputs = _data_inputs(node), [node.name]
        if node.op == "call_module":
            module = modules[node.target]
            k = seen.get(node.target, 0)
            seen[node.target] = k + 1
            name = node.target if k == 0 else f"{node.target}#{k}"
            result.modules[name] = module
            _add_module(g, name, module, node, inputs, outputs, calls[node.target])
        elif node.op == "call_function" and node.target in _RELU_FUNCTIONS:
            g.add_activation(node.name, "relu", inputs[:1], outputs, op_type="F.relu")
        elif node.op == "call_method" and node.target == "relu":
            g.add_activation(node.name, "relu", inputs[:1], outputs, op_type="Tensor.relu")
        else:
            target = getattr(node.target, "__name__", str(node.target))
            g.add_opaque(node.name, f"{node.op}:{target}", inputs, outputs)
    g.lint()
    return result


def _add_module(g, name, module, node, inputs, outputs, calls):
    type_name = type(module).__name__
    data_in = inputs[:1]
    if isinstance(module, _CONV + _CONV_T) and len(node.args) == 1 and not node.kwargs:
        transposed = isinstance(module, _CONV_T)
        layout = (1, 0, module.groups, True) if transposed else (0, 1, module.groups, False)
        g.add_conv(
            name, data_in, outputs, _view(module.weight, name, "weight"), layout,
            None if module.bias is None else _view(module.bias, name, "bias"),
            has_padding=_has_padding(module), spatial_rank=module.weight.dim() - 2,
            kind="conv", op_type=type_name,
            names={"weight": f"{name}.weight", "bias": f"{name}.bias"},
        )
    elif isinstance(module, nn.Linear):
        g.add_conv(
            name, data_in, outputs, _view(module.weight, name, "weight"), (0, 1, 1, False),
            None if module.bias is None else _view(module.bias, name, "bias"),
            has_padding=False, spatial_rank=0, kind="linear", op_type=type_name,
            names={"weight": f"{name}.weight", "bias": f"{name}.bias"},
        )
    elif isinstance(module, _BN) and module.track_running_stats and module.running_mean is not None and calls == 1:
        c = module.num_features
        gamma = module.weight if module.affine else torch.ones(c, dtype=module.running_mean.dtype)
        beta = module.bias if module.affine else torch.zeros(c, dtype=module.running_mean.dtype)
        g.add_batch_norm(
            name, data_in, outputs, _view(gamma, name, "weight"), _view(beta, name, "bias"),
            _view(module.running_mean, name, "running_mean"), _view(module.running_var, name, "running_var"),
            eps=module.eps, op_type=type_name,
        )
    elif isinstance(module, BoundedReLU) and calls == 1:
        g.add_activation(name, "clip", data_in, outputs, clip_min=0.0, clip_max=float("inf"),
                         clip_max_per_channel=module.upper.double().tolist(), op_type=type_name)
    elif isinstance(module, nn.ReLU):
        g.add_activation(name, "relu", data_in, outputs, op_type=type_name)
    elif isinstance(module, (nn.ReLU6, nn.Hardtanh)) and calls == 1:
        lo, hi = (0.0, 6.0) if isinstance(module, nn.ReLU6) else (module.min_val, module.max_val)
        g.add_activation(name, "clip", data_in, outputs, clip_min=lo, clip_max=hi, op_type=type_name)
    elif isinstance(module, nn.LeakyReLU):
        g.add_activation(name, "leaky_relu", data_in, outputs, alpha=module.negative_slope, op_type=type_name)
    elif isinstance(module, nn.PReLU):
        g.add_activation(name, "prelu", data_in, outputs, slope=_view(module.weight, name, "weight"),
                         op_type=type_name)
    elif isinstance(module, _IDENTITY):
        g.add_activation(name, "identity", data_in, outputs, op_type=type_name)
    elif isinstance(module, _POOL):
        g.add_activation(name, "pool", data_in, outputs, op_type=type_name, has_padding=_pool_counts_padding(module))
    elif isinstance(module, _ZERO_PAD) or (isinstance(module, _CONST_PAD) and module.value == 0):
        g.add_activation(name, "zero_pad", data_in, outputs, op_type=type_name)
    else:
        why = type_name
        if calls > 1 and isinstance(module, _BN + (nn.ReLU6, nn.Hardtanh, BoundedReLU)):
            why += f" called at {calls} places (run prepare_model to unroll it)"
        g.add_opaque(name, why, inputs, outputs)


# ---- applying the engine's structural edits ---------------------------------------------------

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
        # High-bias absorption may only use a BN that sat after its layer; remember which did not.
        bn._prequant_folded_before_layer = folded.request.direction == "bn_then_conv"
        _set_submodule(eg.model, _module_path(eg, folded.request.bn), nn.Identity())
        pairs.append((layer, bn))
    return pairs


def _give_bias(eg: EngineGraph, node_name: str) -> None:
    layer = eg.modules[node_name]
    if layer.bias is None:
        values = torch.from_numpy(eg.graph.added_bias(node_name)).to(layer.weight.dtype)
        layer.bias = nn.Parameter(values, requires_grad=layer.weight.requires_grad)


def apply_activation_edits(eg: EngineGraph, edits) -> None:
    """ReLU6 replaced: nn.ReLU; ReLU6 bounded per channel: BoundedReLU(bounds)."""
    for edit in edits:
        module = eg.modules.get(edit.node)
        if module is None:
            continue  # a functional ReLU; nothing to swap
        path = _module_path(eg, edit.node)
        info = eg.graph.node(edit.node)
        if info.kind == "relu":
            _set_submodule(eg.model, path, nn.ReLU())
        else:  # the final bounds: high-bias absorption may have lowered them after scaling
            upper = torch.as_tensor(info.clip_max_per_channel, dtype=torch.float32)
            _set_submodule(eg.model, path, BoundedReLU(upper))


def apply_high_bias(eg: EngineGraph, hb_result) -> None:
    """New biases become Parameters; bounded ReLUs between take their lowered bounds."""
    for absorbed in hb_result.absorbed:
        if absorbed.bias_added:
            _give_bias(eg, absorbed.layer2)
    for node in eg.graph.nodes():
        module = eg.modules.get(node.name)
        if isinstance(module, BoundedReLU) and len(node.clip_max_per_channel):
            module.upper.copy_(torch.as_tensor(node.clip_max_per_channel, dtype=torch.float32))


def apply_equalize(eg: EngineGraph, result) -> None:
    apply_folds(eg, result.fold)
    apply_activation_edits(eg, list(result.activations.edits) + list(result.cls.activation_edits))
    apply_high_bias(eg, result.high_bias)

