"""Conversion rules for elementwise arithmetic and matrix products: ``+ - * /`` (also
in-place ``+=`` ...), ``torch.add/sub/mul/div``, ``Tensor.add_`` ..., ``@``,
``torch.matmul/mm/bmm`` -> prequant ``Add``, ``Subtract``, ``Multiply``, ``Divide``,
``MatMul``, ``BatchMatMul``.

Before:  ``y = x1 + x2``       After:  ``y = add(x1, x2)`` with ``Add()``

Precondition for ``+ - * /``: at least one operand is a tensor; arithmetic on sizes
(``x.size(1) // 2``) stays as it is. In-place forms become modules that mutate their
first operand, so later readers of it still see the same values.
"""

from __future__ import annotations

from typing import Any

from torch import fx

from .. import modules as ops
from .base import Decline, Register, Replacement, bind_inplace, constant


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


def register_rules(register: Register) -> None:
    register("add", _add, ("operator.add", "torch.add"), ("add",))
    register("add", bind_inplace(_add), ("operator.iadd",), ("add_",))
    register("sub", _sub, ("operator.sub", "torch.sub", "torch.subtract"), ("sub", "subtract"))
    register("sub", bind_inplace(_sub), ("operator.isub",), ("sub_", "subtract_"))
    register("mul", _mul, ("operator.mul", "torch.mul", "torch.multiply"), ("mul", "multiply"))
    register("mul", bind_inplace(_mul), ("operator.imul",), ("mul_", "multiply_"))
    register("div", _div, ("operator.truediv", "torch.div", "torch.divide"), ("div", "divide"))
    register("div", _true_divide, ("torch.true_divide",), ("true_divide",))
    register("div", bind_inplace(_div), ("operator.itruediv",), ("div_", "divide_"))
    register("matmul", _matmul, ("operator.matmul", "torch.matmul", "torch.mm"), ("matmul", "mm"))
    register("bmm", _bmm, ("torch.bmm",), ("bmm",))
