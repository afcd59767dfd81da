"""Conversion rules for activation functions: ``F.relu``, ``torch.clamp``, ``Tensor.sigmoid_``,
``F.softmax``, ... -> ``nn.ReLU``, ``nn.ReLU6`` / ``nn.Hardtanh`` / prequant ``Clamp``,
``nn.Sigmoid``, ``nn.Softmax``, ...

Before:  ``F.hardtanh(x, 0.0, 6.0)``      After:  ``relu6(x)`` with ``nn.ReLU6()``

Bounds pick the most specific module (``clamp(x, 0)`` -> ``nn.ReLU``), so the engine
recognises ReLU / ReLU6 whatever spelling the model used. In-place ops whose module has
no ``inplace`` flag convert only when nothing else reads the mutated tensor.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

from .. import modules as ops
from .base import Decline, Register, Replacement, bind_inplace, check_training, constant, unary


def _relu(ctx, input, inplace=False):
    return unary(nn.ReLU(inplace=constant(inplace, "inplace")), input)


def _relu6(ctx, input, inplace=False):
    return unary(nn.ReLU6(inplace=constant(inplace, "inplace")), input)


def _bounded(min_val: Any, max_val: Any, inplace: bool, input: Any) -> Replacement:
    """clamp/hardtanh bounds -> the most specific torch.nn module that computes them."""
    if min_val == 0 and max_val is None:
        return unary(nn.ReLU(inplace=inplace), input, name="relu")
    if min_val == 0 and max_val == 6:
        return unary(nn.ReLU6(inplace=inplace), input, name="relu6")
    if min_val is not None and max_val is not None and min_val < max_val:
        return unary(nn.Hardtanh(min_val, max_val, inplace=inplace), input, name="hardtanh")
    return unary(ops.Clamp(min_val, max_val, inplace=inplace), input, name="clamp")


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
            return unary(module_cls(inplace=constant(inplace, "inplace")), input)
    else:
        def build(ctx, input):
            return unary(module_cls(), input)
    return build


def _out_of_place(module_cls: type, op: str) -> Callable:
    """Rule for an in-place op whose module has no ``inplace`` flag (``x.sigmoid_()``)."""
    def build(ctx, input):
        ctx.require_sole_reader(input, op)
        return unary(module_cls(), input)
    return build


def _gelu(ctx, input, approximate="none"):
    return unary(nn.GELU(approximate=constant(approximate, "approximate")), input)


def _elu(ctx, input, alpha=1.0, inplace=False):
    return unary(nn.ELU(constant(alpha, "alpha"), inplace=constant(inplace, "inplace")), input)


def _celu(ctx, input, alpha=1.0, inplace=False):
    return unary(nn.CELU(constant(alpha, "alpha"), inplace=constant(inplace, "inplace")), input)


def _leaky_relu(ctx, input, negative_slope=0.01, inplace=False):
    return unary(nn.LeakyReLU(constant(negative_slope, "negative_slope"),
                              inplace=constant(inplace, "inplace")), input)


def _prelu(ctx, input, weight):
    weight = ctx.parameter(weight, "weight")
    module = nn.PReLU(num_parameters=weight.numel())
    module.weight = weight  # the model's own parameter, not a fresh one
    return unary(module, input)


def _rrelu(ctx, input, lower=1.0 / 8, upper=1.0 / 3, training=False, inplace=False):
    check_training(ctx, training, "rrelu")
    return unary(nn.RReLU(constant(lower, "lower"), constant(upper, "upper"),
                          inplace=constant(inplace, "inplace")), input)


def _softplus(ctx, input, beta=1.0, threshold=20.0):
    return unary(nn.Softplus(constant(beta, "beta"), constant(threshold, "threshold")), input)


def _threshold(ctx, input, threshold, value, inplace=False):
    return unary(nn.Threshold(constant(threshold, "threshold"), constant(value, "value"),
                              inplace=constant(inplace, "inplace")), input)


def _shrink(module_cls: type) -> Callable:
    def build(ctx, input, lambd=0.5):
        return unary(module_cls(constant(lambd, "lambd")), input)
    return build


def _glu(ctx, input, dim=-1):
    return unary(nn.GLU(constant(dim, "dim")), input)


def _softmax_like(module_cls: type) -> tuple[Callable, Callable]:
    """(F.softmax-style rule, torch.softmax / Tensor.softmax-style rule)."""
    def module_for(dim, dtype):
        if constant(dtype, "dtype") is not None:
            raise Decline(f"dtype={dtype}: {module_cls.__name__} has no dtype argument")
        return module_cls(dim=constant(dim, "dim"))

    def functional(ctx, input, dim=None, _stacklevel=3, dtype=None):
        return unary(module_for(dim, dtype), input)

    def tensor_form(ctx, input, dim, dtype=None):
        return unary(module_for(dim, dtype), input)

    return functional, tensor_form


def register_rules(register: Register) -> None:
    register("relu", _relu, ("F.relu", "torch.relu"), ("relu",))
    register("relu", bind_inplace(_relu), ("F.relu_", "torch.relu_"), ("relu_",))
    register("relu6", _relu6, ("F.relu6",))
    register("hardtanh", _hardtanh, ("F.hardtanh",))
    register("hardtanh", bind_inplace(_hardtanh), ("F.hardtanh_",))
    register("clamp", _clamp, ("torch.clamp", "torch.clip"), ("clamp", "clip"))
    register("clamp", bind_inplace(_clamp), ("torch.clamp_", "torch.clip_"), ("clamp_", "clip_"))
    register("hardswish", _simple(nn.Hardswish, inplace_arg=True), ("F.hardswish",))
    register("hardsigmoid", _simple(nn.Hardsigmoid, inplace_arg=True), ("F.hardsigmoid",))
    register("silu", _simple(nn.SiLU, inplace_arg=True), ("F.silu",))
    register("mish", _simple(nn.Mish, inplace_arg=True), ("F.mish",))
    register("selu", _simple(nn.SELU, inplace_arg=True), ("F.selu", "torch.selu"))
    register("selu", bind_inplace(_simple(nn.SELU, inplace_arg=True)), ("F.selu_", "torch.selu_"))
    register("gelu", _gelu, ("F.gelu",))
    register("sigmoid", _simple(nn.Sigmoid), ("F.sigmoid", "torch.sigmoid"), ("sigmoid",))
    register("sigmoid", _out_of_place(nn.Sigmoid, "sigmoid_"), ("torch.sigmoid_",), ("sigmoid_",))
    register("tanh", _simple(nn.Tanh), ("F.tanh", "torch.tanh"), ("tanh",))
    register("tanh", _out_of_place(nn.Tanh, "tanh_"), ("torch.tanh_",), ("tanh_",))
    register("elu", _elu, ("F.elu",))
    register("elu", bind_inplace(_elu), ("F.elu_",))
    register("celu", _celu, ("F.celu", "torch.celu"))
    register("celu", bind_inplace(_celu), ("F.celu_", "torch.celu_"))
    register("leaky_relu", _leaky_relu, ("F.leaky_relu",))
    register("leaky_relu", bind_inplace(_leaky_relu), ("F.leaky_relu_",))
    register("prelu", _prelu, ("F.prelu", "torch.prelu"))
    register("rrelu", _rrelu, ("F.rrelu", "torch.rrelu"))
    register("rrelu", bind_inplace(_rrelu), ("F.rrelu_", "torch.rrelu_"))
    register("softplus", _softplus, ("F.softplus",))
    register("threshold", _threshold, ("F.threshold", "torch.threshold"))
    register("threshold", bind_inplace(_threshold), ("F.threshold_", "torch.threshold_"))
    register("hardshrink", _shrink(nn.Hardshrink), ("F.hardshrink", "torch.hardshrink"), ("hardshrink",))
    register("softshrink", _shrink(nn.Softshrink), ("F.softshrink",))
    register("glu", _glu, ("F.glu",))
    register("logsigmoid", _simple(nn.LogSigmoid), ("F.logsigmoid",))
    register("softsign", _simple(nn.Softsign), ("F.softsign",))
    register("tanhshrink", _simple(nn.Tanhshrink), ("F.tanhshrink",))
    for name, module_cls in (("softmax", nn.Softmax), ("log_softmax", nn.LogSoftmax), ("softmin", nn.Softmin)):
        functional, tensor_form = _softmax_like(module_cls)
        register(name, functional, (f"F.{name}",))
        register(name, tensor_form, (f"torch.{name}",), (name,))
