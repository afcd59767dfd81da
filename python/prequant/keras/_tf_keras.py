"""Recognize a tf_keras (Keras 2) model: route it, or say why an entry point refuses it.

Before: a tf_keras model given to the Keras 3 front end was refused with a misleading reason
        ("expected a keras.Model, got Functional", "subclassed").
After:  prepare_model, fold_all_batch_norms and equalize_model send it to their tf_keras paths
        (_tf_keras_prepare, _tf_keras_cle) and return tf_keras models; every other entry point
        (write_report, the in-place CrossLayerScaling / HighBiasFold API, fold_given_batch_norms,
        find_batch_norm_folds, replace_relu6_with_relu) raises its own typed error with
        ``tf_keras_message(obj)``, which names the model as tf_keras and says what to do.

Detection is by the defining module of the object's classes (``tf_keras.*``, and the Keras 2
copy inside old TensorFlow, ``tensorflow.python.keras.*``), so it needs neither tf_keras nor
Keras imported, and never imports them.
"""

from __future__ import annotations

_KERAS2_MODULES = ("tf_keras.", "tensorflow.python.keras.")


def is_tf_keras_object(obj) -> bool:
    """True if ``obj`` is a layer or model of tf_keras (Keras 2), not of Keras 3."""
    return any((getattr(cls, "__module__", "") or "").startswith(_KERAS2_MODULES)
               for cls in type(obj).__mro__)


def tf_keras_message(obj, what: str) -> str:
    """The reason ``what`` (e.g. "prepare_model") refuses the tf_keras object ``obj``."""
    name = getattr(obj, "name", None)
    label = f"{type(obj).__name__} '{name}'" if isinstance(name, str) else type(obj).__name__
    return (
        f"{what}: {label} is a tf_keras (Keras 2) model; this entry point works on Keras 3 models "
        f"(the `keras` package, `tf.keras` in TensorFlow >= 2.16) only. For tf_keras, "
        f"prequant.keras.prepare_model, fold_all_batch_norms and equalize_model take the model and "
        f"return tf_keras models. Fix: use those, or build the model with Keras 3 and load its "
        f"weights (model.save_weights / load_weights), or export it to ONNX and use prequant.onnx")
