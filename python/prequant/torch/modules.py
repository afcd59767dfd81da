"""Small ``nn.Module`` wrappers for tensor ops that ``torch.nn`` has no module for.

``prepare_model`` replaces functionals and tensor methods with modules so that a
quantizer sees every operation as a layer it can attach observers to. Where
``torch.nn`` already has a module (``nn.ReLU``, ``nn.Flatten``, ``nn.MaxPool2d``,
...) that module is used; the classes here cover the rest.

Before:  ``y = x1 + x2``            (a ``call_function`` node, invisible to a quantizer)
After:   ``y = self.add(x1, x2)``   (an ``Add`` module)

Conventions shared by every class:

* Constant arguments of the op (``dim``, ``shape``, ``alpha``, ...) are attributes,
  set once in ``__init__`` and shown by ``repr``.
* ``forward`` takes the operands and reproduces the original op exactly: scalar and
  tensor operands both work, in either position (``2 - x`` and ``x - 2``).
* ``inplace=True`` reproduces an in-place original (``x += y``, ``x.mul_(y)``) by
  mutating the first operand, so code that reads the mutated tensor later still
  sees the same values.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "Add",
    "Subtract",
    "Multiply",
    "Divide",
    "MatMul",
    "BatchMatMul",
    "Concat",
    "Stack",
    "Reshape",
    "Permute",
    "Transpose",
    "Mean",
    "Sum",
    "Clamp",
    "Pad",
    "Interpolate",
    "Chunk",
    "Split",
]


def _attrs_repr(**attrs: Any) -> str:
    return ", ".join(f"{name}={value!r}" for name, value in attrs.items())


class Add(nn.Module):
    """``input + alpha * other`` (``operator.add``, ``torch.add``, ``Tensor.add(_)``)."""

    def __init__(self, alpha: Any = 1, inplace: bool = False) -> None:
        super().__init__()
        self.alpha = alpha
        self.inplace = inplace

    def forward(self, input: Any, other: Any) -> Any:
        if self.inplace:
            return input.add_(other, alpha=self.alpha)
        if self.alpha == 1:
            return input + other  # operator form also covers a scalar on the left
        return torch.add(input, other, alpha=self.alpha)

    def extra_repr(self) -> str:
        return _attrs_repr(alpha=self.alpha, inplace=self.inplace)


class Subtract(nn.Module):
    """``input - alpha * other`` (``operator.sub``, ``torch.sub``, ``Tensor.sub(_)``)."""

    def __init__(self, alpha: Any = 1, inplace: bool = False) -> None:
        super().__init__()
        self.alpha = alpha
        self.inplace = inplace

    def forward(self, input: Any, other: Any) -> Any:
        if self.inplace:
            return input.sub_(other, alpha=self.alpha)
        if self.alpha == 1:
            return input - other
        return torch.sub(input, other, alpha=self.alpha)

    def extra_repr(self) -> str:
        return _attrs_repr(alpha=self.alpha, inplace=self.inplace)


class Multiply(nn.Module):
    """``input * other`` (``operator.mul``, ``torch.mul``, ``Tensor.mul(_)``)."""

    def __init__(self, inplace: bool = False) -> None:
        super().__init__()
        self.inplace = inplace

    def forward(self, input: Any, other: Any) -> Any:
        if self.inplace:
            return input.mul_(other)
        return input * other

    def extra_repr(self) -> str:
        return _attrs_repr(inplace=self.inplace)


class Divide(nn.Module):
    """``input / other`` with an optional ``rounding_mode`` ('trunc' or 'floor')."""

    def __init__(self, rounding_mode: Optional[str] = None, inplace: bool = False) -> None:
        super().__init__()
        self.rounding_mode = rounding_mode
        self.inplace = inplace

    def forward(self, input: Any, other: Any) -> Any:
        if self.inplace:
            return input.div_(other, rounding_mode=self.rounding_mode)
        if self.rounding_mode is None:
            return input / other
        return torch.div(input, other, rounding_mode=self.rounding_mode)

    def extra_repr(self) -> str:
        return _attrs_repr(rounding_mode=self.rounding_mode, inplace=self.inplace)


class MatMul(nn.Module):
    """``torch.matmul(input, other)`` (also ``a @ b`` and ``torch.mm``)."""

    def forward(self, input: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
        return torch.matmul(input, other)


class BatchMatMul(nn.Module):
    """``torch.bmm(input, mat2)``: batched product of two 3-d tensors."""

    def forward(self, input: torch.Tensor, mat2: torch.Tensor) -> torch.Tensor:
        return torch.bmm(input, mat2)


def _tensor_sequence(tensors: Sequence[Any]) -> Sequence[Any]:
    # Called as concat(a, b, c) when the graph knows the list, or concat(list) when the
    # list itself was produced at run time (e.g. by torch.split).
    if len(tensors) == 1 and isinstance(tensors[0], (list, tuple)):
        return tensors[0]
    return tensors


class _JoinAlongDim(nn.Module):
    """Shared body of ``Concat`` and ``Stack``: ``join(tensors, dim)``; each subclass names
    its ``join`` and keeps its own class name in printed models."""

    join: Callable[..., torch.Tensor]

    def __init__(self, dim: int = 0) -> None:
        super().__init__()
        self.dim = dim

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        return self.join(_tensor_sequence(tensors), dim=self.dim)

    def extra_repr(self) -> str:
        return _attrs_repr(dim=self.dim)


class Concat(_JoinAlongDim):
    """``torch.cat(tensors, dim)``; ``forward(*tensors)``."""

    join = staticmethod(torch.cat)


class Stack(_JoinAlongDim):
    """``torch.stack(tensors, dim)``; ``forward(*tensors)``."""

    join = staticmethod(torch.stack)


class Reshape(nn.Module):
    """``input.reshape(shape)`` for ``torch.reshape``, ``Tensor.reshape`` and ``Tensor.view``.

    ``shape`` is an attribute when it is known at trace time. When the original shape was
    computed at run time (``x.view(x.size(0), -1)``), ``shape`` is ``None`` and the shape
    is passed to ``forward`` after the tensor. ``reshape`` returns the same values as
    ``view``; it copies only where ``view`` would have raised on a non-contiguous tensor.
    """

    def __init__(self, shape: Optional[Sequence[int]] = None) -> None:
        super().__init__()
        self.shape = None if shape is None else tuple(shape)

    def forward(self, input: torch.Tensor, *shape: Any) -> torch.Tensor:
        if not shape:
            return input.reshape(self.shape)
        if len(shape) == 1 and isinstance(shape[0], (tuple, list, torch.Size)):
            shape = shape[0]
        return input.reshape(shape)

    def extra_repr(self) -> str:
        return _attrs_repr(shape=self.shape if self.shape is not None else "<run time>")


class Permute(nn.Module):
    """``input.permute(dims)``."""

    def __init__(self, dims: Sequence[int]) -> None:
        super().__init__()
        self.dims = tuple(dims)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return input.permute(self.dims)

    def extra_repr(self) -> str:
        return _attrs_repr(dims=self.dims)


class Transpose(nn.Module):
    """``input.transpose(dim0, dim1)``."""

    def __init__(self, dim0: int, dim1: int) -> None:
        super().__init__()
        self.dim0 = dim0
        self.dim1 = dim1

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return input.transpose(self.dim0, self.dim1)

    def extra_repr(self) -> str:
        return _attrs_repr(dim0=self.dim0, dim1=self.dim1)


class _Reduction(nn.Module):
    """Shared body of ``Mean`` and ``Sum``: ``reduce(input, dim, keepdim, dtype=dtype)``;
    ``dim=None`` reduces over all elements."""

    reduce: Callable[..., torch.Tensor]

    def __init__(
        self, dim: Any = None, keepdim: bool = False, dtype: Optional[torch.dtype] = None
    ) -> None:
        super().__init__()
        self.dim = tuple(dim) if isinstance(dim, list) else dim
        self.keepdim = keepdim
        self.dtype = dtype

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if self.dim is None and not self.keepdim:
            return self.reduce(input, dtype=self.dtype)  # the overload x.mean() / x.sum() calls
        return self.reduce(input, self.dim, self.keepdim, dtype=self.dtype)

    def extra_repr(self) -> str:
        return _attrs_repr(dim=self.dim, keepdim=self.keepdim, dtype=self.dtype)


class Mean(_Reduction):
    """``torch.mean(input, dim, keepdim, dtype=dtype)``."""

    reduce = staticmethod(torch.mean)


class Sum(_Reduction):
    """``torch.sum(input, dim, keepdim, dtype=dtype)``."""

    reduce = staticmethod(torch.sum)


class Clamp(nn.Module):
    """``torch.clamp(input, min, max)`` for bounds no ``torch.nn`` activation expresses
    (only an upper bound, or ``min >= max``). ``(0, None)`` becomes ``nn.ReLU``,
    ``(0, 6)`` ``nn.ReLU6`` and other ``min < max`` pairs ``nn.Hardtanh`` instead."""

    def __init__(self, min: Any = None, max: Any = None, inplace: bool = False) -> None:
        super().__init__()
        self.min = min
        self.max = max
        self.inplace = inplace

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if self.inplace:
            return input.clamp_(self.min, self.max)
        return torch.clamp(input, self.min, self.max)

    def extra_repr(self) -> str:
        return _attrs_repr(min=self.min, max=self.max, inplace=self.inplace)


class Pad(nn.Module):
    """``F.pad(input, pad, mode, value)`` for pads no ``nn.*PadNd`` module covers
    (circular padding, or more than three padded dimensions)."""

    def __init__(self, pad: Sequence[int], mode: str = "constant", value: Optional[float] = None) -> None:
        super().__init__()
        self.pad = tuple(pad)
        self.mode = mode
        self.value = value

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return F.pad(input, self.pad, mode=self.mode, value=self.value)

    def extra_repr(self) -> str:
        return _attrs_repr(pad=self.pad, mode=self.mode, value=self.value)


class Interpolate(nn.Module):
    """``F.interpolate`` with every argument kept (``nn.Upsample`` has no ``antialias``).

    ``size`` may instead be passed to ``forward`` when the original computed it at run
    time, e.g. ``F.interpolate(x, size=y.shape[-2:])``.
    """

    def __init__(
        self,
        size: Any = None,
        scale_factor: Any = None,
        mode: str = "nearest",
        align_corners: Optional[bool] = None,
        recompute_scale_factor: Optional[bool] = None,
        antialias: bool = False,
    ) -> None:
        super().__init__()
        self.size = size
        self.scale_factor = scale_factor
        self.mode = mode
        self.align_corners = align_corners
        self.recompute_scale_factor = recompute_scale_factor
        self.antialias = antialias

    def forward(self, input: torch.Tensor, size: Any = None) -> torch.Tensor:
        return F.interpolate(
            input,
            size=self.size if size is None else size,
            scale_factor=self.scale_factor,
            mode=self.mode,
            align_corners=self.align_corners,
            recompute_scale_factor=self.recompute_scale_factor,
            antialias=self.antialias,
        )

    def extra_repr(self) -> str:
        return _attrs_repr(
            size=self.size if self.size is not None else "<run time or None>",
            scale_factor=self.scale_factor,
            mode=self.mode,
            align_corners=self.align_corners,
            recompute_scale_factor=self.recompute_scale_factor,
            antialias=self.antialias,
        )


class Chunk(nn.Module):
    """``torch.chunk(input, chunks, dim)``; returns a tuple of views."""

    def __init__(self, chunks: int, dim: int = 0) -> None:
        super().__init__()
        self.chunks = chunks
        self.dim = dim

    def forward(self, input: torch.Tensor) -> tuple:
        return torch.chunk(input, self.chunks, dim=self.dim)

    def extra_repr(self) -> str:
        return _attrs_repr(chunks=self.chunks, dim=self.dim)


class Split(nn.Module):
    """``torch.split(input, split_size_or_sections, dim)``; returns a tuple of views."""

    def __init__(self, split_size_or_sections: Any, dim: int = 0) -> None:
        super().__init__()
        self.split_size_or_sections = (
            tuple(split_size_or_sections)
            if isinstance(split_size_or_sections, list)
            else split_size_or_sections
        )
        self.dim = dim

    def forward(self, input: torch.Tensor) -> tuple:
        sections = self.split_size_or_sections
        return torch.split(input, list(sections) if isinstance(sections, tuple) else sections, dim=self.dim)

    def extra_repr(self) -> str:
        return _attrs_repr(split_size_or_sections=self.split_size_or_sections, dim=self.dim)
