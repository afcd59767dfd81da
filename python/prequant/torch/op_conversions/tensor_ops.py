"""Conversion rules for tensor ops that move, join, split or reduce values:
``torch.cat/stack``, ``torch.flatten``, ``torch.reshape`` / ``Tensor.view``,
``permute``, ``transpose``, ``mean``, ``sum``, ``chunk``, ``split`` -> ``nn.Flatten`` or
prequant ``Concat``, ``Stack``, ``Reshape``, ``Permute``, ``Transpose``, ``Mean``, ``Sum``,
``Chunk``, ``Split``.

Before:  ``x.view(x.size(0), -1)``
After:   ``reshape(x, size)`` with ``Reshape(shape=<run time>)`` (the size node stays)

Shapes and dims known at trace time become module attributes; a shape computed at run
time is passed to the module's ``forward`` instead. ``view(dtype)`` declines: it
reinterprets memory.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import fx, nn

from .. import modules as ops
from .base import Decline, Register, Replacement, constant, has_node, unary


def _tensor_list(tensors: Any) -> tuple:
    # cat([a, b]) -> concat(a, b); cat(xs) with xs produced at run time -> concat(xs)
    return tuple(tensors) if isinstance(tensors, (list, tuple)) else (tensors,)


def _cat(ctx, tensors, dim=0):
    return Replacement(ops.Concat(constant(dim, "dim")), _tensor_list(tensors))


def _stack(ctx, tensors, dim=0):
    return Replacement(ops.Stack(constant(dim, "dim")), _tensor_list(tensors))


def _flatten(ctx, input, start_dim=0, end_dim=-1):
    return unary(nn.Flatten(constant(start_dim, "start_dim"), constant(end_dim, "end_dim")), input)


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
    if has_node(shape):  # e.g. x.view(x.size(0), -1)
        return Replacement(ops.Reshape(None), (input, *shape))
    return unary(ops.Reshape(shape), input)


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
    return unary(ops.Permute(constant(_shape_args((dims,)), "dims")), input)


def _permute_method(ctx, input, *dims_args, dims=None):
    # x.permute(0, 2, 1), x.permute((0, 2, 1)) and x.permute(dims=(0, 2, 1))
    dims = dims_args if dims is None else (dims,)
    return unary(ops.Permute(constant(_shape_args(dims), "dims")), input)


def _transpose(ctx, input, dim0, dim1):
    return unary(ops.Transpose(constant(dim0, "dim0"), constant(dim1, "dim1")), input)


def _reduction(module_cls: type) -> Callable:
    def build(ctx, input, dim=None, keepdim=False, dtype=None):
        return unary(module_cls(constant(dim, "dim"), constant(keepdim, "keepdim"),
                                constant(dtype, "dtype")), input)
    return build


def _chunk(ctx, input, chunks, dim=0):
    return unary(ops.Chunk(constant(chunks, "chunks"), constant(dim, "dim")), input)


def _split(ctx, tensor, split_size_or_sections, dim=0):
    return unary(ops.Split(constant(split_size_or_sections, "split_size_or_sections"),
                           constant(dim, "dim")), tensor)


def _split_method(ctx, input, split_size, dim=0):
    return _split(ctx, input, split_size, dim)


def register_rules(register: Register) -> None:
    register("cat", _cat, ("torch.cat", "torch.concat"))
    register("stack", _stack, ("torch.stack",))
    register("flatten", _flatten, ("torch.flatten",), ("flatten",))
    register("reshape", _reshape, ("torch.reshape",))
    register("reshape", _reshape_method, (), ("reshape", "view"))
    register("permute", _permute, ("torch.permute",))
    register("permute", _permute_method, (), ("permute",))
    register("transpose", _transpose, ("torch.transpose",), ("transpose",))
    register("mean", _reduction(ops.Mean), ("torch.mean",), ("mean",))
    register("sum", _reduction(ops.Sum), ("torch.sum",), ("sum",))
    register("chunk", _chunk, ("torch.chunk",), ("chunk",))
    register("split", _split, ("torch.split",))
    register("split", _split_method, (), ("split",))
