"""prequant: make trained PyTorch, Keras and ONNX models quantization-ready.

The C++ engine lives in ``prequant._core``; the front ends (``prequant.torch``,
``prequant.keras``, ``prequant.onnx``) translate framework models to and from it.
Front ends are imported on demand so that importing ``prequant`` never pulls in
torch or tensorflow.
"""

__version__ = "0.1.0"

def _load_core():
    """Imports the extension so that it binds to its own protobuf runtime.

    TensorFlow loads a protobuf runtime of its own with RTLD_GLOBAL; an extension loaded after
    it would otherwise resolve protobuf symbols to that copy (a different version) and crash on
    its first parse. RTLD_DEEPBIND makes the extension prefer its own dependencies. (Set
    PREQUANT_NO_DEEPBIND=1 to load it plainly, e.g. under AddressSanitizer, which refuses
    RTLD_DEEPBIND.)
    """
    import os
    import sys

    deepbind = getattr(os, "RTLD_DEEPBIND", 0)
    if not deepbind or os.environ.get("PREQUANT_NO_DEEPBIND"):
        from prequant import _core
        return _core
    flags = sys.getdlopenflags()
    sys.setdlopenflags(flags | deepbind)
    try:
        from prequant import _core
    finally:
        sys.setdlopenflags(flags)
    return _core


_load_core()

# The engine's exception types; each carries `.node`, the layer concerned.
from prequant._core import (  # noqa: E402
    Error,
    GraphError,
    InvalidParameterError,
    InvalidRequestError,
    ModelFormatError,
    UnsupportedError,
)



class PrepareError(UnsupportedError):
    """A model cannot be prepared (traced and flattened) as it is. Raised by
    ``prequant.torch.prepare_model`` and ``prequant.keras.prepare_model`` (each front end's
    ``PrepareError`` derives from this one); ``node`` names the module or layer at fault, and the
    message says the workaround."""


# The weight report (imports neither torch nor tensorflow).
from prequant.report import collect_weight_stats, write_report  # noqa: E402

__all__ = [
    "Error",
    "GraphError",
    "InvalidParameterError",
    "InvalidRequestError",
    "ModelFormatError",
    "PrepareError",
    "UnsupportedError",
    "__version__",
    "collect_weight_stats",
    "write_report",
]
