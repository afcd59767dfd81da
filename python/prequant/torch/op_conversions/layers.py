"""Conversion rules for layers with parameters: ``F.linear``, ``F.conv1d/2d/3d``,
``F.conv_transpose1d/2d/3d``, ``F.layer_norm``, ``F.group_norm``, ``F.batch_norm`` ->
the matching ``torch.nn`` layer.

Before:  ``F.conv2d(x, self.weight, self.bias, padding=1)``
After:   ``conv2d(x)`` with an ``nn.Conv2d`` whose ``weight`` / ``bias`` *are* the model's
         ``self.weight`` / ``self.bias`` (no copies; ``prepare.py`` copies a tensor
         read in several places).

Precondition: every weight, bias and running statistic is a stored tensor of the model
(a ``get_attr`` node; weights and biases must be ``nn.Parameter``s), not a value
computed in forward. Channel counts and kernel sizes are read from the weight's shape;
``F.batch_norm`` picks BatchNorm1d/2d/3d from the rank of the conv output it normalizes.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import nn

from .base import Decline, Register, check_training, constant, unary


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
    return unary(_adopt(module, weight=weight, bias=bias), input)


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
        return unary(_adopt(module, weight=weight, bias=bias), input)
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
        return unary(_adopt(module, weight=weight, bias=bias), input)
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
    return unary(module, input)


def _group_norm(ctx, input, num_groups, weight=None, bias=None, eps=1e-5):
    weight = ctx.optional_parameter(weight, "weight")
    bias = ctx.optional_parameter(bias, "bias")
    if weight is None or bias is None:
        raise Decline("group_norm without both weight and bias: channel count unknown "
                      "(nn.GroupNorm needs it)")
    module = nn.GroupNorm(constant(num_groups, "num_groups"), weight.numel(), constant(eps, "eps"))
    return unary(_adopt(module, weight=weight, bias=bias), input)


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
        check_training(ctx, training, "batch_norm")
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
    return unary(module, input)


def register_rules(register: Register) -> None:
    register("linear", _linear, ("F.linear",))
    for dims in (1, 2, 3):
        register(f"conv{dims}d", _conv(getattr(nn, f"Conv{dims}d"), dims), (f"F.conv{dims}d",))
        register(f"conv_transpose{dims}d", _conv_transpose(getattr(nn, f"ConvTranspose{dims}d"), dims),
                 (f"F.conv_transpose{dims}d",))
    register("layer_norm", _layer_norm, ("F.layer_norm",))
    register("group_norm", _group_norm, ("F.group_norm",))
    register("batch_norm", _batch_norm, ("F.batch_norm",))
