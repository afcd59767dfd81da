"""prequant.keras: the Keras 3 front end.

Before: ``import prequant.keras`` would pull in TensorFlow and Keras at once.
After:  names are imported on first use, so the package imports in milliseconds and
        TensorFlow loads only when a Keras function is actually called.

Public API:
    prepare_model(original_model, input_layer=None, *, strict=False) -> keras.Model
    prepare_model_with_report(original_model, input_layer=None, *, strict=False)
        -> (keras.Model, PrepareReport)
    load_prepared_model(path, custom_objects=None, **kwargs) -> keras.Model
    PrepareError, PrepareReport
    KerasOpLayer, TFFunctionLayer, ConstantLayer: the layers prepare_model generates
"""

from __future__ import annotations

import importlib

# public name -> module (relative to this package) that defines it
_LAZY_EXPORTS = {
    "prepare_model": ".prepare",
    "prepare_model_with_report": ".prepare",
    "PrepareReport": ".prepare",
    "load_prepared_model": ".prepare",
    "PrepareError": "._prepare_errors",
    "KerasOpLayer": "._prepare_generated_layers",
    "TFFunctionLayer": "._prepare_generated_layers",
    "ConstantLayer": "._prepare_generated_layers",
}

__all__ = sorted(_LAZY_EXPORTS)


def __getattr__(name):
    module_name = _LAZY_EXPORTS.get(name)
    if module_name is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module_name, __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
