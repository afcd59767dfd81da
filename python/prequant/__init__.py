"""prequant: make trained PyTorch, Keras and ONNX models quantization-ready.

The C++ engine lives in ``prequant._core``; the front ends (``prequant.torch``,
``prequant.keras``, ``prequant.onnx``) translate framework models to and from it.
Front ends are imported on demand so that importing ``prequant`` never pulls in
torch or tensorflow.
"""

__version__ = "0.1.0"
