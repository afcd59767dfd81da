"""Framework-neutral pieces of the CLE front ends: the AIMET-style result records.

ClsSetLayerPairInfo / ClsSetInfo describe what cross-layer scaling did to a set (PyTorch modules
or Keras layers alike); `cls_set_infos` builds them from scale_cls_sets' output.
"""

from __future__ import annotations

import numpy as np


def _label(layer) -> str:
    return getattr(layer, "name", None) or type(layer).__name__


class ClsSetLayerPairInfo:
    """A pair of layers that cross-layer scaling scaled: layer1's output channel c was divided by
    scale_factor[c] and layer2's input channel c multiplied by it."""

    def __init__(self, layer1, layer2, scale_factor: np.ndarray, relu_activation_between_layers: bool):
        self.layer1 = layer1
        self.layer2 = layer2
        self.scale_factor = np.asarray(scale_factor, dtype=np.float64)
        self.relu_activation_between_layers = bool(relu_activation_between_layers)

    def __repr__(self) -> str:
        return (f"ClsSetLayerPairInfo({_label(self.layer1)} -> {_label(self.layer2)}, "
                f"{self.scale_factor.size} scales, relu={self.relu_activation_between_layers})")


class ClsSetInfo:
    """The layers of one CLS set: one pair, or two for conv → depthwise → conv."""

    def __init__(self, cls_pair_1: ClsSetLayerPairInfo, cls_pair_2: ClsSetLayerPairInfo | None = None):
        self.cls_pair_info_list = [cls_pair_1] if cls_pair_2 is None else [cls_pair_1, cls_pair_2]

    def __repr__(self) -> str:
        return f"ClsSetInfo({self.cls_pair_info_list!r})"


def cls_set_infos(cls_sets, scale_factors, relu_flags) -> list[ClsSetInfo]:
    """ClsSetInfo per set from scale_cls_sets' output: a pair's scales is one array, a triple's a
    (scale12, scale23) tuple; a triple's relu flag may be one bool or a (bool, bool) tuple."""
    infos = []
    for layers, scales, relu in zip(cls_sets, scale_factors, relu_flags):
        if len(layers) == 2:
            infos.append(ClsSetInfo(ClsSetLayerPairInfo(layers[0], layers[1], scales, relu)))
        else:
            s12, s23 = scales
            r12, r23 = relu if isinstance(relu, (tuple, list)) else (relu, relu)
            infos.append(ClsSetInfo(ClsSetLayerPairInfo(layers[0], layers[1], s12, r12),
                                    ClsSetLayerPairInfo(layers[1], layers[2], s23, r23)))
    return infos
