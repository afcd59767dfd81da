"""BoundedReLU: ReLU6 followed by a per-channel upper bound — the exact form of ReLU6 after scaling;
GatedActivation: x·g(s[c]·x), the exact form of SiLU / HardSwish / GELU after scaling through them.

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
    """ReLU6 (``clamp(x, 0, max_value)``) then a per-channel upper bound. ``channel_axis`` is 1
    (conv activations) or -1 (between nn.Linear layers on a tensor of rank > 2, whose channels are
    the last axis), as for GatedActivation."""

    def __init__(self, upper: torch.Tensor, max_value: float | None = 6.0, channel_axis: int = 1):
        super().__init__()
        if channel_axis not in (1, -1):
            raise ValueError(f"channel_axis must be 1 or -1, got {channel_axis!r}")
        self.channel_axis = channel_axis
        upper = torch.as_tensor(upper)
        # Keep a float64 model's bounds in float64: rounding 6/s[c] to float32 moves the clip by
        # ~1e-7 relative, which deep random-statistics networks amplify far above 1e-5.
        upper = upper if upper.is_floating_point() else upper.float()
        self.register_buffer("upper", upper.flatten().clone())
        self.max_value = None if max_value is None or math.isinf(max_value) else float(max_value)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # max_value and channel_axis are absent in modules pickled before they existed
        shape = [1, -1] + [1] * (x.dim() - 2) if getattr(self, "channel_axis", 1) == 1 else [-1]
        top = getattr(self, "max_value", None)
        lower = torch.relu(x) if top is None else torch.clamp(x, 0.0, top)
        return torch.minimum(lower, self.upper.to(x.dtype).view(shape))

    def extra_repr(self) -> str:
        axis = "" if getattr(self, "channel_axis", 1) == 1 else ", channel_axis=-1"
        return f"channels={self.upper.numel()}, max_value={getattr(self, 'max_value', None)}{axis}"


_GATES = ("sigmoid", "hard_sigmoid", "gelu_erf", "gelu_tanh")


class GatedActivation(nn.Module):
    """x·g(s[c]·x): SiLU (gate 'sigmoid'), HardSwish ('hard_sigmoid': relu6(z + 3)/6) or GELU
    ('gelu_erf': Φ(z); 'gelu_tanh': its tanh approximation) with a per-channel gate scale s
    (channel axis 1), the exact form of the activation after cross-layer scaling through it.

    Scaling divides the producer's channel c by s[c] and multiplies the consumer's by s[c];
    x·g(x) at x = s·x' is s·(x'·g(s·x')), so the activation becomes x'·g(s·x') and the FP32 output
    is unchanged (``equalize_model(..., gated_activations=True)`` swaps the SiLU / Hardswish /
    GELU module for this one). ``channel_axis`` is 1 (conv activations) or -1 (between nn.Linear
    layers on a tensor of rank > 2, whose channels are the last axis)."""

    def __init__(self, gate: str, gate_scale: torch.Tensor, channel_axis: int = 1):
        super().__init__()
        if gate not in _GATES:
            raise ValueError(f"gate must be one of {_GATES}, got {gate!r}")
        if channel_axis not in (1, -1):
            raise ValueError(f"channel_axis must be 1 or -1, got {channel_axis!r}")
        self.gate = gate
        self.channel_axis = channel_axis
        gate_scale = torch.as_tensor(gate_scale)
        gate_scale = gate_scale if gate_scale.is_floating_point() else gate_scale.float()
        self.register_buffer("gate_scale", gate_scale.flatten().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = [1, -1] + [1] * (x.dim() - 2) if self.channel_axis == 1 else [-1]
        z = x * self.gate_scale.to(x.dtype).view(shape)
        if self.gate == "sigmoid":
            g = torch.sigmoid(z)
        elif self.gate == "hard_sigmoid":
            g = torch.clamp(z + 3.0, 0.0, 6.0) / 6.0
        elif self.gate == "gelu_erf":
            g = 0.5 * (1.0 + torch.erf(z * 0.7071067811865476))
        else:
            g = 0.5 * (1.0 + torch.tanh(0.7978845608028654 * (z + 0.044715 * z * z * z)))
        return x * g

    def extra_repr(self) -> str:
        axis = "" if self.channel_axis == 1 else ", channel_axis=-1"
        return f"gate={self.gate!r}, channels={self.gate_scale.numel()}{axis}"
