"""prequant.keras: the Keras 3 front end.

Before: a model prequant made, saved as .keras, loaded only where the module defining its
        layers happened to be imported ("Could not locate class 'BoundedReLU'").
After:  importing ``prequant.keras`` registers with Keras every layer class prequant puts into a
        model (BoundedReLU, GatedActivation, KerasOpLayer, TFFunctionLayer, ConstantLayer), so
        ``keras.models.load_model`` loads prepared and equalized models in any process that
        imported it (``load_prepared_model`` does so itself). This imports Keras; the front
        end's functions themselves are imported on first use. (``import prequant`` alone imports
        neither Keras nor TensorFlow.)

Public API (prepare_model, fold_all_batch_norms and equalize_model also take a tf_keras (Keras 2)
model and return a tf_keras model, for tfmot):
    prepare_model(original_model, input_layer=None, *, strict=False) -> keras.Model
    prepare_model_with_report(original_model, input_layer=None, *, strict=False)
        -> (keras.Model, PrepareReport)
    load_prepared_model(path, custom_objects=None, **kwargs) -> keras.Model
    PrepareError, PrepareReport
    KerasOpLayer, TFFunctionLayer, ConstantLayer: the layers prepare_model generates

    Cross-layer equalization (modules prequant.keras.batch_norm_fold and
    prequant.keras.cross_layer_equalization, AIMET's names):
    fold_all_batch_norms(model) -> (pairs, new_model)
    fold_given_batch_norms(model, layer_pairs) -> new_model
    equalize_model(model, relu6="bound") -> new_model
    replace_relu6_with_relu(model) -> (new_model, ActivationResult)
    CrossLayerScaling, HighBiasFold, ClsSetInfo, ClsSetLayerPairInfo
    BoundedReLU: the per-channel bounded ReLU that replaces a ReLU6 after scaling
    TFKerasBoundedReLU: its tf_keras twin (in equalized tf_keras models)
    GatedActivation: x·g(s[c]·x), a SiLU / HardSwish / GELU after scaling through it
    TFKerasGatedActivation: its tf_keras twin
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
    "fold_all_batch_norms": ".batch_norm_fold",
    "fold_given_batch_norms": ".batch_norm_fold",
    "find_batch_norm_folds": ".batch_norm_fold",
    "equalize_model": ".cross_layer_equalization",
    "replace_relu6_with_relu": ".cross_layer_equalization",
    "CrossLayerScaling": ".cross_layer_equalization",
    "HighBiasFold": ".cross_layer_equalization",
    "ClsSetInfo": ".cross_layer_equalization",
    "ClsSetLayerPairInfo": ".cross_layer_equalization",
    "BoundedReLU": ".activations",
    "TFKerasBoundedReLU": "._tf_keras_bridge",  # imports tf_keras: only on first use
    "GatedActivation": ".activations",
    "TFKerasGatedActivation": "._tf_keras_bridge",
}

__all__ = sorted(_LAZY_EXPORTS)

# Keras finds a custom class by its registered name only once the class's module has run; it
# never imports a module of a package other than its own (keras.saving refuses, for safety).
from . import _prepare_generated_layers as _generated_layers  # noqa: E402,F401
from . import activations as _activations  # noqa: E402,F401


def __getattr__(name):
    module_name = _LAZY_EXPORTS.get(name)
    if module_name is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module_name, __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
