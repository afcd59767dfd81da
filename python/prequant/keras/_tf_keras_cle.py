"""fold_all_batch_norms and equalize_model for tf_keras (Keras 2) functional models.

Before: a tf_keras functional model of built-in layers (prepare_model's result for a tf_keras
        model, or any tf_keras functional model without custom layers).
After:  the folded / equalized model as a NEW tf_keras functional model (the model given is
        unchanged), computed by the Keras 3 front end unchanged: the model is carried to Keras 3
        (_tf_keras_bridge.convert_to_keras3), transformed there, and carried back (convert_to_tf_keras). The
        engine's result (``return_result=True``) is the same object the Keras 3 API returns.

A ReLU6 bounded per channel after scaling (relu6='bound', the default) becomes a
``TFKerasBoundedReLU`` layer; tfmot's quantize_model has no QuantizeConfig for it, so for tfmot
pass relu6='skip' (pairs with a ReLU6 between stay unscaled) or annotate that layer yourself.
"""

from __future__ import annotations

from prequant.keras._tf_keras_bridge import convert_to_keras3, convert_to_tf_keras


def equalize_tf_keras_model(model, **options):
    """equalize_model for a tf_keras model: returns a tf_keras model (and the result if asked)."""
    from prequant.keras.cross_layer_equalization import equalize_model

    out = equalize_model(convert_to_keras3(model), **options)
    if options.get("return_result"):
        return convert_to_tf_keras(out[0]), out[1]
    return convert_to_tf_keras(out)


def fold_all_batch_norms_tf_keras(model, *, return_result=False):
    """fold_all_batch_norms for a tf_keras model: ``(pairs, new_model[, FoldResult])`` with
    ``pairs`` as ``(layer of the new tf_keras model, the original tf_keras BatchNormalization)``."""
    from prequant.keras.batch_norm_fold import fold_all_batch_norms

    pairs, folded, result = fold_all_batch_norms(convert_to_keras3(model), return_result=True)
    new_model = convert_to_tf_keras(folded)
    tf_pairs = [(new_model.get_layer(layer.name), model.get_layer(bn.name)) for layer, bn in pairs]
    return (tf_pairs, new_model, result) if return_result else (tf_pairs, new_model)
