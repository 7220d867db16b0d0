"""A nested `{type: Sequential, layers: [...]}` block: a chain of layers used as one layer.

It is the transfer-learning blueprint (a frozen base with a trainable head): `trainable: false` on the
block freezes every layer inside it. Its shape rule and weights are those of its chain; the graph module
walks into it for the summary and the runtime.
"""

from __future__ import annotations

from typing import Literal

from pydantic import SerializeAsAny

from .base import LayerSpec, register


@register
class Sequential(LayerSpec):
    type: Literal["Sequential"] = "Sequential"
    layers: list[SerializeAsAny[LayerSpec]]

    def compute_output_shape(self, s):
        for layer in self.layers:
            s = layer.compute_output_shape(s)
        return s

    def config(self) -> dict:
        return super().config() | {"layers": [layer.config() for layer in self.layers]}
