"""Conversion rules for dropout: ``F.dropout``, ``F.dropout2d``, ``torch.dropout``, ... ->
``nn.Dropout`` / ``nn.Dropout2d`` / ..., and torchvision's fx-wrapped ``stochastic_depth``
-> ``torchvision.ops.StochasticDepth``.

Before:  ``F.dropout(x, 0.2, training=self.training)``   After:  ``dropout(x)``, ``nn.Dropout(0.2)``

Precondition: the ``training`` value fixed at trace time equals the model's mode, since the
module follows ``module.training`` instead (see ``check_training``).
"""

from __future__ import annotations

from typing import Callable

from torch import nn

from .base import Register, check_training, constant, unary


def _dropout(module_cls: type, training_default: bool) -> Callable:
    def build(ctx, input, p=0.5, training=training_default, inplace=False):
        check_training(ctx, training, "dropout")
        return unary(module_cls(constant(p, "p"), inplace=constant(inplace, "inplace")), input)
    return build


def _torch_dropout(ctx, input, p, train):
    check_training(ctx, train, "dropout")
    return unary(nn.Dropout(constant(p, "p")), input)


def stochastic_depth(ctx, input, p, mode, training=True):
    """Rule for ``torchvision.ops.stochastic_depth`` (registered only once torchvision is loaded)."""
    from torchvision.ops import StochasticDepth  # only reached when torchvision is loaded

    check_training(ctx, training, "stochastic_depth")
    return unary(StochasticDepth(constant(p, "p"), constant(mode, "mode")), input)


def register_rules(register: Register) -> None:
    register("dropout", _dropout(nn.Dropout, True), ("F.dropout",))
    register("dropout", _dropout(nn.Dropout1d, True), ("F.dropout1d",))
    register("dropout", _dropout(nn.Dropout2d, True), ("F.dropout2d",))
    register("dropout", _dropout(nn.Dropout3d, True), ("F.dropout3d",))
    register("alpha_dropout", _dropout(nn.AlphaDropout, False), ("F.alpha_dropout",))
    register("feature_alpha_dropout", _dropout(nn.FeatureAlphaDropout, False), ("F.feature_alpha_dropout",))
    register("dropout", _torch_dropout, ("torch.dropout",))
