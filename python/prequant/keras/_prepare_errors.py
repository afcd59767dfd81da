"""The error prepare_model raises for what it cannot prepare.

Before: a failure deep inside Keras or TensorFlow while a model is being flattened.
After:  one typed error that names the layer at fault and says how to fix it.
"""

from __future__ import annotations

import prequant


class PrepareError(prequant.PrepareError):
    """A model, or one of its layers, cannot be turned into a functional model.

    One hierarchy for both front ends: ``prequant.PrepareError`` (an ``UnsupportedError``, so a
    ``prequant.Error``) is its base.

    Attributes:
        layer_name: name of the layer at fault, or None when the model as a whole is.
        node: ``layer_name`` ('' when None), as every prequant error names the layer concerned.
        reason: what went wrong.
        fix: what the user can do about it.
    """

    def __init__(self, reason: str, *, layer_name: str | None = None, fix: str = ""):
        where = f"layer '{layer_name}': " if layer_name else ""
        message = f"{where}{reason}"
        if fix:
            message += f"\nFix: {fix}"
        super().__init__(message, node=layer_name or "")
        self.layer_name = layer_name
        self.reason = reason
        self.fix = fix

    def __reduce__(self):  # the base pickles (message, node); this class is built from its parts
        return _rebuild, (type(self), self.reason, self.layer_name, self.fix)


def _rebuild(cls, reason, layer_name, fix):
    return cls(reason, layer_name=layer_name, fix=fix)


class NeedsOpaque(Exception):
    """Raised while tracing a custom layer's call() to keep that layer whole.

    Internal: the tracer catches it at the innermost custom layer being traced, which then
    stays one opaque layer with ``reason`` recorded in the report.
    """

    def __init__(self, reason: str):
        self.reason = reason
        super().__init__(reason)
