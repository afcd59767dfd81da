"""BoundedReLU: ReLU6 followed by a per-channel upper bound — the exact form of ReLU6 after scaling.

Cross-layer scaling divides the channels entering a ReLU6 by s[c]; ReLU6 then no longer
computes the same function unless its bound becomes 6/s[c]. With the 'bound' ReLU6 policy the
engine computes those bounds — normalized so that every bound is at most 6 (a uniform factor on a
scaled pair's scales is free: gauge_clip_bounds.cpp) — and the PyTorch front end swaps the ReLU6
for this module, so the equalized model's FP32 output equals the original's.

    y = min(clamp(x, 0, max_value), upper[c])     (c: the channel axis, dim 1)

The clamp comes first so that an ONNX export (Clip, then Min) and quantizers see the ReLU6 they
fuse into the conv before it: the conv output's quantized range is [0, max_value], not its whole
unclipped range. ``max_value`` None (modules pickled before it existed) means a plain ReLU.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class BoundedReLU(nn.Module):
    """ReLU6 (``clamp(x, 0, max_value)``) then a per-channel upper bound (channel axis 1)."""

    def __init__(self, upper: torch.Tensor, max_value: float | None = 6.0):
        super().__init__()
        upper = torch.as_tensor(upper)
        # Keep a float64 model's bounds in float64: rounding 6/s[c] to float32 moves the clip by
        # ~1e-7 relative, which deep random-statistics networks amplify far above 1e-5.
        upper = upper if upper.is_floating_point() else upper.float()
        self.register_buffer("upper", upper.flatten().clone())
        self.max_value = None if max_value is None or math.isinf(max_value) else float(max_value)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = [1, -1] + [1] * (x.dim() - 2)
        top = getattr(self, "max_value", None)  # absent in modules pickled before it existed
        lower = torch.relu(x) if top is None else torch.clamp(x, 0.0, top)
        return torch.minimum(lower, self.upper.to(x.dtype).view(shape))

    def extra_repr(self) -> str:
        return f"channels={self.upper.numel()}, max_value={getattr(self, 'max_value', None)}"
