"""Conversion rules for spatial ops: pooling, padding, resizing and pixel/channel shuffles.

``F.max_pool2d``, ``F.adaptive_avg_pool2d``, ``F.pad``, ``F.interpolate``,
``F.pixel_shuffle``, ... -> ``nn.MaxPool2d``, ``nn.AdaptiveAvgPool2d``,
``nn.ZeroPad2d`` / ``nn.ReflectionPad2d`` / ..., prequant ``Interpolate``, ``nn.PixelShuffle``.

Before:  ``F.pad(x, (1, 1, 1, 1))``      After:  ``pad(x)`` with ``nn.ZeroPad2d((1, 1, 1, 1))``

Constant padding with value 0 becomes a ``ZeroPad`` module, which the engine treats as
transparent for cross-layer scaling; padding no ``nn.*PadNd`` covers keeps ``F.pad``'s
semantics in prequant ``Pad``.
"""

from __future__ import annotations

from typing import Any, Callable

from torch import nn

from .. import modules as ops
from .base import Register, Replacement, constant, has_node, unary


def _default_stride(stride: Any) -> Any:
    # torch.max_pool2d's schema default is [] (= kernel_size), the modules' is None.
    stride = constant(stride, "stride")
    return None if stride is None or (isinstance(stride, (list, tuple)) and len(stride) == 0) else stride


def _max_pool(module_cls: type) -> Callable:
    def build(ctx, input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False,
              return_indices=False):
        return unary(module_cls(constant(kernel_size, "kernel_size"), _default_stride(stride),
                                constant(padding, "padding"), constant(dilation, "dilation"),
                                return_indices=constant(return_indices, "return_indices"),
                                ceil_mode=constant(ceil_mode, "ceil_mode")), input)
    return build


def _avg_pool1d(ctx, input, kernel_size, stride=None, padding=0, ceil_mode=False,
                count_include_pad=True):
    return unary(nn.AvgPool1d(constant(kernel_size, "kernel_size"), _default_stride(stride),
                              constant(padding, "padding"), constant(ceil_mode, "ceil_mode"),
                              constant(count_include_pad, "count_include_pad")), input)


def _avg_pool(module_cls: type) -> Callable:
    def build(ctx, input, kernel_size, stride=None, padding=0, ceil_mode=False,
              count_include_pad=True, divisor_override=None):
        return unary(module_cls(constant(kernel_size, "kernel_size"), _default_stride(stride),
                                constant(padding, "padding"), constant(ceil_mode, "ceil_mode"),
                                constant(count_include_pad, "count_include_pad"),
                                constant(divisor_override, "divisor_override")), input)
    return build


def _adaptive_avg_pool(module_cls: type) -> Callable:
    def build(ctx, input, output_size):
        return unary(module_cls(constant(output_size, "output_size")), input)
    return build


def _adaptive_max_pool(module_cls: type) -> Callable:
    def build(ctx, input, output_size, return_indices=False):
        return unary(module_cls(constant(output_size, "output_size"),
                                constant(return_indices, "return_indices")), input)
    return build


def _lp_pool(module_cls: type) -> Callable:
    def build(ctx, input, norm_type, kernel_size, stride=None, ceil_mode=False):
        return unary(module_cls(constant(norm_type, "norm_type"), constant(kernel_size, "kernel_size"),
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
        return unary(ops.Pad(pad, mode, value), input)
    if key_mode == "constant":
        return unary(module_cls(pad, value), input)
    return unary(module_cls(pad), input)


def _interpolate(ctx, input, size=None, scale_factor=None, mode="nearest", align_corners=None,
                 recompute_scale_factor=None, antialias=False):
    module = ops.Interpolate(None, constant(scale_factor, "scale_factor"), constant(mode, "mode"),
                             constant(align_corners, "align_corners"),
                             constant(recompute_scale_factor, "recompute_scale_factor"),
                             constant(antialias, "antialias"))
    if has_node(size):  # e.g. size=y.shape[-2:]: pass it at run time
        return Replacement(module, (input,), {"size": size})
    module.size = size
    return unary(module, input)


def _pixel_shuffle(ctx, input, upscale_factor):
    return unary(nn.PixelShuffle(constant(upscale_factor, "upscale_factor")), input)


def _pixel_unshuffle(ctx, input, downscale_factor):
    return unary(nn.PixelUnshuffle(constant(downscale_factor, "downscale_factor")), input)


def _channel_shuffle(ctx, input, groups):
    return unary(nn.ChannelShuffle(constant(groups, "groups")), input)


def register_rules(register: Register) -> None:
    for dims in (1, 2, 3):
        max_pool = getattr(nn, f"MaxPool{dims}d")
        register(f"max_pool{dims}d", _max_pool(max_pool),
                 (f"F.max_pool{dims}d", f"F.max_pool{dims}d_with_indices", f"torch.max_pool{dims}d"))
        register(f"adaptive_avg_pool{dims}d", _adaptive_avg_pool(getattr(nn, f"AdaptiveAvgPool{dims}d")),
                 (f"F.adaptive_avg_pool{dims}d", f"torch.adaptive_avg_pool{dims}d"))
        register(f"adaptive_max_pool{dims}d", _adaptive_max_pool(getattr(nn, f"AdaptiveMaxPool{dims}d")),
                 (f"F.adaptive_max_pool{dims}d", f"F.adaptive_max_pool{dims}d_with_indices"))
        register(f"lp_pool{dims}d", _lp_pool(getattr(nn, f"LPPool{dims}d")), (f"F.lp_pool{dims}d",))
    register("avg_pool1d", _avg_pool1d, ("F.avg_pool1d", "torch.avg_pool1d"))
    register("avg_pool2d", _avg_pool(nn.AvgPool2d), ("F.avg_pool2d",))
    register("avg_pool3d", _avg_pool(nn.AvgPool3d), ("F.avg_pool3d",))
    register("pad", _pad, ("F.pad",))
    register("interpolate", _interpolate, ("F.interpolate",))
    register("pixel_shuffle", _pixel_shuffle, ("F.pixel_shuffle",))
    register("pixel_unshuffle", _pixel_unshuffle, ("F.pixel_unshuffle",))
    register("channel_shuffle", _channel_shuffle, ("F.channel_shuffle",))
