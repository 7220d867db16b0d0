"""Activation functions by Keras name, and the Activation layer.

Only names live here (validation must not import Numba); the runtime maps each name to its kernel.
"""

from __future__ import annotations

from typing import Literal

from ..spec.types import choice
from .base import LayerSpec, register

ACTIVATIONS = (
    "linear", "relu", "relu6", "leaky_relu", "elu", "selu", "gelu", "sigmoid", "hard_sigmoid", "tanh",
    "softmax", "log_softmax", "softplus", "softsign", "silu", "exponential",
)
# Keras 3 treats `swish` as another name for `silu`; `null` means no activation.
ActivationName = choice(ACTIVATIONS, "activation", aliases={"swish": "silu"}, none_as="linear")


@register
class Activation(LayerSpec):
    type: Literal["Activation"] = "Activation"
    activation: ActivationName

    # The engine applies `output_activation` (and its derivative) to the layer's output.
    def output_activation(self):
        return self.activation

    def forward(self, w, x, training, rng):
        return x, None

    def backward(self, w, g, saved, dy, need_dx=True):
        return dy
