"""Recognize a tf_keras (Keras 2) model, so that the Keras 3 front end can say what it is.

Before: a tf_keras model given to prepare_model, equalize_model or write_report was refused
        with a misleading reason ("expected a keras.Model, got Functional", "subclassed").
After:  ``tf_keras_message(obj)`` names the model as a tf_keras (Keras 2) model and says what to
        do; each entry point raises its own typed error with it.

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
        f"{what}: {label} is a tf_keras (Keras 2) model; prequant.keras works on Keras 3 models "
        f"(the `keras` package, `tf.keras` in TensorFlow >= 2.16) and does not support tf_keras yet. "
        f"Fix: build the model with Keras 3 and load its weights (model.save_weights / "
        f"load_weights), or export it to ONNX and use prequant.onnx")
