"""BoundedReLU: ReLU with a per-channel upper bound — the exact form of ReLU6 after scaling.

Cross-layer scaling divides the channels entering a ReLU6 by s[c]; ReLU6 then no longer
computes the same function unless its bound becomes 6/s[c]. With the 'bound' ReLU6 policy the
engine computes those bounds and the PyTorch front end swaps the ReLU6 for this module, so the
equalized model's FP32 output equals the original's.

    y = min(max(x, 0), upper[c])     (c: the channel axis, dim 1)
"""

from __future__ import annotations

import torch
from torch import nn


class BoundedReLU(nn.Module):
    """ReLU clipped at a per-channel upper bound (channel axis 1)."""

    def __init__(self, upper: torch.Tensor):
        super().__init__()
        upper = torch.as_tensor(upper)
        # Keep a float64 model's bounds in float64: rounding 6/s[c] to float32 moves the clip by
        # ~1e-7 relative, which deep random-statistics networks amplify far above 1e-5.
        upper = upper if upper.is_floating_point() else upper.float()
        self.register_buffer("upper", upper.flatten().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = [1, -1] + [1] * (x.dim() - 2)
        return torch.minimum(torch.relu(x), self.upper.to(x.dtype).view(shape))

    def extra_repr(self) -> str:
        return f"channels={self.upper.numel()}"
