"""prepare_model: every converted functional and method, unrolling, exclusion, tracing
failures, and torchvision classification models, each checked against the original
model's own forward pass.

Structural checks say which modules the prepared graph calls (in order) and with which
attributes; numeric checks compare outputs with the original (exact up to 1e-6).
"""

from __future__ import annotations

import copy
import sys

import pytest
import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

from prequant.torch import PrepareError, PrepareSummary, prepare_model
from prequant.torch.modules import (
    Add,
    BatchMatMul,
    Chunk,
    Clamp,
    Concat,
    Divide,
    Interpolate,
    MatMul,
    Mean,
    Multiply,
    Pad,
    Permute,
    Reshape,
    Split,
    Stack,
    Subtract,
    Sum,
    Transpose,
)

pytestmark = pytest.mark.usefixtures("single_thread_torch")

torch.manual_seed(0)


# ---------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------

def assert_same_output(model: nn.Module, prepared: nn.Module, *inputs: torch.Tensor) -> None:
    """Outputs equal up to 1e-6; each model gets its own input copies (in-place ops)."""
    with torch.no_grad():
        expected = model(*[i.clone() for i in inputs])
        actual = prepared(*[i.clone() for i in inputs])
    torch.testing.assert_close(actual, expected, rtol=0, atol=1e-6, equal_nan=True)


def module_calls(graph_module: torch.fx.GraphModule) -> list[str]:
    return [n.target for n in graph_module.graph.nodes if n.op == "call_module"]


def remaining_calls(graph_module: torch.fx.GraphModule) -> list[torch.fx.Node]:
    return [n for n in graph_module.graph.nodes if n.op in ("call_function", "call_method")]


def randomize_batch_norms(model: nn.Module, seed: int = 0) -> nn.Module:
    """Realistic BN statistics: var in [1e-2, 10], non-zero mean, some negative gamma."""
    generator = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats:
            c = m.num_features
            m.running_mean.copy_(torch.randn(c, generator=generator))
            m.running_var.copy_(10 ** (torch.rand(c, generator=generator) * 3 - 2))
            if m.affine:
                m.weight.data.copy_(torch.randn(c, generator=generator))
                m.bias.data.copy_(torch.randn(c, generator=generator))
    return model


# ---------------------------------------------------------------------------------------
# Every converted functional / method, one input: conv -> op
# ---------------------------------------------------------------------------------------

class OneInputOp(nn.Module):
    """conv (3 -> 4 channels, 8x8) followed by the op under test."""

    def __init__(self, op):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.op = op

    def forward(self, x):
        return self.op(self.conv(x))


def chunk_method(x):
    first, second = x.chunk(2, dim=1)
    return first - second


def chunk_function(x):
    first, second = torch.chunk(x, 2, 1)
    return first * second


def split_sections(x):
    a, b = torch.split(x, [1, 3], dim=1)
    return a + b.sum(1, keepdim=True)


def split_method(x):
    parts = x.split(2, dim=1)
    return parts[0] - parts[1]


def split_then_cat(x):
    return torch.cat(torch.split(x, 1, dim=1), dim=3)


def augmented_add(x):
    x += 1.0
    return x


def max_pool_with_indices(x):
    return F.max_pool2d(x, 2, return_indices=True)[0]


def interpolate_run_time_size(x):
    return F.interpolate(x, size=(x.shape[2] * 2, x.shape[3]))


def view_run_time_shape(x):
    return x.view(x.size(0), -1)


def reshape_like(x):
    return x.flatten(1).reshape(x.shape)


def sigmoid_in_place_sole_reader(x):
    return (x * 2).sigmoid_()


# (id, op, expected module types in call order after the conv, attributes of the first,
#  ops expected to stay as they are)
ONE_INPUT_CASES = [
    # ReLU family
    ("F.relu", lambda x: F.relu(x), [nn.ReLU], {"inplace": False}, []),
    ("F.relu-inplace-kw", lambda x: F.relu(x, inplace=True), [nn.ReLU], {"inplace": True}, []),
    ("torch.relu", lambda x: torch.relu(x), [nn.ReLU], {}, []),
    ("Tensor.relu", lambda x: x.relu(), [nn.ReLU], {}, []),
    ("F.relu_", lambda x: F.relu_(x), [nn.ReLU], {"inplace": True}, []),
    ("torch.relu_", lambda x: torch.relu_(x), [nn.ReLU], {"inplace": True}, []),
    ("Tensor.relu_", lambda x: x.relu_(), [nn.ReLU], {"inplace": True}, []),
    ("F.relu6", lambda x: F.relu6(x), [nn.ReLU6], {"inplace": False}, []),
    ("F.relu6-inplace", lambda x: F.relu6(x, inplace=True), [nn.ReLU6], {"inplace": True}, []),
    ("F.hardtanh-0-6", lambda x: F.hardtanh(x, 0.0, 6.0), [nn.ReLU6], {}, []),
    ("F.hardtanh-0-6-kw", lambda x: F.hardtanh(x, min_val=0.0, max_val=6.0, inplace=True), [nn.ReLU6],
     {"inplace": True}, []),
    ("F.hardtanh-default", lambda x: F.hardtanh(x), [nn.Hardtanh], {"min_val": -1.0, "max_val": 1.0}, []),
    ("F.hardtanh-pos", lambda x: F.hardtanh(x, -0.2, 0.3), [nn.Hardtanh], {"min_val": -0.2, "max_val": 0.3}, []),
    ("F.hardtanh_", lambda x: F.hardtanh_(x, -0.5, 0.5), [nn.Hardtanh], {"inplace": True, "max_val": 0.5}, []),
    ("torch.clamp-0-6", lambda x: torch.clamp(x, 0, 6), [nn.ReLU6], {}, []),
    ("Tensor.clamp-kw-0-6", lambda x: x.clamp(min=0.0, max=6.0), [nn.ReLU6], {}, []),
    ("torch.clip", lambda x: torch.clip(x, -0.5, 0.25), [nn.Hardtanh], {"min_val": -0.5, "max_val": 0.25}, []),
    ("Tensor.clip", lambda x: x.clip(-1.5, 0.5), [nn.Hardtanh], {"min_val": -1.5, "max_val": 0.5}, []),
    ("torch.clamp-min0", lambda x: torch.clamp(x, min=0), [nn.ReLU], {}, []),
    ("Tensor.clamp-max-only", lambda x: x.clamp(max=0.25), [Clamp], {"min": None, "max": 0.25}, []),
    ("Tensor.clamp_", lambda x: x.clamp_(-0.1, 0.1), [nn.Hardtanh], {"inplace": True}, []),
    # other activations
    ("F.hardswish", lambda x: F.hardswish(x), [nn.Hardswish], {}, []),
    ("F.hardswish-inplace", lambda x: F.hardswish(x, inplace=True), [nn.Hardswish], {"inplace": True}, []),
    ("F.hardsigmoid", lambda x: F.hardsigmoid(x), [nn.Hardsigmoid], {}, []),
    ("F.gelu", lambda x: F.gelu(x), [nn.GELU], {"approximate": "none"}, []),
    ("F.gelu-tanh", lambda x: F.gelu(x, approximate="tanh"), [nn.GELU], {"approximate": "tanh"}, []),
    ("F.silu", lambda x: F.silu(x), [nn.SiLU], {"inplace": False}, []),
    ("F.silu-inplace", lambda x: F.silu(x, inplace=True), [nn.SiLU], {"inplace": True}, []),
    ("F.mish", lambda x: F.mish(x), [nn.Mish], {}, []),
    ("F.sigmoid", lambda x: F.sigmoid(x), [nn.Sigmoid], {}, []),
    ("torch.sigmoid", lambda x: torch.sigmoid(x), [nn.Sigmoid], {}, []),
    ("Tensor.sigmoid", lambda x: x.sigmoid(), [nn.Sigmoid], {}, []),
    ("Tensor.sigmoid_-sole-reader", sigmoid_in_place_sole_reader, [Multiply, nn.Sigmoid], {}, []),
    ("F.tanh", lambda x: F.tanh(x), [nn.Tanh], {}, []),
    ("torch.tanh", lambda x: torch.tanh(x), [nn.Tanh], {}, []),
    ("Tensor.tanh", lambda x: x.tanh(), [nn.Tanh], {}, []),
    ("F.elu", lambda x: F.elu(x, 0.5), [nn.ELU], {"alpha": 0.5}, []),
    ("F.elu-kw", lambda x: F.elu(x, alpha=2.0, inplace=True), [nn.ELU], {"alpha": 2.0, "inplace": True}, []),
    ("F.elu_", lambda x: F.elu_(x, 0.3), [nn.ELU], {"alpha": 0.3, "inplace": True}, []),
    ("F.selu", lambda x: F.selu(x), [nn.SELU], {}, []),
    ("torch.selu", lambda x: torch.selu(x), [nn.SELU], {}, []),
    ("F.selu-inplace", lambda x: F.selu(x, True), [nn.SELU], {"inplace": True}, []),
    ("F.celu", lambda x: F.celu(x, 0.7), [nn.CELU], {"alpha": 0.7}, []),
    ("torch.celu", lambda x: torch.celu(x, alpha=1.5), [nn.CELU], {"alpha": 1.5}, []),
    ("F.leaky_relu", lambda x: F.leaky_relu(x), [nn.LeakyReLU], {"negative_slope": 0.01}, []),
    ("F.leaky_relu-pos", lambda x: F.leaky_relu(x, 0.2), [nn.LeakyReLU],
     {"negative_slope": 0.2, "inplace": False}, []),
    ("F.leaky_relu-kw", lambda x: F.leaky_relu(x, negative_slope=0.2, inplace=True), [nn.LeakyReLU],
     {"negative_slope": 0.2, "inplace": True}, []),
    ("F.leaky_relu_", lambda x: F.leaky_relu_(x, 0.3), [nn.LeakyReLU],
     {"negative_slope": 0.3, "inplace": True}, []),
    ("F.rrelu-eval", lambda x: F.rrelu(x, 0.1, 0.3), [nn.RReLU], {"lower": 0.1, "upper": 0.3}, []),
    ("F.softplus", lambda x: F.softplus(x, beta=2, threshold=10), [nn.Softplus], {"beta": 2, "threshold": 10}, []),
    ("F.softplus-pos", lambda x: F.softplus(x, 0.5), [nn.Softplus], {"beta": 0.5}, []),
    ("F.softmax-kw", lambda x: F.softmax(x, dim=1), [nn.Softmax], {"dim": 1}, []),
    ("F.softmax-pos", lambda x: F.softmax(x, 1), [nn.Softmax], {"dim": 1}, []),
    ("torch.softmax", lambda x: torch.softmax(x, 2), [nn.Softmax], {"dim": 2}, []),
    ("Tensor.softmax", lambda x: x.softmax(dim=-1), [nn.Softmax], {"dim": -1}, []),
    ("F.log_softmax", lambda x: F.log_softmax(x, dim=1), [nn.LogSoftmax], {"dim": 1}, []),
    ("torch.log_softmax", lambda x: torch.log_softmax(x, 1), [nn.LogSoftmax], {"dim": 1}, []),
    ("Tensor.log_softmax", lambda x: x.log_softmax(3), [nn.LogSoftmax], {"dim": 3}, []),
    ("F.softmin", lambda x: F.softmin(x, dim=1), [nn.Softmin], {"dim": 1}, []),
    ("F.glu", lambda x: F.glu(x, dim=1), [nn.GLU], {"dim": 1}, []),
    ("F.glu-default", lambda x: F.glu(x), [nn.GLU], {"dim": -1}, []),
    ("F.logsigmoid", lambda x: F.logsigmoid(x), [nn.LogSigmoid], {}, []),
    ("F.softsign", lambda x: F.softsign(x), [nn.Softsign], {}, []),
    ("F.tanhshrink", lambda x: F.tanhshrink(x), [nn.Tanhshrink], {}, []),
    ("F.threshold", lambda x: F.threshold(x, 0.1, 20.0), [nn.Threshold], {"threshold": 0.1, "value": 20.0}, []),
    ("F.threshold_", lambda x: F.threshold_(x, 0.1, -1.0), [nn.Threshold], {"inplace": True}, []),
    ("torch.threshold", lambda x: torch.threshold(x, 0.2, 0.0), [nn.Threshold], {"threshold": 0.2}, []),
    ("F.hardshrink", lambda x: F.hardshrink(x, 0.3), [nn.Hardshrink], {"lambd": 0.3}, []),
    ("Tensor.hardshrink", lambda x: x.hardshrink(lambd=0.2), [nn.Hardshrink], {"lambd": 0.2}, []),
    ("F.softshrink", lambda x: F.softshrink(x, lambd=0.4), [nn.Softshrink], {"lambd": 0.4}, []),
    # dropout (eval model, training=False)
    ("F.dropout-eval", lambda x: F.dropout(x, p=0.3, training=False), [nn.Dropout], {"p": 0.3}, []),
    ("F.dropout2d-eval", lambda x: F.dropout2d(x, 0.2, False), [nn.Dropout2d], {"p": 0.2}, []),
    ("F.alpha_dropout", lambda x: F.alpha_dropout(x, 0.1), [nn.AlphaDropout], {"p": 0.1}, []),
    ("F.feature_alpha_dropout", lambda x: F.feature_alpha_dropout(x, 0.1), [nn.FeatureAlphaDropout], {}, []),
    ("torch.dropout", lambda x: torch.dropout(x, 0.2, False), [nn.Dropout], {"p": 0.2}, []),
    # flatten / reshape / permute / transpose
    ("torch.flatten", lambda x: torch.flatten(x, 1), [nn.Flatten], {"start_dim": 1, "end_dim": -1}, []),
    ("torch.flatten-all", lambda x: torch.flatten(x), [nn.Flatten], {"start_dim": 0}, []),
    ("Tensor.flatten-kw", lambda x: x.flatten(start_dim=2, end_dim=3), [nn.Flatten],
     {"start_dim": 2, "end_dim": 3}, []),
    ("Tensor.view", lambda x: x.view(2, -1), [Reshape], {"shape": (2, -1)}, []),
    ("Tensor.view-tuple", lambda x: x.view((2, 4, 64)), [Reshape], {"shape": (2, 4, 64)}, []),
    ("Tensor.view-flat", lambda x: x.view(-1), [Reshape], {"shape": (-1,)}, []),
    ("Tensor.view-run-time", view_run_time_shape, [Reshape], {"shape": None}, ["Tensor.size"]),
    ("Tensor.reshape", lambda x: x.reshape(2, 4, -1), [Reshape], {"shape": (2, 4, -1)}, []),
    ("Tensor.reshape-like", reshape_like, [nn.Flatten, Reshape], {}, ["getattr"]),
    ("torch.reshape", lambda x: torch.reshape(x, (2, -1)), [Reshape], {"shape": (2, -1)}, []),
    ("Tensor.permute", lambda x: x.permute(0, 2, 3, 1), [Permute], {"dims": (0, 2, 3, 1)}, []),
    ("Tensor.permute-tuple", lambda x: x.permute((0, 3, 1, 2)), [Permute], {"dims": (0, 3, 1, 2)}, []),
    ("Tensor.permute-kw", lambda x: x.permute(dims=(0, 2, 1, 3)), [Permute], {"dims": (0, 2, 1, 3)}, []),
    ("torch.permute", lambda x: torch.permute(x, (0, 2, 3, 1)), [Permute], {"dims": (0, 2, 3, 1)}, []),
    ("Tensor.transpose", lambda x: x.transpose(1, 2), [Transpose], {"dim0": 1, "dim1": 2}, []),
    ("torch.transpose", lambda x: torch.transpose(x, 2, 3), [Transpose], {"dim0": 2, "dim1": 3}, []),
    # reductions
    ("Tensor.mean-all", lambda x: x.mean(), [Mean], {"dim": None}, []),
    ("Tensor.mean-dims", lambda x: x.mean([2, 3]), [Mean], {"dim": (2, 3), "keepdim": False}, []),
    ("torch.mean-kw", lambda x: torch.mean(x, dim=(2, 3), keepdim=True), [Mean], {"keepdim": True}, []),
    ("Tensor.mean-pos", lambda x: x.mean(1, True), [Mean], {"dim": 1, "keepdim": True}, []),
    ("Tensor.mean-all-keepdim", lambda x: x.mean(dim=None, keepdim=True), [Mean], {"keepdim": True}, []),
    ("Tensor.sum", lambda x: x.sum(dim=1), [Sum], {"dim": 1}, []),
    ("Tensor.sum-all-keepdim", lambda x: x.sum(None, True), [Sum], {"dim": None, "keepdim": True}, []),
    ("torch.sum-all", lambda x: torch.sum(x), [Sum], {"dim": None}, []),
    ("torch.sum-dtype", lambda x: torch.sum(x, 1, dtype=torch.float64), [Sum], {"dtype": torch.float64}, []),
    # padding
    ("F.pad-1d", lambda x: F.pad(x, (1, 1)), [nn.ZeroPad1d], {"padding": (1, 1)}, []),
    ("F.pad-2d", lambda x: F.pad(x, (1, 2, 3, 4)), [nn.ZeroPad2d], {"padding": (1, 2, 3, 4)}, []),
    ("F.pad-3d", lambda x: F.pad(x, (1, 1, 1, 1, 1, 1)), [nn.ZeroPad3d], {}, []),
    ("F.pad-value0", lambda x: F.pad(x, [1, 1, 1, 1], value=0.0), [nn.ZeroPad2d], {}, []),
    ("F.pad-crop", lambda x: F.pad(x, (-1, -2)), [nn.ZeroPad1d], {"padding": (-1, -2)}, []),
    ("F.pad-constant", lambda x: F.pad(x, (1, 1, 2, 2), mode="constant", value=0.5), [nn.ConstantPad2d],
     {"value": 0.5}, []),
    ("F.pad-reflect", lambda x: F.pad(x, (1, 1, 1, 1), mode="reflect"), [nn.ReflectionPad2d], {}, []),
    ("F.pad-replicate", lambda x: F.pad(x, (2, 2, 1, 1), "replicate"), [nn.ReplicationPad2d], {}, []),
    ("F.pad-circular", lambda x: F.pad(x, (1, 1, 1, 1), mode="circular"), [Pad], {"mode": "circular"}, []),
    # resizing
    ("F.interpolate-scale", lambda x: F.interpolate(x, scale_factor=2), [Interpolate],
     {"scale_factor": 2, "mode": "nearest"}, []),
    ("F.interpolate-size", lambda x: F.interpolate(x, size=(5, 7), mode="bilinear", align_corners=False),
     [Interpolate], {"size": (5, 7), "mode": "bilinear", "align_corners": False}, []),
    ("F.interpolate-antialias", lambda x: F.interpolate(x, scale_factor=0.5, mode="bilinear", antialias=True),
     [Interpolate], {"antialias": True}, []),
    ("F.interpolate-run-time-size", interpolate_run_time_size, [Interpolate], {"size": None},
     ["getattr", "operator.getitem", "operator.mul", "getattr", "operator.getitem"]),
    # pooling
    ("F.max_pool2d", lambda x: F.max_pool2d(x, 2), [nn.MaxPool2d], {"kernel_size": 2, "stride": 2}, []),
    ("F.max_pool2d-kw", lambda x: F.max_pool2d(x, kernel_size=3, stride=1, padding=1, ceil_mode=True),
     [nn.MaxPool2d], {"stride": 1, "padding": 1, "ceil_mode": True}, []),
    ("torch.max_pool2d", lambda x: torch.max_pool2d(x, 2), [nn.MaxPool2d], {"stride": 2}, []),
    ("F.max_pool2d-indices", max_pool_with_indices, [nn.MaxPool2d], {"return_indices": True},
     ["operator.getitem"]),
    ("F.max_pool1d", lambda x: F.max_pool1d(x.flatten(2), 4), [nn.Flatten, nn.MaxPool1d], {}, []),
    ("F.max_pool3d", lambda x: F.max_pool3d(x, 2), [nn.MaxPool3d], {}, []),
    ("F.avg_pool2d", lambda x: F.avg_pool2d(x, 2), [nn.AvgPool2d], {"kernel_size": 2}, []),
    ("F.avg_pool2d-kw", lambda x: F.avg_pool2d(x, 3, stride=2, padding=1, count_include_pad=False),
     [nn.AvgPool2d], {"stride": 2, "count_include_pad": False}, []),
    ("F.avg_pool1d", lambda x: F.avg_pool1d(x.flatten(2), 4), [nn.Flatten, nn.AvgPool1d], {}, []),
    ("F.avg_pool3d", lambda x: F.avg_pool3d(x, 2), [nn.AvgPool3d], {}, []),
    ("F.adaptive_avg_pool2d", lambda x: F.adaptive_avg_pool2d(x, 1), [nn.AdaptiveAvgPool2d],
     {"output_size": 1}, []),
    ("F.adaptive_avg_pool2d-tuple", lambda x: F.adaptive_avg_pool2d(x, (2, 3)), [nn.AdaptiveAvgPool2d],
     {"output_size": (2, 3)}, []),
    ("F.adaptive_avg_pool1d", lambda x: F.adaptive_avg_pool1d(x.flatten(2), 5),
     [nn.Flatten, nn.AdaptiveAvgPool1d], {}, []),
    ("F.adaptive_avg_pool3d", lambda x: F.adaptive_avg_pool3d(x, 2), [nn.AdaptiveAvgPool3d], {}, []),
    ("F.adaptive_max_pool2d", lambda x: F.adaptive_max_pool2d(x, 2), [nn.AdaptiveMaxPool2d], {}, []),
    ("F.adaptive_max_pool1d", lambda x: F.adaptive_max_pool1d(x.flatten(2), 3),
     [nn.Flatten, nn.AdaptiveMaxPool1d], {}, []),
    ("F.lp_pool2d", lambda x: F.lp_pool2d(x, 2, 2), [nn.LPPool2d], {"norm_type": 2}, []),
    ("F.lp_pool1d", lambda x: F.lp_pool1d(x.flatten(2), 3, 4), [nn.Flatten, nn.LPPool1d], {}, []),
    # shuffles, normalization without parameters
    ("F.pixel_shuffle", lambda x: F.pixel_shuffle(x, 2), [nn.PixelShuffle], {"upscale_factor": 2}, []),
    ("F.pixel_unshuffle", lambda x: F.pixel_unshuffle(x, 2), [nn.PixelUnshuffle], {"downscale_factor": 2}, []),
    ("F.channel_shuffle", lambda x: F.channel_shuffle(x, 2), [nn.ChannelShuffle], {"groups": 2}, []),
    ("F.layer_norm-no-affine", lambda x: F.layer_norm(x, (8, 8)), [nn.LayerNorm],
     {"normalized_shape": (8, 8), "elementwise_affine": False}, []),
    # chunk / split
    ("Tensor.chunk", chunk_method, [Chunk, Subtract], {"chunks": 2, "dim": 1},
     ["operator.getitem", "operator.getitem"]),
    ("torch.chunk", chunk_function, [Chunk, Multiply], {"chunks": 2, "dim": 1},
     ["operator.getitem", "operator.getitem"]),
    ("torch.split-sections", split_sections, [Split, Sum, Add], {"split_size_or_sections": (1, 3)},
     ["operator.getitem", "operator.getitem"]),
    ("Tensor.split", split_method, [Split, Subtract], {"split_size_or_sections": 2, "dim": 1},
     ["operator.getitem", "operator.getitem"]),
    ("torch.cat-of-split", split_then_cat, [Split, Concat], {}, []),
    # arithmetic with scalars
    ("operator.add-scalar-right", lambda x: x + 1.5, [Add], {"alpha": 1}, []),
    ("operator.add-scalar-left", lambda x: 2.0 + x, [Add], {}, []),
    ("augmented-add", augmented_add, [Add], {}, []),
    ("operator.sub-scalar-left", lambda x: 1 - x, [Subtract], {}, []),
    ("operator.mul-scalar-left", lambda x: 3 * x, [Multiply], {}, []),
    ("Tensor.mul_-scalar", lambda x: x.mul_(2.0), [Multiply], {"inplace": True}, []),
    ("operator.truediv-scalar-left", lambda x: 1 / x, [Divide], {"rounding_mode": None}, []),
    ("Tensor.div-scalar", lambda x: x.div(2), [Divide], {}, []),
    ("size-times-tensor", lambda x: x.shape[1] * x, [Multiply], {},
     ["getattr", "operator.getitem"]),
]


@pytest.mark.parametrize(
    "op, expected_types, attributes, kept",
    [pytest.param(*case[1:], id=case[0]) for case in ONE_INPUT_CASES],
)
def test_one_input_op_becomes_module(op, expected_types, attributes, kept):
    model = OneInputOp(op).eval()
    prepared = prepare_model(model)

    calls = module_calls(prepared)
    assert calls[0] == "conv"
    new_modules = [prepared.get_submodule(t) for t in calls[1:]]
    assert [type(m) for m in new_modules] == expected_types
    for name, value in attributes.items():
        assert getattr(new_modules[0], name) == value, name
    summary = prepared.prequant_summary
    assert [k.op for k in summary.kept] == kept
    assert len(remaining_calls(prepared)) == len(kept)
    assert len(summary.conversions) == len(expected_types)
    assert_same_output(model, prepared, torch.randn(2, 3, 8, 8))


# ---------------------------------------------------------------------------------------
# Two-operand ops: conv_a(x) op conv_b(x)
# ---------------------------------------------------------------------------------------

class TwoOperandOp(nn.Module):
    def __init__(self, op):
        super().__init__()
        self.conv_a = nn.Conv2d(3, 4, 3, padding=1)
        self.conv_b = nn.Conv2d(3, 4, 3, padding=1)
        self.op = op

    def forward(self, x):
        return self.op(self.conv_a(x), self.conv_b(x))


def add_in_place(a, b):
    a.add_(b)
    return a


TWO_OPERAND_CASES = [
    ("operator.add", lambda a, b: a + b, [Add], {"alpha": 1, "inplace": False}),
    ("torch.add", lambda a, b: torch.add(a, b), [Add], {}),
    ("torch.add-alpha", lambda a, b: torch.add(a, b, alpha=2), [Add], {"alpha": 2}),
    ("Tensor.add", lambda a, b: a.add(b), [Add], {}),
    ("Tensor.add-alpha", lambda a, b: a.add(b, alpha=0.5), [Add], {"alpha": 0.5}),
    ("Tensor.add_", add_in_place, [Add], {"inplace": True}),
    ("operator.sub", lambda a, b: a - b, [Subtract], {}),
    ("torch.sub-alpha", lambda a, b: torch.sub(a, b, alpha=3), [Subtract], {"alpha": 3}),
    ("torch.subtract", lambda a, b: torch.subtract(a, b), [Subtract], {}),
    ("Tensor.sub_", lambda a, b: a.sub_(b), [Subtract], {"inplace": True}),
    ("operator.mul", lambda a, b: a * b, [Multiply], {}),
    ("torch.mul", lambda a, b: torch.mul(a, b), [Multiply], {}),
    ("torch.multiply", lambda a, b: torch.multiply(a, b), [Multiply], {}),
    ("Tensor.mul", lambda a, b: a.mul(b), [Multiply], {}),
    ("operator.truediv", lambda a, b: a / b, [Divide], {}),
    ("torch.div-floor", lambda a, b: torch.div(a, b, rounding_mode="floor"), [Divide],
     {"rounding_mode": "floor"}),
    ("Tensor.divide-trunc", lambda a, b: a.divide(b, rounding_mode="trunc"), [Divide],
     {"rounding_mode": "trunc"}),
    ("torch.true_divide", lambda a, b: torch.true_divide(a, b), [Divide], {}),
    ("Tensor.div_", lambda a, b: a.div_(b), [Divide], {"inplace": True}),
    ("operator.matmul", lambda a, b: a @ b.transpose(-1, -2), [Transpose, MatMul], {}),
    ("torch.matmul", lambda a, b: torch.matmul(a, b), [MatMul], {}),
    ("Tensor.matmul", lambda a, b: a.matmul(b), [MatMul], {}),
    ("torch.mm", lambda a, b: torch.mm(a.flatten(1), b.flatten(1).transpose(0, 1)),
     [nn.Flatten, nn.Flatten, Transpose, MatMul], {}),
    ("torch.bmm", lambda a, b: torch.bmm(a.flatten(2), b.flatten(2).transpose(1, 2)),
     [nn.Flatten, nn.Flatten, Transpose, BatchMatMul], {}),
    ("Tensor.bmm", lambda a, b: a.flatten(2).bmm(b.flatten(2).transpose(1, 2)),
     [nn.Flatten, nn.Flatten, Transpose, BatchMatMul], {}),
    ("torch.cat", lambda a, b: torch.cat([a, b], dim=1), [Concat], {"dim": 1}),
    ("torch.cat-tuple-pos", lambda a, b: torch.cat((a, b, a), 2), [Concat], {"dim": 2}),
    ("torch.concat", lambda a, b: torch.concat([a, b], dim=-1), [Concat], {"dim": -1}),
    ("torch.stack", lambda a, b: torch.stack([a, b]), [Stack], {"dim": 0}),
    ("torch.stack-kw", lambda a, b: torch.stack((a, b), dim=-1), [Stack], {"dim": -1}),
    ("Tensor.view-as-other", lambda a, b: a.flatten(1).view(b.shape), [nn.Flatten, Reshape], {}),
]


@pytest.mark.parametrize(
    "op, expected_types, attributes",
    [pytest.param(*case[1:], id=case[0]) for case in TWO_OPERAND_CASES],
)
def test_two_operand_op_becomes_module(op, expected_types, attributes):
    model = TwoOperandOp(op).eval()
    prepared = prepare_model(model)

    calls = module_calls(prepared)
    assert calls[:2] == ["conv_a", "conv_b"]
    new_modules = [prepared.get_submodule(t) for t in calls[2:]]
    assert [type(m) for m in new_modules] == expected_types
    for name, value in attributes.items():
        assert getattr(new_modules[-1], name) == value, name
    assert [k.op for k in prepared.prequant_summary.kept] in ([], ["getattr"])
    assert_same_output(model, prepared, torch.randn(2, 3, 8, 8))


# ---------------------------------------------------------------------------------------
# Functionals with parameters: the parameter moves into the new module
# ---------------------------------------------------------------------------------------

class FunctionalLayers(nn.Module):
    """A network written with functionals only, its parameters held by the model."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(1)
        self.conv_weight = nn.Parameter(torch.randn(8, 3, 3, 3, generator=g) * 0.3)
        self.conv_bias = nn.Parameter(torch.randn(8, generator=g))
        self.bn_weight = nn.Parameter(torch.randn(8, generator=g))
        self.bn_bias = nn.Parameter(torch.randn(8, generator=g))
        self.register_buffer("bn_mean", torch.randn(8, generator=g))
        self.register_buffer("bn_var", 10 ** (torch.rand(8, generator=g) * 3 - 2))
        self.prelu_weight = nn.Parameter(torch.rand(8, generator=g) * 0.5)
        self.dw_weight = nn.Parameter(torch.randn(8, 1, 3, 3, generator=g))
        self.gn_weight = nn.Parameter(torch.randn(8, generator=g))
        self.gn_bias = nn.Parameter(torch.randn(8, generator=g))
        self.tconv_weight = nn.Parameter(torch.randn(8, 2, 2, 2, generator=g))  # (in, out/groups, k, k)
        self.tconv_bias = nn.Parameter(torch.randn(4, generator=g))
        self.ln_weight = nn.Parameter(torch.randn(17, generator=g))
        self.ln_bias = nn.Parameter(torch.randn(17, generator=g))
        self.fc_weight = nn.Parameter(torch.randn(5, 4 * 17 * 17, generator=g) * 0.05)
        self.fc_bias = nn.Parameter(torch.randn(5, generator=g))

    def forward(self, x):
        x = F.conv2d(x, self.conv_weight, self.conv_bias, padding=1)
        x = F.batch_norm(x, self.bn_mean, self.bn_var, self.bn_weight, self.bn_bias, self.training, 0.1, 1e-3)
        x = F.prelu(x, self.prelu_weight)
        x = F.conv2d(x, self.dw_weight, None, 1, 1, 1, 8)  # depthwise, groups positional
        x = F.group_norm(x, 4, self.gn_weight, self.gn_bias)
        x = F.conv_transpose2d(x, self.tconv_weight, self.tconv_bias, stride=2, output_padding=1, groups=2)
        x = F.layer_norm(x, (17,), self.ln_weight, self.ln_bias, eps=1e-4)
        x = torch.flatten(x, 1)
        return F.linear(x, self.fc_weight, self.fc_bias)


def test_functionals_with_parameters_become_layers():
    model = FunctionalLayers().eval()
    prepared = prepare_model(model)

    modules = [prepared.get_submodule(t) for t in module_calls(prepared)]
    assert [type(m) for m in modules] == [
        nn.Conv2d, nn.BatchNorm2d, nn.PReLU, nn.Conv2d, nn.GroupNorm, nn.ConvTranspose2d,
        nn.LayerNorm, nn.Flatten, nn.Linear,
    ]
    conv, bn, prelu, depthwise, group_norm, tconv, layer_norm, _, linear = modules
    assert (conv.in_channels, conv.out_channels, conv.kernel_size, conv.padding) == (3, 8, (3, 3), (1, 1))
    assert (depthwise.groups, depthwise.in_channels, depthwise.bias) == (8, 8, None)
    assert (tconv.in_channels, tconv.out_channels, tconv.groups, tconv.output_padding) == (8, 4, 2, (1, 1))
    assert (bn.eps, bn.num_features) == (1e-3, 8)
    assert prelu.num_parameters == 8 and group_norm.num_groups == 4 and layer_norm.eps == 1e-4
    assert (linear.in_features, linear.out_features) == (4 * 17 * 17, 5)
    torch.testing.assert_close(bn.running_var, model.bn_var, rtol=0, atol=0)
    torch.testing.assert_close(linear.weight, model.fc_weight, rtol=0, atol=0)
    assert not any(p.is_meta for p in prepared.parameters())

    # Each tensor now has exactly one owner: nothing left on the root, nothing duplicated.
    assert not [n for n, _ in prepared.named_parameters() if "." not in n]
    assert not [n for n, _ in prepared.named_buffers() if "." not in n]
    assert sum(p.numel() for p in prepared.parameters()) == sum(p.numel() for p in model.parameters())
    assert remaining_calls(prepared) == []
    assert_same_output(model, prepared, torch.randn(2, 3, 8, 8))


def test_functional_batch_norm_in_training_mode_follows_the_mode():
    model = FunctionalLayers().train()
    with pytest.warns(UserWarning, match="training mode"):
        prepared = prepare_model(model)
    assert prepared.training and prepared.batch_norm.training
    x = torch.randn(2, 3, 8, 8)
    assert_same_output(model, prepared, x)  # batch statistics, running stats updated alike
    torch.testing.assert_close(prepared.batch_norm.running_mean, model.bn_mean, rtol=0, atol=1e-6)
    model.eval()
    prepared.eval()
    assert_same_output(model, prepared, x)


class ParamOp(nn.Module):
    def __init__(self, weight_shape, bias_shape, op):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(weight_shape) * 0.3)
        self.bias = nn.Parameter(torch.randn(bias_shape)) if bias_shape else None
        self.op = op

    def forward(self, x):
        return self.op(x, self.weight, self.bias)


PARAM_CASES = [
    ("F.conv1d", (6, 3, 3), (6,), lambda x, w, b: F.conv1d(x, w, b, stride=2), (2, 3, 9), nn.Conv1d,
     {"stride": (2,)}),
    ("F.conv2d-same-dilated", (4, 3, 3, 3), None, lambda x, w, b: F.conv2d(x, w, padding="same", dilation=2),
     (1, 3, 9, 9), nn.Conv2d, {"padding": "same", "dilation": (2, 2)}),
    ("F.conv3d", (4, 3, 2, 2, 2), (4,), lambda x, w, b: F.conv3d(x, w, b), (1, 3, 4, 4, 4), nn.Conv3d, {}),
    ("F.conv_transpose1d", (3, 5, 4), (5,), lambda x, w, b: F.conv_transpose1d(x, w, b, 2, 1),
     (1, 3, 7), nn.ConvTranspose1d, {"stride": (2,), "padding": (1,)}),
    ("F.conv_transpose3d", (3, 2, 2, 2, 2), None, lambda x, w, b: F.conv_transpose3d(x, w),
     (1, 3, 3, 3, 3), nn.ConvTranspose3d, {}),
    ("F.linear-no-bias", (7, 5), None, lambda x, w, b: F.linear(x, w), (4, 5), nn.Linear,
     {"in_features": 5, "out_features": 7}),
    ("F.linear-kw", (7, 5), (7,), lambda x, w, b: F.linear(input=x, weight=w, bias=b), (2, 3, 5), nn.Linear, {}),
    ("torch.prelu", (3,), None, lambda x, w, b: torch.prelu(x, w), (2, 3, 4), nn.PReLU, {"num_parameters": 3}),
    ("F.layer_norm-weight-only", (6,), None, lambda x, w, b: F.layer_norm(x, (6,), w), (2, 6), nn.LayerNorm,
     {"bias": None}),
]


@pytest.mark.parametrize(
    "weight_shape, bias_shape, op, input_shape, expected_type, attributes",
    [pytest.param(*case[1:], id=case[0]) for case in PARAM_CASES],
)
def test_functional_with_parameter_becomes_layer(weight_shape, bias_shape, op, input_shape, expected_type,
                                                 attributes):
    model = ParamOp(weight_shape, bias_shape, op).eval()
    prepared = prepare_model(model)
    (target,) = module_calls(prepared)
    layer = prepared.get_submodule(target)
    assert type(layer) is expected_type
    for name, value in attributes.items():
        assert getattr(layer, name) == value, name
    torch.testing.assert_close(layer.weight, model.weight, rtol=0, atol=0)
    assert layer.weight is not model.weight
    assert_same_output(model, prepared, torch.randn(*input_shape))


# ---------------------------------------------------------------------------------------
# Calls kept as they are, each with its reason
# ---------------------------------------------------------------------------------------

class KeptCalls(nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(4, 4, 1, 1))
        self.register_buffer("frozen", torch.randn(4, 4))
        self.conv = nn.Conv2d(3, 4, 1)

    def forward(self, x):
        x = self.conv(x)
        computed = F.conv2d(x, self.weight * 2)                        # weight computed in forward
        frozen = F.linear(x.mean([2, 3]), self.frozen)                 # weight is a buffer
        unknown_rank = F.batch_norm(x.exp(), torch.zeros(4), torch.ones(4))  # rank unknown
        soft = F.softmax(x, dim=1, dtype=torch.float64)                 # dtype argument
        pad = F.pad(x, (x.shape[3] // 4, 0))                            # run-time pad
        bits = x.view(torch.int32)                                      # reinterprets memory
        return computed, frozen, unknown_rank, soft, pad, bits


def test_kept_calls_have_reasons():
    model = KeptCalls().eval()
    prepared = prepare_model(model)
    reasons = {k.op: k.reason for k in prepared.prequant_summary.kept}
    assert "computed in forward" in reasons["F.conv2d"]
    assert "buffer" in reasons["F.linear"]
    assert "rank unknown" in reasons["F.batch_norm"]
    assert "dtype" in reasons["F.softmax"]
    assert "not a Python constant" in reasons["F.pad"]
    assert "reinterprets memory" in reasons["Tensor.view"]
    assert reasons["Tensor.exp"] == "no torch.nn module for Tensor.exp"
    assert reasons["operator.floordiv"] == "arithmetic on sizes/shape values, not on tensors"
    assert "metadata" in reasons["getattr"]
    # every call of the traced graph is either converted or kept, never both, never neither
    traced = torch.fx.symbolic_trace(model)
    summary = prepared.prequant_summary
    calls = [n.name for n in traced.graph.nodes if n.op in ("call_function", "call_method")]
    assert sorted(calls) == sorted([c.node for c in summary.conversions] + [k.node for k in summary.kept])
    assert_same_output(model, prepared, torch.randn(2, 3, 8, 8))


class AlwaysOnDropout(nn.Module):
    def forward(self, x):
        return F.dropout(x, 0.5)  # training=True by default: applies even in eval mode


def test_dropout_fixed_to_training_is_kept_in_eval_model():
    prepared = prepare_model(AlwaysOnDropout().eval())
    (kept,) = prepared.prequant_summary.kept
    assert kept.op == "F.dropout" and "training=True" in kept.reason


class InPlaceSigmoidReadTwice(nn.Module):
    def forward(self, x):
        x = x * 1.0
        y = x.sigmoid_()  # mutates x, which is read again below
        return x + y


def test_in_place_op_without_in_place_module_is_kept_when_its_input_is_read_again():
    model = InPlaceSigmoidReadTwice().eval()
    prepared = prepare_model(model)
    kept = {k.op: k.reason for k in prepared.prequant_summary.kept}
    assert "read elsewhere" in kept["Tensor.sigmoid_"]
    assert_same_output(model, prepared, torch.randn(2, 5))


class InPlaceOnInput(nn.Module):
    def forward(self, x):
        x.add_(1.0)
        return x * 2, x


def test_in_place_arithmetic_on_the_input_mutates_it_like_the_original():
    model = InPlaceOnInput().eval()
    prepared = prepare_model(model)
    assert prepared.add.inplace
    x_model, x_prepared = torch.zeros(3), torch.zeros(3)
    model(x_model)
    prepared(x_prepared)
    assert torch.equal(x_model, x_prepared) and torch.equal(x_prepared, torch.ones(3))


# ---------------------------------------------------------------------------------------
# Nesting and naming
# ---------------------------------------------------------------------------------------

class Block(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)
        self.bn = nn.BatchNorm2d(channels)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)) + x)


class SubBlock(Block):
    pass


class Nested(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.blocks = nn.Sequential(Block(8), SubBlock(8))
        self.head = nn.Linear(8, 5)

    def forward(self, x):
        x = self.blocks(F.relu(self.stem(x)))
        return self.head(F.adaptive_avg_pool2d(x, 1).flatten(1))


def test_nested_modules_get_their_converted_ops_under_their_own_name():
    model = randomize_batch_norms(Nested()).eval()
    prepared = prepare_model(model)
    assert module_calls(prepared) == [
        "stem", "relu",
        "blocks.0.conv", "blocks.0.bn", "blocks.0.add", "blocks.0.relu",
        "blocks.1.conv", "blocks.1.bn", "blocks.1.add", "blocks.1.relu",
        "adaptive_avg_pool2d", "flatten", "head",
    ]
    assert isinstance(prepared.get_submodule("blocks.0.add"), Add)
    assert prepared.prequant_summary.unrollings == []
    assert_same_output(model, prepared, torch.randn(2, 3, 8, 8))


def test_original_model_is_not_modified_and_shares_no_storage():
    model = randomize_batch_norms(Nested()).eval()
    state_before = copy.deepcopy(model.state_dict())
    names_before = [name for name, _ in model.named_modules()]
    prepared = prepare_model(model)
    with torch.no_grad():
        for parameter in prepared.parameters():
            parameter.add_(1.0)
    for key, value in model.state_dict().items():
        assert torch.equal(value, state_before[key]), key
    assert [name for name, _ in model.named_modules()] == names_before
    assert not model.blocks[0].__dict__.get("_modules", {}).get("add")
    model_storage = {t.data_ptr() for t in model.state_dict().values()}
    prepared_storage = {t.data_ptr() for t in prepared.state_dict().values()}
    assert model_storage.isdisjoint(prepared_storage)


class NotCopyable(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)
        self.scale = torch.ones(4, 1, 1, requires_grad=True) * 2  # non-leaf: deepcopy refuses it

    def forward(self, x):
        return F.relu(self.conv(x)) * self.scale


def test_non_leaf_tensor_attribute_is_cloned_detached():
    # deepcopy(model) refused this model; the prepared model now holds the attribute's value
    model = NotCopyable().eval()
    prepared = prepare_model(model)
    assert prepared.conv is not model.conv
    assert {t.data_ptr() for t in prepared.state_dict().values()}.isdisjoint(
        {t.data_ptr() for t in model.state_dict().values()} | {model.scale.data_ptr()})
    assert_same_output(model, prepared, torch.randn(1, 3, 4, 4))


class _LeafWithLiveTensor(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)
        self.scale = torch.ones(4, 1, 1, requires_grad=True) * 2  # non-leaf: deepcopy refuses it

    def forward(self, x):
        return self.conv(x) * self.scale


class _WithUncopyableLeaf(nn.Module):
    def __init__(self):
        super().__init__()
        self.leaf = _LeafWithLiveTensor()

    def forward(self, x):
        return F.relu(self.leaf(x))


def test_leaf_module_that_cannot_be_copied_is_shared_with_a_warning():
    model = _WithUncopyableLeaf().eval()
    with pytest.warns(UserWarning, match="could not copy module 'leaf'"):
        prepared = prepare_model(model, module_classes_to_exclude=[_LeafWithLiveTensor])
    assert prepared.leaf is model.leaf  # shared, as the warning says
    assert any("could not copy" in n for n in prepared.prequant_summary.notes)
    assert_same_output(model, prepared, torch.randn(1, 3, 4, 4))


# ---------------------------------------------------------------------------------------
# Reused modules
# ---------------------------------------------------------------------------------------

class ReusedConvAndReLU(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 1)
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.act = nn.ReLU()

    def forward(self, x):
        x = self.act(self.conv(self.stem(x)))
        x = self.act(self.conv(x))
        return self.conv(x)


def test_reused_modules_are_unrolled_into_independent_copies():
    model = ReusedConvAndReLU().eval()
    prepared = prepare_model(model)
    assert module_calls(prepared) == ["stem", "conv", "act", "conv_1", "act_1", "conv_2"]
    convs = [prepared.conv, prepared.conv_1, prepared.conv_2]
    assert len({id(c) for c in convs}) == 3
    assert len({id(c.weight) for c in convs}) == 3
    assert len({c.weight.data_ptr() for c in convs}) == 3
    for copy_ in convs[1:]:
        torch.testing.assert_close(copy_.weight, prepared.conv.weight, rtol=0, atol=0)
    assert prepared.act is not prepared.act_1
    assert [str(u) for u in prepared.prequant_summary.unrollings] == [
        "reused conv at node conv_1 -> independent copy conv_1",
        "reused act at node act_1 -> independent copy act_1",
        "reused conv at node conv_2 -> independent copy conv_2",
    ]
    assert_same_output(model, prepared, torch.randn(2, 3, 8, 8))
    with torch.no_grad():
        prepared.conv_1.weight.mul_(2.0)
    assert not torch.equal(prepared.conv_1.weight, prepared.conv.weight)


@pytest.mark.parametrize("copy_weights", [True, False])
def test_unrolled_copies_share_no_tensor_with_the_original(copy_weights):
    # unrolled copies are built by prepare_model's own tree copy (no copy.deepcopy): each holds
    # its own tensors even with copy=False, where only the first call's module is the original's
    model = ReusedConvAndReLU().eval()
    prepared = prepare_model(model, copy=copy_weights)
    original = {t.data_ptr() for t in model.state_dict().values()}
    for name in ("conv_1", "conv_2"):
        copied = prepared.get_submodule(name)
        assert type(copied) is nn.Conv2d and copied.padding == (1, 1)
        assert {t.data_ptr() for t in copied.state_dict().values()}.isdisjoint(original)
        assert isinstance(copied.weight, nn.Parameter) and copied.weight.requires_grad
    assert (prepared.conv is model.conv) is not copy_weights
    assert_same_output(model, prepared, torch.randn(2, 3, 8, 8))


class _TaggedParameters(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)
        self.conv.weight.quant_tag = "per-channel"  # a Python attribute on a Parameter
        self.conv.bias.requires_grad_(False)
        self.register_buffer("steps", torch.tensor(3))

    def forward(self, x):
        return F.relu(self.conv(x)) + self.steps


def test_copied_tensors_keep_type_attributes_and_requires_grad():
    model = _TaggedParameters().eval()
    prepared = prepare_model(model)
    weight, bias = prepared.conv.weight, prepared.conv.bias
    assert weight is not model.conv.weight and weight.data_ptr() != model.conv.weight.data_ptr()
    assert type(weight) is nn.Parameter and weight.quant_tag == "per-channel" and weight.requires_grad
    assert type(bias) is nn.Parameter and not bias.requires_grad
    assert prepared.steps.dtype == torch.int64 and prepared.steps.data_ptr() != model.steps.data_ptr()
    assert_same_output(model, prepared, torch.randn(1, 3, 4, 4))


def test_code_is_generated_once_for_the_rewritten_graph(monkeypatch):
    # the constructor's code generation would be thrown away: prepare_model builds the
    # GraphModule without it and compiles the rewritten graph once
    compiled = []
    recompile = torch.fx.GraphModule.recompile

    def counting(self):
        compiled.append(len(self.graph.nodes))
        return recompile(self)

    monkeypatch.setattr(torch.fx.GraphModule, "recompile", counting)
    model = ReusedConvAndReLU().eval()
    prepared = prepare_model(model)
    assert [n for n in compiled if n] == [len(prepared.graph.nodes)]  # an empty graph costs nothing
    assert prepared.graph.owning_module is prepared
    assert "self.conv_2(" in prepared.code and "self.act_1(" in prepared.code
    assert_same_output(model, prepared, torch.randn(2, 3, 8, 8))


def test_reused_modules_with_weights_stay_shared_when_asked():
    model = ReusedConvAndReLU().eval()
    prepared = prepare_model(model, unroll_shared_weights=False)
    assert module_calls(prepared) == ["stem", "conv", "act", "conv", "act_1", "conv"]
    assert prepared.act is not prepared.act_1  # no weights: always unrolled
    shared = [u for u in prepared.prequant_summary.unrollings if u.copy is None]
    assert [(u.source, u.node) for u in shared] == [("conv", "conv_1"), ("conv", "conv_2")]
    assert "kept shared" in str(prepared.prequant_summary)
    assert_same_output(model, prepared, torch.randn(2, 3, 8, 8))


class ReusedBlock(nn.Module):
    """A traced-through block called twice, plus one module registered under two names."""

    def __init__(self):
        super().__init__()
        self.block = Block(4)
        self.first = self.second = nn.Hardswish()
        self.stats = nn.BatchNorm2d(4, affine=False)  # buffers only

    def forward(self, x):
        x = self.first(self.block(self.block(x)))
        return self.stats(self.second(self.stats(x)))


def test_reused_traced_through_block_and_aliased_module_are_unrolled():
    model = randomize_batch_norms(ReusedBlock()).eval()
    prepared = prepare_model(model)
    assert module_calls(prepared) == [
        "block.conv", "block.bn", "block.add", "block.relu",
        "block.conv_1", "block.bn_1", "block.add_1", "block.relu_1",
        "first", "stats", "first_1", "stats_1",
    ]
    assert prepared.first is not prepared.first_1
    assert_same_output(model, prepared, torch.randn(2, 4, 6, 6))

    shared = prepare_model(model, unroll_shared_weights=False)
    # batch norm with buffers only holds state too: kept shared like weights
    assert module_calls(shared).count("stats") == 2
    assert module_calls(shared).count("block.conv") == 2
    assert_same_output(model, shared, torch.randn(2, 4, 6, 6))


class SharedFunctionalWeight(nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(4, 3, 3, 3))
        self.fc = nn.Linear(6, 6)

    def forward(self, x, y, z):
        convs = F.conv2d(x, self.weight) + F.conv2d(y, self.weight)
        tied = self.fc(z) + F.linear(z, self.fc.weight)  # weight tying
        return convs, tied


def test_parameter_shared_by_functionals_is_unrolled_or_kept_shared():
    model = SharedFunctionalWeight().eval()
    inputs = (torch.randn(1, 3, 5, 5), torch.randn(1, 3, 5, 5), torch.randn(2, 6))

    unrolled = prepare_model(model)
    assert unrolled.conv2d.weight is not unrolled.conv2d_1.weight
    torch.testing.assert_close(unrolled.conv2d.weight, unrolled.conv2d_1.weight, rtol=0, atol=0)
    assert unrolled.linear.weight is not unrolled.fc.weight
    sources = sorted(u.source for u in unrolled.prequant_summary.unrollings)
    assert sources == ["fc.weight", "weight"]
    assert "weight" not in dict(unrolled.named_parameters())
    assert_same_output(model, unrolled, *inputs)

    shared = prepare_model(model, unroll_shared_weights=False)
    assert shared.conv2d.weight is shared.conv2d_1.weight
    assert shared.linear.weight is shared.fc.weight
    assert all(u.copy is None for u in shared.prequant_summary.unrollings)
    assert_same_output(model, shared, *inputs)


# ---------------------------------------------------------------------------------------
# Inputs, outputs, exclusion, concrete_args
# ---------------------------------------------------------------------------------------

class TwoInTwoOut(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv_x = nn.Conv2d(3, 4, 3)
        self.conv_y = nn.Conv2d(3, 4, 3)

    def forward(self, x, y):
        a, b = self.conv_x(x), self.conv_y(y)
        return F.relu(a) * torch.sigmoid(b), {"sum": a + b, "cat": torch.cat([a, b], 1)}


def test_two_inputs_and_two_outputs():
    model = TwoInTwoOut().eval()
    prepared = prepare_model(model)
    assert [type(prepared.get_submodule(t)).__name__ for t in module_calls(prepared)] == [
        "Conv2d", "Conv2d", "ReLU", "Sigmoid", "Multiply", "Add", "Concat",
    ]
    assert_same_output(model, prepared, torch.randn(1, 3, 6, 6), torch.randn(1, 3, 6, 6))


def test_exclusion_by_instance():
    model = randomize_batch_norms(Nested()).eval()
    prepared = prepare_model(model, modules_to_exclude=[model.blocks[0]])
    calls = module_calls(prepared)
    assert "blocks.0" in calls and "blocks.0.add" not in calls and "blocks.1.add" in calls
    excluded = prepared.get_submodule("blocks.0")
    assert type(excluded) is Block and excluded is not model.blocks[0]
    assert prepared.prequant_summary.excluded == ["blocks.0"]
    assert_same_output(model, prepared, torch.randn(2, 3, 8, 8))


def test_exclusion_by_class_covers_subclasses():
    model = randomize_batch_norms(Nested()).eval()
    prepared = prepare_model(model, module_classes_to_exclude=[Block])
    calls = module_calls(prepared)
    assert "blocks.0" in calls and "blocks.1" in calls  # SubBlock is a Block
    assert prepared.prequant_summary.excluded == ["blocks.0", "blocks.1"]
    assert_same_output(model, prepared, torch.randn(2, 3, 8, 8))


def test_exclusion_arguments_are_checked():
    model = Nested().eval()
    with pytest.raises(ValueError, match="not a submodule"):
        prepare_model(model, modules_to_exclude=[nn.ReLU()])
    with pytest.raises(TypeError, match="modules_to_exclude"):
        prepare_model(model, modules_to_exclude=["blocks.0"])
    with pytest.raises(TypeError, match="module_classes_to_exclude"):
        prepare_model(model, module_classes_to_exclude=[model.blocks[0]])
    with pytest.raises(TypeError, match="torch.nn.Module"):
        prepare_model(lambda x: x)


class OptionalHead(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.head = nn.Linear(4, 2)

    def forward(self, x, use_head=True):
        x = F.adaptive_avg_pool2d(self.conv(x), 1).flatten(1)
        if use_head:
            x = self.head(x)
        return x


def test_concrete_args_specialize_control_flow():
    model = OptionalHead().eval()
    with pytest.raises(PrepareError):
        prepare_model(model)
    prepared = prepare_model(model, concrete_args={"use_head": False})
    assert "head" not in module_calls(prepared)
    x = torch.randn(1, 3, 6, 6)
    with torch.no_grad():
        torch.testing.assert_close(prepared(x, False), model(x, use_head=False), rtol=0, atol=0)


# ---------------------------------------------------------------------------------------
# Tracing failures
# ---------------------------------------------------------------------------------------

class DataDependent(nn.Module):
    def forward(self, x):
        if x.sum() > 0:  # the line the error must point at
            return x
        return -x


class ModelWithDataDependentBlock(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.gate = nn.Sequential(DataDependent())

    def forward(self, x):
        return F.relu(self.gate(self.conv(x)))


def test_untraceable_model_fails_clearly():
    model = ModelWithDataDependentBlock().eval()
    with pytest.raises(PrepareError) as failure:
        prepare_model(model)
    message = str(failure.value)
    assert "ModelWithDataDependentBlock" in message
    assert "module 'gate.0' (DataDependent)" in message
    assert f'{__file__}", line' in message and "if x.sum() > 0:" in message
    assert "concrete_args" in message
    assert "modules_to_exclude=[model.get_submodule('gate.0')]" in message
    assert "module_classes_to_exclude=[DataDependent]" in message
    assert "torch.fx.wrap" in message
    assert isinstance(failure.value, torch.fx.proxy.TraceError)
    assert isinstance(failure.value.__cause__, torch.fx.proxy.TraceError)

    # the suggested workaround works
    prepared = prepare_model(model, module_classes_to_exclude=[DataDependent])
    x = torch.randn(1, 3, 6, 6)
    assert_same_output(model, prepared, x)
    assert isinstance(prepared.relu, nn.ReLU)


class DataDependentRoot(nn.Module):
    def forward(self, x):
        for _ in range(int(x.max())):
            x = x * 2
        return x


def test_untraceable_root_forward_fails_clearly():
    with pytest.raises(PrepareError) as failure:
        prepare_model(DataDependentRoot().eval())
    message = str(failure.value)
    assert "DataDependentRoot.forward" in message and "for _ in range(int(x.max())):" in message
    assert "concrete_args" in message


# ---------------------------------------------------------------------------------------
# Training mode, depth, summary
# ---------------------------------------------------------------------------------------

class DropoutNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 8)

    def forward(self, x):
        return F.dropout(F.relu(self.fc(x)), 0.5, self.training)


def test_training_mode_is_kept_and_warned_about():
    model = DropoutNet().train()
    with pytest.warns(UserWarning, match="training mode"):
        prepared = prepare_model(model)
    assert prepared.training and prepared.dropout.training and model.training
    assert "training mode" in prepared.prequant_summary.notes[0]
    model.eval()
    prepared.eval()
    assert not prepared.dropout.training
    assert_same_output(model, prepared, torch.randn(4, 8))

    eval_prepared = prepare_model(model)
    assert not eval_prepared.training and not eval_prepared.dropout.training


class Deep(nn.Module):
    def __init__(self, depth: int):
        super().__init__()
        self.depth = depth

    def forward(self, x):
        for _ in range(self.depth):
            x = F.relu(x) - 0.5
        return x


def test_deep_graph_needs_no_recursion():
    model = Deep(1500).eval()
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(400)
    try:
        prepared = prepare_model(model)
    finally:
        sys.setrecursionlimit(limit)
    assert len(prepared.prequant_summary.conversions) == 3000
    assert prepared.relu_1499 is not None and prepared.sub_1499 is not None
    assert_same_output(model, prepared, torch.randn(2, 5))


def test_hooks_on_traced_through_modules_are_reported():
    model = Nested().eval()
    model.blocks[1].register_forward_hook(lambda module, args, output: output)
    model.stem.register_forward_hook(lambda module, args, output: output)  # a leaf: kept
    with pytest.warns(UserWarning, match="hooks registered on 'blocks.1'"):
        prepared = prepare_model(model)
    notes = prepared.prequant_summary.notes
    assert len(notes) == 1 and "blocks.1" in notes[0]
    assert len(prepared.stem._forward_hooks) == 1


def test_prepared_model_survives_deepcopy_and_save_load(tmp_path):
    model = Nested().eval()
    prepared = prepare_model(model)
    copied = copy.deepcopy(prepared)
    assert copied.prequant_summary.conversions == prepared.prequant_summary.conversions
    torch.save(prepared, tmp_path / "prepared.pt")
    loaded = torch.load(tmp_path / "prepared.pt", weights_only=False)
    assert str(loaded.prequant_summary) == str(prepared.prequant_summary)
    x = torch.randn(1, 3, 8, 8)
    assert_same_output(model, copied, x)
    assert_same_output(model, loaded, x)


def test_summary_is_printable_and_complete():
    prepared = prepare_model(ReusedConvAndReLU().eval())
    summary = prepared.prequant_summary
    assert isinstance(summary, PrepareSummary)
    text = str(summary)
    assert text.startswith("prepare_model summary for ReusedConvAndReLU")
    assert "unrolled reuses (3):" in text and "converted to modules (0):" in text
    assert "PrepareSummary(model='ReusedConvAndReLU'" in repr(summary)

    prepared = prepare_model(OneInputOp(interpolate_run_time_size).eval())
    text = str(prepared.prequant_summary)
    assert "functional F.interpolate at node interpolate -> module interpolate (Interpolate)" in text
    assert "functional getattr at nodes getattr_1, getattr_2: reads tensor attribute `.shape`" in text


# ---------------------------------------------------------------------------------------
# prequant.torch.modules on their own: scalar and tensor operands alike
# ---------------------------------------------------------------------------------------

def test_op_modules_match_the_ops():
    a, b = torch.randn(2, 3, 4), torch.randn(2, 3, 4)
    checks = [
        (Add()(a, b), a + b), (Add()(2, a), 2 + a), (Add(alpha=2)(a, b), torch.add(a, b, alpha=2)),
        (Subtract()(1.0, a), 1.0 - a), (Subtract(alpha=0.5)(a, b), a - 0.5 * b),
        (Multiply()(a, 3), a * 3), (Divide()(1, a), 1 / a),
        (Divide(rounding_mode="trunc")(a, 0.3), torch.div(a, 0.3, rounding_mode="trunc")),
        (MatMul()(a, b.transpose(1, 2)), a @ b.transpose(1, 2)),
        (BatchMatMul()(a, b.transpose(1, 2)), torch.bmm(a, b.transpose(1, 2))),
        (Concat(1)(a, b), torch.cat([a, b], 1)), (Concat(1)([a, b]), torch.cat([a, b], 1)),
        (Stack(-1)(a, b), torch.stack([a, b], -1)),
        (Reshape((2, -1))(a), a.reshape(2, -1)), (Reshape()(a, 6, -1), a.reshape(6, -1)),
        (Reshape()(a, torch.Size([4, 6])), a.reshape(4, 6)),
        (Permute((2, 0, 1))(a), a.permute(2, 0, 1)), (Transpose(0, 2)(a), a.transpose(0, 2)),
        (Mean()(a), a.mean()), (Mean((1, 2), True)(a), a.mean((1, 2), True)),
        (Sum([0])(a), a.sum([0])), (Clamp(None, 0.1)(a), a.clamp(max=0.1)),
        (Pad((1, 2), "circular")(a), F.pad(a, (1, 2), mode="circular")),
        (Interpolate(scale_factor=2.0)(a), F.interpolate(a, scale_factor=2.0)),
        (Interpolate()(a, size=7), F.interpolate(a, size=7)),
    ]
    for actual, expected in checks:
        assert torch.equal(actual, expected)
    assert all(torch.equal(x, y) for x, y in zip(Chunk(2, 2)(a), a.chunk(2, 2)))
    assert all(torch.equal(x, y) for x, y in zip(Split([1, 2], 1)(a), a.split([1, 2], 1)))
    c = a.clone()
    assert Add(inplace=True)(c, b) is c and torch.equal(c, a + b)
    assert "alpha=2" in repr(Add(alpha=2)) and "dims=(2, 0, 1)" in repr(Permute((2, 0, 1)))


# ---------------------------------------------------------------------------------------
# torchvision classification models, random weights
# ---------------------------------------------------------------------------------------

torchvision = pytest.importorskip("torchvision")

ZOO = {
    # name: (constructor kwargs, ops that must appear among the conversions, summary lines)
    "resnet18": ({}, {"torch.flatten", "operator.add"}, [
        "functional torch.flatten at node flatten -> module flatten (Flatten)",
        "functional operator.add at node add -> module layer1.0.add (Add)",
        "reused layer1.0.relu at node layer1_0_relu_1 -> independent copy layer1.0.relu_1",
    ]),
    "mobilenet_v2": ({}, {"F.adaptive_avg_pool2d", "torch.flatten", "operator.add"}, [
        "functional F.adaptive_avg_pool2d at node adaptive_avg_pool2d -> module adaptive_avg_pool2d "
        "(AdaptiveAvgPool2d)",
        "functional torch.flatten at node flatten -> module flatten (Flatten)",
    ]),
    "mobilenet_v3_small": ({}, {"torch.flatten", "operator.mul"}, []),
    "efficientnet_b0": ({}, {"torchvision.ops.stochastic_depth", "operator.mul", "operator.add"}, []),
    "mnasnet0_5": ({}, {"Tensor.mean"}, []),
    "shufflenet_v2_x0_5": ({}, {"Tensor.chunk", "torch.cat", "Tensor.view", "torch.transpose"}, [
        "method Tensor.chunk at node chunk -> module stage2.1.chunk (Chunk)",
        "method Tensor.view at node view -> module stage2.0.reshape (Reshape)",
    ]),
    "squeezenet1_0": ({}, {"torch.cat", "torch.flatten"}, []),
    "regnet_y_400mf": ({}, {"Tensor.flatten", "operator.mul"}, []),
    "densenet121": ({}, {"torch.cat", "F.relu", "F.adaptive_avg_pool2d"}, []),
    "googlenet": ({"aux_logits": False, "init_weights": False}, {"F.relu", "torch.cat"}, []),
    "convnext_tiny": ({}, {"torch.permute", "Tensor.permute", "F.layer_norm", "operator.mul"}, [
        "functional F.layer_norm at node layer_norm -> module features.0.1.layer_norm (LayerNorm)",
        "functional torch.permute at node permute_2 -> module features.1.0.block.1.permute (Permute)",
        "method Tensor.permute at node permute -> module features.0.1.permute (Permute)",
    ]),
}

# shufflenet's channel shuffle reads sizes and makes the tensor contiguous
ALLOWED_KEPT = {"Tensor.size", "operator.getitem", "operator.floordiv", "Tensor.contiguous"}


@pytest.mark.parametrize("name", list(ZOO))
def test_torchvision_model(name):
    kwargs, expected_ops, expected_lines = ZOO[name]
    torch.manual_seed(0)
    model = randomize_batch_norms(getattr(torchvision.models, name)(weights=None, **kwargs)).eval()
    prepared = prepare_model(model)

    summary = prepared.prequant_summary
    assert expected_ops <= set(summary.converted_ops())
    assert set(summary.kept_ops()) <= ALLOWED_KEPT
    text = str(summary)
    for line in expected_lines:
        assert f"\n    {line}\n" in text, line
    calls = module_calls(prepared)
    assert len(calls) == len(set(calls)), "a module is still called more than once"
    assert_same_output(model, prepared, torch.randn(1, 3, 64, 64))
