"""The table of functional / tensor-method -> module conversions used by ``prepare_model``.

Before:  ``call_function F.leaky_relu(x, negative_slope=0.2)``
After:   ``call_module leaky_relu(x)`` with ``leaky_relu = nn.LeakyReLU(0.2)``

Rules are looked up by the fx node's ``target``: the function object for
``call_function`` nodes (``F.relu``, ``torch.relu``, ``operator.add``...), the method
name for ``call_method`` nodes (``"relu"``, ``"view"``...). Never by node name.

Each rule's ``build`` function has the same parameters as the op it converts (same
names, same defaults), so positional and keyword calls bind alike. ``build`` receives
the node's arguments (fx ``Node`` objects for run-time values, Python values for
constants) and returns a ``Replacement``: the module plus the arguments of the new
``call_module`` node. It raises ``Decline(reason)`` when the call cannot be expressed
by a module without changing what the model computes; the node then stays as it is
and the reason goes into the summary.

This file only decides *what* to build; ``prepare.py`` edits the graph.
"""

from __future__ import annotations

import inspect
import operator
import sys
from dataclasses import dataclass, field
from functools import cached_property, partial
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F
from torch import fx, nn

from . import modules as ops

__all__ = [
    "ConversionContext",
    "Decline",
    "Replacement",
    "Rule",
    "describe_target",
    "find_rule",
    "metadata_reason",
    "reason_kept",
    "register_optional_rules",
]


class Decline(Exception):
    """Raised by a rule to leave a node unchanged; the message is the reason."""


@dataclass
class Replacement:
    """What replaces a node: ``module(*args, **kwargs)``; ``name`` overrides the rule's
    base name when the module differs from the op (``F.hardtanh(x, 0, 6)`` -> ``relu6``)."""

    module: nn.Module
    args: tuple
    kwargs: dict = field(default_factory=dict)
    name: Optional[str] = None


@dataclass(frozen=True)
class Rule:
    name: str  # base name of the new module ("relu" -> relu, relu_1, ...)
    build: Callable[..., Replacement]

    @cached_property
    def signature(self) -> inspect.Signature:
        """``build``'s signature: (ctx, <the op's own parameters>)."""
        return inspect.signature(self.build)


# --------------------------------------------------------------------------------------
# What a rule may ask about the graph
# --------------------------------------------------------------------------------------

# Methods and attributes that read tensor metadata rather than compute on values.
METADATA_METHODS = frozenset(
    {"size", "dim", "ndimension", "numel", "nelement", "element_size", "stride",
     "storage_offset", "is_contiguous", "item", "tolist", "get_device", "data_ptr",
     "is_floating_point", "is_complex"}
)
METADATA_ATTRIBUTES = frozenset(
    {"shape", "ndim", "dtype", "device", "is_cuda", "layout", "requires_grad",
     "is_quantized", "is_sparse", "names"}
)
# Functions that, applied to sizes, give sizes (shape arithmetic such as `c // groups`).
_SCALAR_MODULES = frozenset({"_operator", "operator", "math", "builtins"})

# Single-input modules that keep the rank of their input (used to find the rank of a
# functional batch_norm's input from the conv before it).
_RANK_PRESERVING = (
    nn.ReLU, nn.ReLU6, nn.Hardtanh, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.SiLU, nn.Hardswish,
    nn.Hardsigmoid, nn.GELU, nn.Mish, nn.Sigmoid, nn.Tanh, nn.Identity, nn.modules.dropout._DropoutNd,
)


def _is_metadata(node: fx.Node) -> bool:
    if node.op == "call_method":
        return node.target in METADATA_METHODS
    if node.op == "call_function":
        if node.target is getattr:
            return len(node.args) > 1 and node.args[1] in METADATA_ATTRIBUTES
        return node.target is len
    return False


def metadata_reason(node: fx.Node) -> Optional[str]:
    if not _is_metadata(node):
        return None
    if node.op == "call_function" and node.target is getattr:
        return f"reads tensor attribute `.{node.args[1]}` (metadata, not a computation)"
    return "reads tensor metadata (sizes, rank), not a computation"


def find_size_nodes(graph: fx.Graph) -> set[fx.Node]:
    """Nodes whose value is a size or other non-tensor metadata: ``x.size()``, ``x.shape``,
    ``len(x)``, and indexing/arithmetic on those. One forward pass in graph order."""
    sizes: set[fx.Node] = set()
    for node in graph.nodes:
        if _is_metadata(node):
            sizes.add(node)
        elif node.op == "call_function" and getattr(node.target, "__module__", None) in _SCALAR_MODULES:
            inputs = node.all_input_nodes
            if inputs and all(n in sizes for n in inputs):
                sizes.add(node)
    return sizes


class ConversionContext:
    """Read-only view of the graph module that rules use to fetch parameters and facts.

    ``borrowed`` collects the (get_attr node, tensor) pairs the current rule took, so
    ``prepare.py`` can decide afterwards whether a tensor is shared and must be copied.
    """

    def __init__(self, graph_module: fx.GraphModule, size_nodes: set[fx.Node]) -> None:
        self.graph_module = graph_module
        self.training = graph_module.training
        self.size_nodes = size_nodes
        self.borrowed: list[tuple[fx.Node, torch.Tensor]] = []

    def tensor_attribute(self, value: Any, what: str, *, parameter: bool) -> torch.Tensor:
        if not isinstance(value, fx.Node) or value.op != "get_attr":
            raise Decline(f"`{what}` is computed in forward, not a stored parameter")
        tensor = _resolve_attribute(self.graph_module, value.target)
        if parameter and not isinstance(tensor, nn.Parameter):
            raise Decline(f"`{what}` ({value.target}) is a buffer or constant, not an nn.Parameter")
        if not isinstance(tensor, torch.Tensor):
            raise Decline(f"`{what}` ({value.target}) is not a tensor")
        self.borrowed.append((value, tensor))
        return tensor

    def parameter(self, value: Any, what: str) -> nn.Parameter:
        return self.tensor_attribute(value, what, parameter=True)

    def optional_parameter(self, value: Any, what: str) -> Optional[nn.Parameter]:
        return None if value is None else self.parameter(value, what)

    def is_size(self, value: Any) -> bool:
        return isinstance(value, fx.Node) and value in self.size_nodes

    def input_rank(self, node: Any) -> Optional[int]:
        """Rank of ``node``'s value if a conv (or batch norm) module produced it, possibly
        through rank-preserving activations; None when unknown. Assumes a batched conv
        input (ConvNd also accepts unbatched ones). Iterative, bounded."""
        for _ in range(16):
            if not isinstance(node, fx.Node) or node.op != "call_module":
                return None
            module = self.graph_module.get_submodule(node.target)
            if isinstance(module, nn.modules.conv._ConvNd):
                return len(module.kernel_size) + 2
            if isinstance(module, nn.BatchNorm1d):
                return None  # 2-d or 3-d input: ambiguous
            if isinstance(module, nn.BatchNorm2d):
                return 4
            if isinstance(module, nn.BatchNorm3d):
                return 5
            if not isinstance(module, _RANK_PRESERVING) or not node.args:
                return None
            node = node.args[0]
        return None

    def require_sole_reader(self, node: Any, op: str) -> None:
        """An in-place op may become an out-of-place module only if nothing else reads
        the tensor it mutates (and the tensor is not a model input or parameter)."""
        if not isinstance(node, fx.Node) or node.op in ("placeholder", "get_attr") or len(node.users) != 1:
            raise Decline(
                f"in-place `{op}` mutates a tensor that is read elsewhere (or is a model "
                "input/parameter) and its torch.nn module is not in-place"
            )


def _resolve_attribute(root: nn.Module, target: str) -> Any:
    owner_path, _, name = target.rpartition(".")
    owner = root.get_submodule(owner_path) if owner_path else root
    return getattr(owner, name)


def constant(value: Any, what: str) -> Any:
    """``value`` as a Python constant; Decline if it holds a value computed at run time."""
    found: list[fx.Node] = []
    fx.node.map_arg(value, found.append)
    if found:
        raise Decline(f"`{what}` is a value of the graph ({found[0].name}), not a Python constant")
    return value


def _has_node(value: Any) -> bool:
    found: list[fx.Node] = []
    fx.node.map_arg(value, found.append)
    return bool(found)


def _unary(module: nn.Module, input: Any, name: Optional[str] = None) -> Replacement:
    return Replacement(module, (input,), name=name)


# --------------------------------------------------------------------------------------
# Activations
# --------------------------------------------------------------------------------------

def _relu(ctx, input, inplace=False):
    return _unary(nn.ReLU(inplace=constant(inplace, "inplace")), input)


def _relu6(ctx, input, inplace=False):
    return _unary(nn.ReLU6(inplace=constant(inplace, "inplace")), input)


def _bounded(min_val: Any, max_val: Any, inplace: bool, input: Any) -> Replacement:
    """clamp/hardtanh bounds -> the most specific torch.nn module that computes them."""
    if min_val == 0 and max_val is None:
        return _unary(nn.ReLU(inplace=inplace), input, name="relu")
    if min_val == 0 and max_val == 6:
        return _unary(nn.ReLU6(inplace=inplace), input, name="relu6")
    if min_val is not None and max_val is not None and min_val < max_val:
        return _unary(nn.Hardtanh(min_val, max_val, inplace=inplace), input, name="hardtanh")
    return _unary(ops.Clamp(min_val, max_val, inplace=inplace), input, name="clamp")


def _hardtanh(ctx, input, min_val=-1.0, max_val=1.0, inplace=False):
    return _bounded(constant(min_val, "min_val"), constant(max_val, "max_val"),
                    constant(inplace, "inplace"), input)


def _clamp(ctx, input, min=None, max=None, inplace=False):
    for bound, what in ((min, "min"), (max, "max")):
        if isinstance(constant(bound, what), torch.Tensor):
            raise Decline(f"`{what}` is a tensor; only scalar bounds map to a module")
    if min is None and max is None:
        raise Decline("clamp without bounds")
    return _bounded(min, max, inplace, input)


def _simple(module_cls: type, *, inplace_arg: bool = False) -> Callable:
    """Rule for ``op(input[, inplace])`` -> ``module_cls([inplace])``."""
    if inplace_arg:
        def build(ctx, input, inplace=False):
            return _unary(module_cls(inplace=constant(inplace, "inplace")), input)
    else:
        def build(ctx, input):
            return _unary(module_cls(), input)
    return build


def _out_of_place(module_cls: type, op: str) -> Callable:
    """Rule for an in-place op whose module has no ``inplace`` flag (``x.sigmoid_()``)."""
    def build(ctx, input):
        ctx.require_sole_reader(input, op)
        return _unary(module_cls(), input)
    return build


def _gelu(ctx, input, approximate="none"):
    return _unary(nn.GELU(approximate=constant(approximate, "approximate")), input)


def _elu(ctx, input, alpha=1.0, inplace=False):
    return _unary(nn.ELU(constant(alpha, "alpha"), inplace=constant(inplace, "inplace")), input)


def _celu(ctx, input, alpha=1.0, inplace=False):
    return _unary(nn.CELU(constant(alpha, "alpha"), inplace=constant(inplace, "inplace")), input)


def _leaky_relu(ctx, input, negative_slope=0.01, inplace=False):
    return _unary(nn.LeakyReLU(constant(negative_slope, "negative_slope"),
                               inplace=constant(inplace, "inplace")), input)


def _prelu(ctx, input, weight):
    weight = ctx.parameter(weight, "weight")
    module = nn.PReLU(num_parameters=weight.numel())
    module.weight = weight  # the model's own parameter, not a fresh one
    return _unary(module, input)


def _rrelu(ctx, input, lower=1.0 / 8, upper=1.0 / 3, training=False, inplace=False):
    _check_training(ctx, training, "rrelu")
    return _unary(nn.RReLU(constant(lower, "lower"), constant(upper, "upper"),
                           inplace=constant(inplace, "inplace")), input)


def _softplus(ctx, input, beta=1.0, threshold=20.0):
    return _unary(nn.Softplus(constant(beta, "beta"), constant(threshold, "threshold")), input)


def _threshold(ctx, input, threshold, value, inplace=False):
    return _unary(nn.Threshold(constant(threshold, "threshold"), constant(value, "value"),
                               inplace=constant(inplace, "inplace")), input)


def _shrink(module_cls: type) -> Callable:
    def build(ctx, input, lambd=0.5):
        return _unary(module_cls(constant(lambd, "lambd")), input)
    return build


def _glu(ctx, input, dim=-1):
    return _unary(nn.GLU(constant(dim, "dim")), input)


def _softmax_like(module_cls: type) -> tuple[Callable, Callable]:
    """(F.softmax-style rule, torch.softmax / Tensor.softmax-style rule)."""
    def module_for(dim, dtype):
        if constant(dtype, "dtype") is not None:
            raise Decline(f"dtype={dtype}: {module_cls.__name__} has no dtype argument")
        return module_cls(dim=constant(dim, "dim"))

    def functional(ctx, input, dim=None, _stacklevel=3, dtype=None):
        return _unary(module_for(dim, dtype), input)

    def tensor_form(ctx, input, dim, dtype=None):
        return _unary(module_for(dim, dtype), input)

    return functional, tensor_form


# --------------------------------------------------------------------------------------
# Training-dependent ops (dropout, rrelu, batch_norm)
# --------------------------------------------------------------------------------------

def _check_training(ctx, training: Any, op: str) -> None:
    """A functional's ``training`` argument was fixed when the graph was traced. A module
    follows ``module.training`` instead, which is the same thing only if the traced value
    equals the model's mode (the usual ``training=self.training``)."""
    training = constant(training, "training")
    if bool(training) != ctx.training:
        mode = "training" if ctx.training else "eval"
        raise Decline(
            f"`{op}` is called with training={training} while the model is in {mode} mode: "
            "a module would follow the model's mode instead"
        )


def _dropout(module_cls: type, training_default: bool) -> Callable:
    def build(ctx, input, p=0.5, training=training_default, inplace=False):
        _check_training(ctx, training, "dropout")
        return _unary(module_cls(constant(p, "p"), inplace=constant(inplace, "inplace")), input)
    return build


def _torch_dropout(ctx, input, p, train):
    _check_training(ctx, train, "dropout")
    return _unary(nn.Dropout(constant(p, "p")), input)


# --------------------------------------------------------------------------------------
# Pooling, padding, resizing
# --------------------------------------------------------------------------------------

def _default_stride(stride: Any) -> Any:
    # torch.max_pool2d's schema default is [] (= kernel_size), the modules' is None.
    stride = constant(stride, "stride")
    return None if stride is None or (isinstance(stride, (list, tuple)) and len(stride) == 0) else stride


def _max_pool(module_cls: type) -> Callable:
    def build(ctx, input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False,
              return_indices=False):
        return _unary(module_cls(constant(kernel_size, "kernel_size"), _default_stride(stride),
                                 constant(padding, "padding"), constant(dilation, "dilation"),
                                 return_indices=constant(return_indices, "return_indices"),
                                 ceil_mode=constant(ceil_mode, "ceil_mode")), input)
    return build


def _avg_pool1d(ctx, input, kernel_size, stride=None, padding=0, ceil_mode=False,
                count_include_pad=True):
    return _unary(nn.AvgPool1d(constant(kernel_size, "kernel_size"), _default_stride(stride),
                               constant(padding, "padding"), constant(ceil_mode, "ceil_mode"),
                               constant(count_include_pad, "count_include_pad")), input)


def _avg_pool(module_cls: type) -> Callable:
    def build(ctx, input, kernel_size, stride=None, padding=0, ceil_mode=False,
              count_include_pad=True, divisor_override=None):
        return _unary(module_cls(constant(kernel_size, "kernel_size"), _default_stride(stride),
                                 constant(padding, "padding"), constant(ceil_mode, "ceil_mode"),
                                 constant(count_include_pad, "count_include_pad"),
                                 constant(divisor_override, "divisor_override")), input)
    return build


def _adaptive_avg_pool(module_cls: type) -> Callable:
    def build(ctx, input, output_size):
        return _unary(module_cls(constant(output_size, "output_size")), input)
    return build


def _adaptive_max_pool(module_cls: type) -> Callable:
    def build(ctx, input, output_size, return_indices=False):
        return _unary(module_cls(constant(output_size, "output_size"),
                                 constant(return_indices, "return_indices")), input)
    return build


def _lp_pool(module_cls: type) -> Callable:
    def build(ctx, input, norm_type, kernel_size, stride=None, ceil_mode=False):
        return _unary(module_cls(constant(norm_type, "norm_type"), constant(kernel_size, "kernel_size"),
                                 _default_stride(stride), constant(ceil_mode, "ceil_mode")), input)
    return build


_PAD_MODULES = {
    # (mode, number of padded dims) -> module class; "zero" is constant mode with value 0
    ("zero", 1): nn.ZeroPad1d, ("zero", 2): nn.ZeroPad2d, ("zero", 3): nn.ZeroPad3d,
    ("constant", 1): nn.ConstantPad1d, ("constant", 2): nn.ConstantPad2d, ("constant", 3): nn.ConstantPad3d,
    ("reflect", 1): nn.ReflectionPad1d, ("reflect", 2): nn.ReflectionPad2d, ("reflect", 3): nn.ReflectionPad3d,
    ("replicate", 1): nn.ReplicationPad1d, ("replicate", 2): nn.ReplicationPad2d,
    ("replicate", 3): nn.ReplicationPad3d,
}


def _pad(ctx, input, pad, mode="constant", value=None):
    pad = tuple(constant(pad, "pad"))
    mode = constant(mode, "mode")
    value = constant(value, "value")
    padded_dims = len(pad) // 2
    key_mode = "zero" if mode == "constant" and (value is None or value == 0) else mode
    module_cls = _PAD_MODULES.get((key_mode, padded_dims)) if len(pad) % 2 == 0 else None
    if module_cls is None:  # circular padding, or > 3 padded dims: keep F.pad's semantics as is
        return _unary(ops.Pad(pad, mode, value), input)
    if key_mode == "constant":
        return _unary(module_cls(pad, value), input)
    return _unary(module_cls(pad), input)


def _interpolate(ctx, input, size=None, scale_factor=None, mode="nearest", align_corners=None,
                 recompute_scale_factor=None, antialias=False):
    module = ops.Interpolate(None, constant(scale_factor, "scale_factor"), constant(mode, "mode"),
                             constant(align_corners, "align_corners"),
                             constant(recompute_scale_factor, "recompute_scale_factor"),
                             constant(antialias, "antialias"))
    if _has_node(size):  # e.g. size=y.shape[-2:]: pass it at run time
        return Replacement(module, (input,), {"size": size})
    module.size = size
    return _unary(module, input)


# --------------------------------------------------------------------------------------
# Layers with parameters: the parameter must be a stored nn.Parameter (a get_attr node)
# --------------------------------------------------------------------------------------

def _adopt(module: nn.Module, **tensors: Optional[torch.Tensor]) -> nn.Module:
    """Point ``module``'s parameters/buffers at the model's own tensors (no copies)."""
    for name, tensor in tensors.items():
        setattr(module, name, tensor)
    return module


def _linear(ctx, input, weight, bias=None):
    weight = ctx.parameter(weight, "weight")
    bias = ctx.optional_parameter(bias, "bias")
    if weight.dim() != 2:
        raise Decline(f"weight has {weight.dim()} dims, nn.Linear needs 2")
    module = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device="meta")
    return _unary(_adopt(module, weight=weight, bias=bias), input)


def _conv(module_cls: type, dims: int) -> Callable:
    def build(ctx, input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
        weight = ctx.parameter(weight, "weight")
        bias = ctx.optional_parameter(bias, "bias")
        groups = constant(groups, "groups")
        if weight.dim() != dims + 2:
            raise Decline(f"weight has {weight.dim()} dims, {module_cls.__name__} needs {dims + 2}")
        module = module_cls(weight.shape[1] * groups, weight.shape[0], tuple(weight.shape[2:]),
                            stride=constant(stride, "stride"), padding=constant(padding, "padding"),
                            dilation=constant(dilation, "dilation"), groups=groups,
                            bias=bias is not None, device="meta")
        return _unary(_adopt(module, weight=weight, bias=bias), input)
    return build


def _conv_transpose(module_cls: type, dims: int) -> Callable:
    def build(ctx, input, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1,
              dilation=1):
        weight = ctx.parameter(weight, "weight")
        bias = ctx.optional_parameter(bias, "bias")
        groups = constant(groups, "groups")
        if weight.dim() != dims + 2:
            raise Decline(f"weight has {weight.dim()} dims, {module_cls.__name__} needs {dims + 2}")
        # transposed weight layout: (in, out / groups, k...)
        module = module_cls(weight.shape[0], weight.shape[1] * groups, tuple(weight.shape[2:]),
                            stride=constant(stride, "stride"), padding=constant(padding, "padding"),
                            output_padding=constant(output_padding, "output_padding"),
                            groups=groups, bias=bias is not None,
                            dilation=constant(dilation, "dilation"), device="meta")
        return _unary(_adopt(module, weight=weight, bias=bias), input)
    return build


def _layer_norm(ctx, input, normalized_shape, weight=None, bias=None, eps=1e-5):
    weight = ctx.optional_parameter(weight, "weight")
    bias = ctx.optional_parameter(bias, "bias")
    if weight is None and bias is not None:
        raise Decline("bias without weight: nn.LayerNorm cannot express it")
    module = nn.LayerNorm(constant(normalized_shape, "normalized_shape"), constant(eps, "eps"),
                          elementwise_affine=weight is not None, bias=bias is not None)
    if weight is not None:
        _adopt(module, weight=weight, bias=bias)
    return _unary(module, input)


def _group_norm(ctx, input, num_groups, weight=None, bias=None, eps=1e-5):
    weight = ctx.optional_parameter(weight, "weight")
    bias = ctx.optional_parameter(bias, "bias")
    if weight is None or bias is None:
        raise Decline("group_norm without both weight and bias: channel count unknown "
                      "(nn.GroupNorm needs it)")
    module = nn.GroupNorm(constant(num_groups, "num_groups"), weight.numel(), constant(eps, "eps"))
    return _unary(_adopt(module, weight=weight, bias=bias), input)


def _batch_norm(ctx, input, running_mean, running_var, weight=None, bias=None, training=False,
                momentum=0.1, eps=1e-5):
    rank = ctx.input_rank(input)
    module_cls = {3: nn.BatchNorm1d, 4: nn.BatchNorm2d, 5: nn.BatchNorm3d}.get(rank)
    if module_cls is None:
        raise Decline("input rank unknown (no conv before it), so BatchNorm1d/2d/3d cannot be chosen")
    weight = ctx.optional_parameter(weight, "weight")
    bias = ctx.optional_parameter(bias, "bias")
    if (weight is None) != (bias is None):
        raise Decline("only one of weight/bias given: nn.BatchNorm has both or neither")
    if (running_mean is None) != (running_var is None):
        raise Decline("only one of running_mean/running_var given")
    if constant(momentum, "momentum") is None:
        raise Decline("momentum=None (cumulative average) differs between F.batch_norm and nn.BatchNorm")
    tracks = running_mean is not None
    if tracks:
        # With running statistics the module picks batch vs running stats by its mode.
        _check_training(ctx, training, "batch_norm")
        running_mean = ctx.tensor_attribute(running_mean, "running_mean", parameter=False)
        running_var = ctx.tensor_attribute(running_var, "running_var", parameter=False)
        num_features = running_mean.numel()
    else:
        if weight is None:
            raise Decline("no running statistics and no affine parameters: channel count unknown")
        num_features = weight.numel()
    module = module_cls(num_features, constant(eps, "eps"), momentum, affine=weight is not None,
                        track_running_stats=tracks)
    if weight is not None:
        _adopt(module, weight=weight, bias=bias)
    if tracks:
        _adopt(module, running_mean=running_mean, running_var=running_var)
        module.num_batches_tracked = module.num_batches_tracked.to(running_mean.device)
    return _unary(module, input)


def _pixel_shuffle(ctx, input, upscale_factor):
    return _unary(nn.PixelShuffle(constant(upscale_factor, "upscale_factor")), input)


def _pixel_unshuffle(ctx, input, downscale_factor):
    return _unary(nn.PixelUnshuffle(constant(downscale_factor, "downscale_factor")), input)


def _channel_shuffle(ctx, input, groups):
    return _unary(nn.ChannelShuffle(constant(groups, "groups")), input)


# --------------------------------------------------------------------------------------
# Elementwise arithmetic and tensor ops
# --------------------------------------------------------------------------------------

def _require_tensor_operand(ctx, *operands: Any) -> None:
    nodes = [o for o in operands if isinstance(o, fx.Node)]
    if not nodes or all(ctx.is_size(n) for n in nodes):
        raise Decline("arithmetic on sizes/shape values, not on tensors")


def _add(ctx, input, other, alpha=1, inplace=False):
    _require_tensor_operand(ctx, input, other)
    return Replacement(ops.Add(constant(alpha, "alpha"), inplace), (input, other))


def _sub(ctx, input, other, alpha=1, inplace=False):
    _require_tensor_operand(ctx, input, other)
    return Replacement(ops.Subtract(constant(alpha, "alpha"), inplace), (input, other))


def _mul(ctx, input, other, inplace=False):
    _require_tensor_operand(ctx, input, other)
    return Replacement(ops.Multiply(inplace), (input, other))


def _div(ctx, input, other, rounding_mode=None, inplace=False):
    _require_tensor_operand(ctx, input, other)
    return Replacement(ops.Divide(constant(rounding_mode, "rounding_mode"), inplace), (input, other))


def _true_divide(ctx, input, other):
    return _div(ctx, input, other)


def _matmul(ctx, input, other):
    return Replacement(ops.MatMul(), (input, other))


def _bmm(ctx, input, mat2):
    return Replacement(ops.BatchMatMul(), (input, mat2))


def _tensor_list(tensors: Any) -> tuple:
    # cat([a, b]) -> concat(a, b); cat(xs) with xs produced at run time -> concat(xs)
    return tuple(tensors) if isinstance(tensors, (list, tuple)) else (tensors,)


def _cat(ctx, tensors, dim=0):
    return Replacement(ops.Concat(constant(dim, "dim")), _tensor_list(tensors))


def _stack(ctx, tensors, dim=0):
    return Replacement(ops.Stack(constant(dim, "dim")), _tensor_list(tensors))


def _flatten(ctx, input, start_dim=0, end_dim=-1):
    return _unary(nn.Flatten(constant(start_dim, "start_dim"), constant(end_dim, "end_dim")), input)


def _shape_args(shape: tuple) -> tuple:
    # x.view(2, -1), x.view((2, -1)) and torch.reshape(x, (2, -1)) all mean shape (2, -1)
    if len(shape) == 1 and isinstance(shape[0], (tuple, list, torch.Size)):
        return tuple(shape[0])
    return tuple(shape)


def _reshape_to(input: Any, shape: Any) -> Replacement:
    if isinstance(shape, fx.Node):  # a whole shape computed at run time, e.g. y.shape
        return Replacement(ops.Reshape(None), (input, shape))
    shape = _shape_args(shape if isinstance(shape, tuple) else (shape,))
    if any(isinstance(s, torch.dtype) for s in shape):
        raise Decline("view(dtype) reinterprets memory; no module equivalent")
    if _has_node(shape):  # e.g. x.view(x.size(0), -1)
        return Replacement(ops.Reshape(None), (input, *shape))
    return _unary(ops.Reshape(shape), input)


def _reshape(ctx, input, shape):
    return _reshape_to(input, shape)


def _reshape_method(ctx, input, *dims, shape=None, size=None):
    # x.view(2, -1), x.view((2, -1)), x.view(size=(2, -1)), x.reshape(shape=(2, -1))
    for keyword in (shape, size):
        if keyword is not None:
            dims = (keyword,)
    if not dims:
        raise Decline("no shape given")
    return _reshape_to(input, dims)


def _permute(ctx, input, dims):
    return _unary(ops.Permute(constant(_shape_args((dims,)), "dims")), input)


def _permute_method(ctx, input, *dims_args, dims=None):
    # x.permute(0, 2, 1), x.permute((0, 2, 1)) and x.permute(dims=(0, 2, 1))
    dims = dims_args if dims is None else (dims,)
    return _unary(ops.Permute(constant(_shape_args(dims), "dims")), input)


def _transpose(ctx, input, dim0, dim1):
    return _unary(ops.Transpose(constant(dim0, "dim0"), constant(dim1, "dim1")), input)


def _reduction(module_cls: type) -> Callable:
    def build(ctx, input, dim=None, keepdim=False, dtype=None):
        return _unary(module_cls(constant(dim, "dim"), constant(keepdim, "keepdim"),
                                 constant(dtype, "dtype")), input)
    return build


def _chunk(ctx, input, chunks, dim=0):
    return _unary(ops.Chunk(constant(chunks, "chunks"), constant(dim, "dim")), input)


def _split(ctx, tensor, split_size_or_sections, dim=0):
    return _unary(ops.Split(constant(split_size_or_sections, "split_size_or_sections"),
                            constant(dim, "dim")), tensor)


def _split_method(ctx, input, split_size, dim=0):
    return _split(ctx, input, split_size, dim)


# --------------------------------------------------------------------------------------
# The registry
# --------------------------------------------------------------------------------------

_NAMESPACES = {"F": F, "torch": torch, "operator": operator}

# function object -> (display name, rule); method name -> rule
FUNCTION_RULES: dict[Any, tuple[str, Rule]] = {}
METHOD_RULES: dict[str, Rule] = {}


def _register(name: str, build: Callable, functions: tuple = (), methods: tuple = ()) -> None:
    rule = Rule(name, build)
    for qualname in functions:
        namespace, _, attr = qualname.rpartition(".")
        fn = getattr(_NAMESPACES[namespace], attr, None)
        if fn is not None:  # tolerate ops a given torch version lacks
            FUNCTION_RULES.setdefault(fn, (qualname, rule))
    for method in methods:
        if hasattr(torch.Tensor, method):
            METHOD_RULES.setdefault(method, rule)


def _inplace(build: Callable) -> Callable:
    return partial(build, inplace=True)


def _register_table() -> None:
    # activations -------------------------------------------------------------------
    _register("relu", _relu, ("F.relu", "torch.relu"), ("relu",))
    _register("relu", _inplace(_relu), ("F.relu_", "torch.relu_"), ("relu_",))
    _register("relu6", _relu6, ("F.relu6",))
    _register("hardtanh", _hardtanh, ("F.hardtanh",))
    _register("hardtanh", _inplace(_hardtanh), ("F.hardtanh_",))
    _register("clamp", _clamp, ("torch.clamp", "torch.clip"), ("clamp", "clip"))
    _register("clamp", _inplace(_clamp), ("torch.clamp_", "torch.clip_"), ("clamp_", "clip_"))
    _register("hardswish", _simple(nn.Hardswish, inplace_arg=True), ("F.hardswish",))
    _register("hardsigmoid", _simple(nn.Hardsigmoid, inplace_arg=True), ("F.hardsigmoid",))
    _register("silu", _simple(nn.SiLU, inplace_arg=True), ("F.silu",))
    _register("mish", _simple(nn.Mish, inplace_arg=True), ("F.mish",))
    _register("selu", _simple(nn.SELU, inplace_arg=True), ("F.selu", "torch.selu"))
    _register("selu", _inplace(_simple(nn.SELU, inplace_arg=True)), ("F.selu_", "torch.selu_"))
    _register("gelu", _gelu, ("F.gelu",))
    _register("sigmoid", _simple(nn.Sigmoid), ("F.sigmoid", "torch.sigmoid"), ("sigmoid",))
    _register("sigmoid", _out_of_place(nn.Sigmoid, "sigmoid_"), ("torch.sigmoid_",), ("sigmoid_",))
    _register("tanh", _simple(nn.Tanh), ("F.tanh", "torch.tanh"), ("tanh",))
    _register("tanh", _out_of_place(nn.Tanh, "tanh_"), ("torch.tanh_",), ("tanh_",))
    _register("elu", _elu, ("F.elu",))
    _register("elu", _inplace(_elu), ("F.elu_",))
    _register("celu", _celu, ("F.celu", "torch.celu"))
    _register("celu", _inplace(_celu), ("F.celu_", "torch.celu_"))
    _register("leaky_relu", _leaky_relu, ("F.leaky_relu",))
    _register("leaky_relu", _inplace(_leaky_relu), ("F.leaky_relu_",))
    _register("prelu", _prelu, ("F.prelu", "torch.prelu"))
    _register("rrelu", _rrelu, ("F.rrelu", "torch.rrelu"))
    _register("rrelu", _inplace(_rrelu), ("F.rrelu_", "torch.rrelu_"))
    _register("softplus", _softplus, ("F.softplus",))
    _register("threshold", _threshold, ("F.threshold", "torch.threshold"))
    _register("threshold", _inplace(_threshold), ("F.threshold_", "torch.threshold_"))
    _register("hardshrink", _shrink(nn.Hardshrink), ("F.hardshrink", "torch.hardshrink"), ("hardshrink",))
    _register("softshrink", _shrink(nn.Softshrink), ("F.softshrink",))
    _register("glu", _glu, ("F.glu",))
    _register("logsigmoid", _simple(nn.LogSigmoid), ("F.logsigmoid",))
    _register("softsign", _simple(nn.Softsign), ("F.softsign",))
    _register("tanhshrink", _simple(nn.Tanhshrink), ("F.tanhshrink",))
    for name, module_cls in (("softmax", nn.Softmax), ("log_softmax", nn.LogSoftmax), ("softmin", nn.Softmin)):
        functional, tensor_form = _softmax_like(module_cls)
        _register(name, functional, (f"F.{name}",))
        _register(name, tensor_form, (f"torch.{name}",), (name,))

    # dropout -------------------------------------------------------------------------
    _register("dropout", _dropout(nn.Dropout, True), ("F.dropout",))
    _register("dropout", _dropout(nn.Dropout1d, True), ("F.dropout1d",))
    _register("dropout", _dropout(nn.Dropout2d, True), ("F.dropout2d",))
    _register("dropout", _dropout(nn.Dropout3d, True), ("F.dropout3d",))
    _register("alpha_dropout", _dropout(nn.AlphaDropout, False), ("F.alpha_dropout",))
    _register("feature_alpha_dropout", _dropout(nn.FeatureAlphaDropout, False), ("F.feature_alpha_dropout",))
    _register("dropout", _torch_dropout, ("torch.dropout",))

    # pooling, padding, resizing, shuffles --------------------------------------------
    for dims in (1, 2, 3):
        max_pool = getattr(nn, f"MaxPool{dims}d")
        _register(f"max_pool{dims}d", _max_pool(max_pool),
                  (f"F.max_pool{dims}d", f"F.max_pool{dims}d_with_indices", f"torch.max_pool{dims}d"))
        _register(f"adaptive_avg_pool{dims}d", _adaptive_avg_pool(getattr(nn, f"AdaptiveAvgPool{dims}d")),
                  (f"F.adaptive_avg_pool{dims}d", f"torch.adaptive_avg_pool{dims}d"))
        _register(f"adaptive_max_pool{dims}d", _adaptive_max_pool(getattr(nn, f"AdaptiveMaxPool{dims}d")),
                  (f"F.adaptive_max_pool{dims}d", f"F.adaptive_max_pool{dims}d_with_indices"))
        _register(f"lp_pool{dims}d", _lp_pool(getattr(nn, f"LPPool{dims}d")), (f"F.lp_pool{dims}d",))
    _register("avg_pool1d", _avg_pool1d, ("F.avg_pool1d", "torch.avg_pool1d"))
    _register("avg_pool2d", _avg_pool(nn.AvgPool2d), ("F.avg_pool2d",))
    _register("avg_pool3d", _avg_pool(nn.AvgPool3d), ("F.avg_pool3d",))
    _register("pad", _pad, ("F.pad",))
    _register("interpolate", _interpolate, ("F.interpolate",))
    _register("pixel_shuffle", _pixel_shuffle, ("F.pixel_shuffle",))
    _register("pixel_unshuffle", _pixel_unshuffle, ("F.pixel_unshuffle",))
    _register("channel_shuffle", _channel_shuffle, ("F.channel_shuffle",))

    # layers with parameters ----------------------------------------------------------
    _register("linear", _linear, ("F.linear",))
    for dims in (1, 2, 3):
        _register(f"conv{dims}d", _conv(getattr(nn, f"Conv{dims}d"), dims), (f"F.conv{dims}d",))
        _register(f"conv_transpose{dims}d", _conv_transpose(getattr(nn, f"ConvTranspose{dims}d"), dims),
                  (f"F.conv_transpose{dims}d",))
    _register("layer_norm", _layer_norm, ("F.layer_norm",))
    _register("group_norm", _group_norm, ("F.group_norm",))
    _register("batch_norm", _batch_norm, ("F.batch_norm",))

    # elementwise arithmetic ----------------------------------------------------------
    _register("add", _add, ("operator.add", "torch.add"), ("add",))
    _register("add", _inplace(_add), ("operator.iadd",), ("add_",))
    _register("sub", _sub, ("operator.sub", "torch.sub", "torch.subtract"), ("sub", "subtract"))
    _register("sub", _inplace(_sub), ("operator.isub",), ("sub_", "subtract_"))
    _register("mul", _mul, ("operator.mul", "torch.mul", "torch.multiply"), ("mul", "multiply"))
    _register("mul", _inplace(_mul), ("operator.imul",), ("mul_", "multiply_"))
    _register("div", _div, ("operator.truediv", "torch.div", "torch.divide"), ("div", "divide"))
    _register("div", _true_divide, ("torch.true_divide",), ("true_divide",))
    _register("div", _inplace(_div), ("operator.itruediv",), ("div_", "divide_"))
    _register("matmul", _matmul, ("operator.matmul", "torch.matmul", "torch.mm"), ("matmul", "mm"))
    _register("bmm", _bmm, ("torch.bmm",), ("bmm",))

    # tensor ops ----------------------------------------------------------------------
    _register("cat", _cat, ("torch.cat", "torch.concat"))
    _register("stack", _stack, ("torch.stack",))
    _register("flatten", _flatten, ("torch.flatten",), ("flatten",))
    _register("reshape", _reshape, ("torch.reshape",))
    _register("reshape", _reshape_method, (), ("reshape", "view"))
    _register("permute", _permute, ("torch.permute",))
    _register("permute", _permute_method, (), ("permute",))
    _register("transpose", _transpose, ("torch.transpose",), ("transpose",))
    _register("mean", _reduction(ops.Mean), ("torch.mean",), ("mean",))
    _register("sum", _reduction(ops.Sum), ("torch.sum",), ("sum",))
    _register("chunk", _chunk, ("torch.chunk",), ("chunk",))
    _register("split", _split, ("torch.split",))
    _register("split", _split_method, (), ("split",))


_register_table()


def _stochastic_depth(ctx, input, p, mode, training=True):
    from torchvision.ops import StochasticDepth  # only reached when torchvision is loaded

    _check_training(ctx, training, "stochastic_depth")
    return _unary(StochasticDepth(constant(p, "p"), constant(mode, "mode")), input)


def register_optional_rules() -> None:
    """Rules for functions of libraries prequant does not import itself: registered once
    the library is loaded (torchvision's fx-wrapped ``stochastic_depth`` in EfficientNet,
    ConvNeXt, ... -> ``torchvision.ops.StochasticDepth``)."""
    module = sys.modules.get("torchvision.ops.stochastic_depth")
    fn = getattr(module, "stochastic_depth", None)
    if fn is not None and fn not in FUNCTION_RULES:
        FUNCTION_RULES[fn] = ("torchvision.ops.stochastic_depth", Rule("stochastic_depth", _stochastic_depth))


def find_rule(node: fx.Node) -> Optional[tuple[str, Rule]]:
    """(display name, rule) for a call_function/call_method node, or None."""
    if node.op == "call_function":
        try:
            return FUNCTION_RULES.get(node.target)
        except TypeError:  # unhashable target
            return None
    if node.op == "call_method":
        rule = METHOD_RULES.get(node.target)
        return (f"Tensor.{node.target}", rule) if rule is not None else None
    return None


def describe_target(node: fx.Node) -> str:
    """Readable name of what a node calls: ``F.relu``, ``Tensor.view``, ``operator.add``."""
    found = find_rule(node)
    if found is not None:
        return found[0]
    if node.op == "call_method":
        return f"Tensor.{node.target}"
    target = node.target
    module = getattr(target, "__module__", None) or ""
    name = getattr(target, "__name__", None) or repr(target)
    if module in ("_operator", "operator"):
        return f"operator.{name}"
    if module == "builtins":
        return name
    if module.startswith("torch.nn.functional"):
        return f"F.{name}"
    if module == "torch" or module.startswith("torch.") or module == "":
        return f"torch.{name}"
    return f"{module}.{name}"


def reason_kept(node: fx.Node, size_nodes: set[fx.Node]) -> str:
    """Why a call_function/call_method node without a rule stays as it is."""
    reason = metadata_reason(node)
    if reason is not None:
        return reason
    if node in size_nodes:
        if node.target is operator.getitem:
            return "indexes a size/shape value, not a tensor"
        return "arithmetic on sizes/shape values, not on tensors"
    if node.op == "call_function" and node.target is operator.getitem:
        return "indexing/slicing or picking an element of a tuple: no torch.nn module does this"
    if node.op == "call_method":
        return f"no torch.nn module for Tensor.{node.target}"
    module = getattr(node.target, "__module__", None) or ""
    if module.split(".")[0] not in ("torch", "_operator", "operator", "math", "builtins", ""):
        return "function wrapped with torch.fx.wrap: kept as one node, not traced into"
    return f"no torch.nn module for {describe_target(node)}"

