"""What each fx node is to the engine: the node-by-node half of translating a PyTorch model.

Before: one fx node of a traced model (a module call, a function or a method), its data inputs.
After:  the matching engine node added to a ``_core.Graph`` (conv, linear, batch norm, activation,
        channel node, or opaque with the reason), parameters as zero-copy views of the module's
        own tensors (``_view``: CPU, float32/float64, contiguous, else ``PrequantTorchError``).
Also here: which modules are leaves the engine knows (``_KNOWN``, ``_overridden_base``) and the
rank of each tensor read from the fx graph (``_tensor_ranks``), since both decide how a node is
added. The graph walk itself, shared state and the entry point are in ``_engine_graph``.
"""

from __future__ import annotations

import operator

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

from prequant import _core
from prequant.torch.activations import BoundedReLU, GatedActivation

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_CONV_T = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_IDENTITY = (nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout)
_POOL = (
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
    nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d,
)
_MAX_POOL = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d)
_ZERO_PAD = (nn.ZeroPad1d, nn.ZeroPad2d, nn.ZeroPad3d)
_CONST_PAD = (nn.ConstantPad1d, nn.ConstantPad2d, nn.ConstantPad3d)
_RELU_FUNCTIONS = {F.relu, torch.relu, torch.nn.functional.relu}


class PrequantTorchError(_core.UnsupportedError):
    """A PyTorch model the engine cannot work on as it is; the message says the fix."""


_ENGINE_DTYPES = (torch.float32, torch.float64)


def _view(tensor: torch.Tensor, owner: str, role: str):
    """A writable, zero-copy NumPy view of a CPU float32/float64 parameter."""
    if tensor.is_cpu and tensor.dtype in _ENGINE_DTYPES and tensor.is_contiguous():
        return tensor.detach().numpy()  # the common case, checked in the cheapest order
    if not tensor.is_cpu:
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


def _data_inputs(node: torch.fx.Node, shape_reads=frozenset()) -> list[str]:
    names: list[str] = []
    torch.fx.node.map_arg((node.args, node.kwargs),
                          lambda n: None if n in shape_reads else names.append(n.name))
    return list(dict.fromkeys(names))


_ADD_FUNCTIONS = {operator.add, operator.iadd, torch.add}
_CAT_FUNCTIONS = {torch.cat, torch.concat}
_INTERPOLATE = {F.interpolate, F.upsample, F.upsample_nearest, F.upsample_bilinear}
_ADAPTIVE_POOL_FUNCTIONS = {F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d,
                            F.adaptive_max_pool1d, F.adaptive_max_pool2d, F.adaptive_max_pool3d}


def _arg(node: torch.fx.Node, index: int, name: str, default=None):
    if len(node.args) > index:
        return node.args[index]
    return node.kwargs.get(name, default)


_CHANNEL_KEEPING_CALLS = frozenset({"relu", "relu_", "relu6", "hardtanh", "leaky_relu", "silu", "gelu",
                                    "hardswish", "sigmoid", "tanh", "contiguous", "clone", "dropout"})


def _channels_of(node, modules) -> int | None:
    """dim 1 of fx node `node`'s output, read from the conv or batch norm module that produces it
    through channel-keeping modules and calls (activations, pooling, dropout); None if unknown."""
    for _ in range(10_000):  # a walk, not recursion: deep chains of activations are fine
        if not isinstance(node, torch.fx.Node):
            return None
        module = modules.get(node.target) if node.op == "call_module" else None
        if isinstance(module, _CONV + _CONV_T):
            return int(module.out_channels)
        if isinstance(module, _BN):
            return int(module.num_features)
        name = getattr(node.target, "__name__", node.target)
        keeps = (module is not None and isinstance(module, _RANK_KEEPING) and not isinstance(module, nn.Linear)) \
            or (node.op in ("call_function", "call_method") and name in _CHANNEL_KEEPING_CALLS)
        if not keeps or not node.args:
            return None
        node = node.args[0]
    return None


def _is_global_pool(node, modules) -> bool:
    """An fx node whose output is (N, C, 1, ...): adaptive pooling to size 1."""
    if not isinstance(node, torch.fx.Node):
        return False
    size = None
    if node.op == "call_module":
        size = getattr(modules.get(node.target), "output_size", None)
    elif node.op == "call_function" and node.target in _ADAPTIVE_POOL_FUNCTIONS:
        size = _arg(node, 1, "output_size")
    sizes = size if isinstance(size, (tuple, list)) else (size,)
    return size is not None and all(s == 1 for s in sizes)


def _add_channel_node(g, node: torch.fx.Node, modules, splits: set) -> bool:
    """Adds the channel node (add, concat, split, spatial mean, resize, flatten of a globally pooled
    tensor) `node` is, and returns True; False if it is none of them."""
    target, name, outputs = node.target, node.name, [node.name]
    is_fn, is_method = node.op == "call_function", node.op == "call_method"
    if (is_fn and target in _ADD_FUNCTIONS) or (is_method and target in ("add", "add_")):
        operands = list(node.args[:2])
        if len(operands) == 2 and all(isinstance(a, torch.fx.Node) for a in operands) and "alpha" not in node.kwargs:
            g.add_activation(name, "add", [a.name for a in operands], outputs, op_type=str(getattr(target, "__name__", target)))
            return True
        return False
    if is_fn and target in _CAT_FUNCTIONS:
        parts = _arg(node, 0, "tensors")
        if _arg(node, 1, "dim", 0) == 1 and isinstance(parts, (list, tuple)) and all(isinstance(a, torch.fx.Node) for a in parts):
            g.add_activation(name, "concat", [a.name for a in parts], outputs, op_type="torch.cat")
            return True
        return False
    if (is_fn and target in (torch.mean,)) or (is_method and target == "mean"):
        dims = _arg(node, 1, "dim")
        dims = dims if isinstance(dims, (tuple, list)) else (dims,)
        if dims and all(isinstance(d, int) and d >= 2 for d in dims) and isinstance(node.args[0], torch.fx.Node):
            g.add_activation(name, "pool", [node.args[0].name], outputs, op_type="mean", pool_kind="average")
            return True
        return False
    if is_fn and target in _ADAPTIVE_POOL_FUNCTIONS and isinstance(node.args[0], torch.fx.Node):
        g.add_activation(name, "pool", [node.args[0].name], outputs, op_type=target.__name__,
                         pool_kind="max" if "max" in target.__name__ else "average")
        return True
    if is_fn and getattr(target, "__name__", "") == "stochastic_depth" and _arg(node, 3, "training", True) is False \
            and isinstance(node.args[0], torch.fx.Node):  # torchvision.ops: the identity in eval mode
        g.add_activation(name, "identity", [node.args[0].name], outputs, op_type="stochastic_depth (eval)")
        return True
    if is_fn and target in _INTERPOLATE and isinstance(node.args[0], torch.fx.Node):
        g.add_activation(name, "resize", [node.args[0].name], outputs, op_type="F.interpolate")
        return True
    if (is_fn and target is torch.flatten) or (is_method and target == "flatten"):
        start = _arg(node, 1, "start_dim", 0)
        end = _arg(node, 2, "end_dim", -1)
        if start == 1 and end == -1 and _is_global_pool(node.args[0], modules):
            g.add_activation(name, "identity", [node.args[0].name], outputs, op_type="flatten")
            return True
        return False
    is_chunk = (is_fn and target is torch.chunk) or (is_method and target == "chunk")
    if is_chunk or (is_fn and target is torch.split) or (is_method and target == "split"):
        size = _arg(node, 1, "split_size_or_sections", _arg(node, 1, "split_size"))
        dim = _arg(node, 2, "dim", 0)
        if is_chunk:  # chunks of ceil(C / n) channels, the last one smaller: needs C
            chunks, channels = _arg(node, 1, "chunks"), _channels_of(node.args[0], modules)
            if dim != 1 or not isinstance(chunks, int) or chunks < 1 or channels is None:
                return False
            size = -(-channels // chunks)
        return _add_split(g, name, node, size, dim, splits)
    return False


def _add_split_module(g, name: str, module, node: torch.fx.Node, splits: set) -> bool:
    """prepare_model's Split module (torch.split / Tensor.split made a leaf): added as the function."""
    from prequant.torch import modules as pm

    if type(module) is not pm.Split or len(node.args) != 1 or node.kwargs:
        return False
    return _add_split(g, name, node, module.split_size_or_sections, module.dim, splits)


def _add_split(g, name: str, node: torch.fx.Node, size, dim, splits: set) -> bool:
    """A split on the channel axis whose outputs are read only by getitem[k]: one split node."""
    if dim != 1 or not isinstance(node.args[0], torch.fx.Node):
        return False
    users = list(node.users)
    if not users or any(u.op != "call_function" or u.target is not operator.getitem
                        or not isinstance(u.args[1], int) or u.args[1] < 0 for u in users):
        return False
    begin, end = [], []
    for u in users:
        k = u.args[1]
        if isinstance(size, int):
            begin.append(k * size)
            end.append((k + 1) * size)
        elif isinstance(size, (list, tuple)) and k < len(size):
            begin.append(sum(size[:k]))
            end.append(sum(size[:k + 1]))
        else:
            return False
    g.add_split(name, [node.args[0].name], [u.name for u in users], begin, end, op_type="split")
    splits.add(node.name)
    return True


def _add_prequant_channel_module(g, name, module, node, outputs) -> bool:
    """prepare_model turns x + y, torch.cat, x.mean and F.interpolate into modules; map them as
    _add_channel_node maps the functions."""
    from prequant.torch import modules as pm

    args = list(node.args)
    if not args or not all(isinstance(a, torch.fx.Node) for a in args) or node.kwargs:
        return False
    names = [a.name for a in args]
    if type(module) is pm.Add and module.alpha == 1 and len(args) == 2:
        g.add_activation(name, "add", names, outputs, op_type="Add")
    elif type(module) is pm.Concat and module.dim == 1:
        g.add_activation(name, "concat", names, outputs, op_type="Concat")
    elif type(module) is pm.Mean and len(args) == 1 and module.dtype is None:
        dims = module.dim if isinstance(module.dim, tuple) else (module.dim,)
        if not dims or not all(isinstance(d, int) and d >= 2 for d in dims):
            return False
        g.add_activation(name, "pool", names, outputs, op_type="Mean", pool_kind="average")
    elif type(module) is pm.Interpolate and len(args) == 1:
        g.add_activation(name, "resize", names, outputs, op_type="Interpolate")
    else:
        return False
    return True


def _add_module(g, name, module, node, inputs, outputs, calls, rank=None, modules=None):
    type_name = type(module).__name__
    data_in = inputs[:1]
    overridden = _overridden_base(module)
    if overridden is not None:
        g.add_opaque(name, type_name, inputs, outputs,
                     reason=f"{type_name} subclasses {overridden.__module__}.{overridden.__name__} but "
                     f"overrides its forward, so it may compute something else (pad, standardize its "
                     f"weight, apply an activation); prepare_model without excluding {type_name} "
                     f"traces into it")
        return
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
            channels_last=True, input_rank=rank or 0,
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
        top = getattr(module, "max_value", None)
        g.add_activation(name, "clip", data_in, outputs, clip_min=0.0,
                         clip_max=float("inf") if top is None else float(top),
                         clip_max_per_channel=module.upper.double().tolist(), op_type=type_name)
    elif isinstance(module, nn.ReLU):
        g.add_activation(name, "relu", data_in, outputs, op_type=type_name)
    elif isinstance(module, (nn.ReLU6, nn.Hardtanh)) and calls == 1:
        lo, hi = (0.0, 6.0) if isinstance(module, nn.ReLU6) else (module.min_val, module.max_val)
        g.add_activation(name, "clip", data_in, outputs, clip_min=lo, clip_max=hi, op_type=type_name)
    elif _gate_of(module) is not None and calls == 1:
        gate = _gate_of(module)
        scale = module.gate_scale.double().tolist() if isinstance(module, GatedActivation) else None
        g.add_gated_activation(name, gate, data_in, outputs, gate_scale=scale, op_type=type_name)
    elif isinstance(module, nn.LeakyReLU):
        g.add_activation(name, "leaky_relu", data_in, outputs, alpha=module.negative_slope, op_type=type_name)
    elif isinstance(module, nn.PReLU):
        g.add_activation(name, "prelu", data_in, outputs, slope=_view(module.weight, name, "weight"),
                         op_type=type_name)
    elif isinstance(module, _IDENTITY) or (_is_stochastic_depth(module) and not module.training):
        g.add_activation(name, "identity", data_in, outputs, op_type=type_name)
    elif isinstance(module, _POOL):
        g.add_activation(name, "pool", data_in, outputs, op_type=type_name, has_padding=_pool_counts_padding(module),
                         pool_kind="max" if isinstance(module, _MAX_POOL) else "average")
    elif _add_prequant_channel_module(g, name, module, node, outputs):
        pass  # prepare_model's Add / Concat / Mean / Interpolate modules
    elif isinstance(module, nn.Upsample):
        g.add_activation(name, "resize", data_in, outputs, op_type=type_name)
    elif isinstance(module, nn.Flatten) and module.start_dim == 1 and module.end_dim == -1 and \
            _is_global_pool(node.args[0], modules):
        g.add_activation(name, "identity", data_in, outputs, op_type=type_name)
    elif isinstance(module, _ZERO_PAD) or (isinstance(module, _CONST_PAD) and module.value == 0):
        g.add_activation(name, "zero_pad", data_in, outputs, op_type=type_name)
    else:
        why = type_name
        if calls > 1 and (isinstance(module, _BN + (nn.ReLU6, nn.Hardtanh, BoundedReLU)) or _gate_of(module)):
            why += f" called at {calls} places (run prepare_model to unroll it)"
        g.add_opaque(name, why, inputs, outputs)


def _gate_of(module: nn.Module) -> str | None:
    """The engine gate of an x·g(x) activation module (SiLU, Hardswish, GELU), else None."""
    if isinstance(module, GatedActivation):
        return module.gate
    if isinstance(module, nn.SiLU):
        return "sigmoid"
    if isinstance(module, nn.Hardswish):
        return "hard_sigmoid"
    if isinstance(module, nn.GELU):
        return "gelu_tanh" if module.approximate == "tanh" else "gelu_erf"
    return None


def _is_stochastic_depth(module: nn.Module) -> bool:
    """torchvision.ops.StochasticDepth (a leaf once prepare_model has run): the identity in eval
    mode, like the functional stochastic_depth(..., training=False) above."""
    return type(module).__name__ == "StochasticDepth" and type(module).__module__.startswith("torchvision.")


# ---- subclasses ---------------------------------------------------------------------------------

_KNOWN = _CONV + _CONV_T + _BN + _IDENTITY + _POOL + _ZERO_PAD + _CONST_PAD + (
    nn.Linear, nn.ReLU, nn.ReLU6, nn.Hardtanh, nn.LeakyReLU, nn.PReLU, BoundedReLU,
    nn.SiLU, nn.Hardswish, nn.GELU, GatedActivation)
def _overridden_base(module: nn.Module):
    """The class prequant knows `module` as, if its own class overrides how that one computes."""
    cls = type(module)
    if cls in _KNOWN or not isinstance(module, _KNOWN):
        return None
    base = next(c for c in cls.__mro__ if c in _KNOWN)
    for method in ("forward", "_conv_forward"):
        if getattr(cls, method, None) is not getattr(base, method, None):
            return base
    return None


# ---- ranks (structural, no forward pass) -----------------------------------------------------

_RANK_KEEPING = _IDENTITY + _POOL + _ZERO_PAD + _CONST_PAD + (
    nn.Linear, nn.ReLU, nn.ReLU6, nn.Hardtanh, nn.LeakyReLU, nn.PReLU, BoundedReLU, GatedActivation, nn.ELU, nn.SiLU,
    nn.Hardswish, nn.Hardsigmoid, nn.GELU, nn.Mish, nn.Sigmoid, nn.Tanh, nn.BatchNorm1d, nn.LayerNorm,
    nn.GroupNorm, nn.Softmax)
_RANK_KEEPING_CALLS = frozenset({
    "relu", "relu_", "sigmoid", "tanh", "contiguous", "clone", "float", "double", "to", "abs",
    "neg", "exp", "add", "sub", "mul", "div", "softmax", "relu6", "hardtanh", "silu", "gelu",
    "hardswish", "hardsigmoid", "leaky_relu", "dropout", "batch_norm", "layer_norm", "add_", "mul_"})


def _rank_of_meta(node: torch.fx.Node):
    meta = node.meta.get("tensor_meta")
    shape = getattr(meta, "shape", None)
    if shape is None:
        shape = getattr(node.meta.get("val"), "shape", None)
    return len(shape) if shape is not None else None


def _flatten_rank(rank, start, end):
    if start == 1 and end == -1:
        return 2
    if rank is None:
        return None
    start, end = start % rank, end % rank
    return rank - (end - start)


def _reduced_rank(rank, dim, keepdim):
    """Rank after a mean/sum over `dim` (an int or a sequence of ints), or None if unknown."""
    if rank is None or keepdim is True:
        return rank
    dims = dim if isinstance(dim, (tuple, list)) else (dim,)
    if keepdim is not False or not all(isinstance(d, int) for d in dims):
        return None
    return rank - len({d % rank for d in dims})


def _tensor_ranks(fx_graph: torch.fx.Graph, modules: dict, input_ranks) -> dict:
    """fx node -> rank of its tensor, where the graph shows it (conv outputs have spatial + 2
    axes, flatten(x, 1) and view(n, -1) two, elementwise ops keep the rank; shape metadata and
    the ranks of the given inputs are used when present). Unknown ranks are absent."""
    ranks: dict = {}
    given = list(input_ranks or [])
    placeholders = 0
    for node in fx_graph.nodes:
        rank = _rank_of_meta(node)
        first = node.args[0] if node.args and isinstance(node.args[0], torch.fx.Node) else None
        inherited = ranks.get(first)
        if rank is not None:
            pass
        elif node.op == "placeholder":
            rank = given[placeholders] if placeholders < len(given) else None
            placeholders += 1
        elif node.op == "call_module":
            m = modules[node.target]
            if isinstance(m, _CONV + _CONV_T):
                rank = m.weight.dim()
            elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm3d)):
                rank = 4 if isinstance(m, nn.BatchNorm2d) else 5
            elif isinstance(m, nn.Flatten):
                rank = _flatten_rank(inherited, m.start_dim, m.end_dim)
            elif type(m).__name__ == "Reshape" and len(node.args) > 1:
                rank = len(node.args) - 1
            elif isinstance(m, _RANK_KEEPING):
                rank = inherited
            elif type(m).__name__ in ("Mean", "Sum") and type(m).__module__ == "prequant.torch.modules":
                rank = _reduced_rank(inherited, m.dim, m.keepdim)
        elif node.op in ("call_function", "call_method"):
            target = node.target if node.op == "call_method" else getattr(node.target, "__name__", "")
            if target == "flatten":
                args = list(node.args[1:]) + [None, None]
                start = node.kwargs.get("start_dim", args[0] if args[0] is not None else 0)
                end = node.kwargs.get("end_dim", args[1] if args[1] is not None else -1)
                rank = _flatten_rank(inherited, start, end) if isinstance(start, int) and isinstance(end, int) else None
            elif node.op == "call_method" and target in ("view", "reshape") and len(node.args) > 1:
                shape = node.args[1] if len(node.args) == 2 and isinstance(node.args[1], (tuple, list)) else node.args[1:]
                rank = len(shape)
            elif target in ("mean", "sum") and (len(node.args) > 1 or "dim" in node.kwargs):
                dim = node.args[1] if len(node.args) > 1 else node.kwargs["dim"]
                keepdim = node.args[2] if len(node.args) > 2 else node.kwargs.get("keepdim", False)
                rank = _reduced_rank(inherited, dim, keepdim)
            elif target in _RANK_KEEPING_CALLS or target == "truediv":
                # elementwise; with several tensors, broadcasting gives the largest rank
                tensors = node.all_input_nodes
                known = [ranks[a] for a in tensors if a in ranks]
                rank = max(known) if tensors and len(known) == len(tensors) else None
        if rank is not None:
            ranks[node] = rank
    return ranks

