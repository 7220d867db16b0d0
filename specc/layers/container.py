"""Nested blocks: a model used as one layer of another.

`{type: Sequential, layers: [...]}` is a chain of layers; `Functional` (built by the Python API when a
Functional model is called inside another, `base(x)`) is a graph of layers with its own named input and
output. Both are the transfer-learning blueprint (a frozen base with a trainable head): `trainable: false`
on the block freezes every layer inside it. A block's shape rule and weights are those of its layers; the
graph module walks into it for the summary, and the engine runs its layers inline.
"""

from __future__ import annotations

from typing import Literal

from pydantic import SerializeAsAny

from ..spec.types import Name
from .base import LayerSpec, ShapeError, register


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


class Functional(LayerSpec):
    """A nested Functional model with one input and one output. `layers` are in a topological order and
    each names its `inputs` inside the block: `block_input` (the nested model's own input name), or an
    earlier layer. Not registered: spec format v1 has no YAML form for it yet (a `type: Functional` entry
    with a `model:` section like a Functional model's is the proposed one), so only the Python API makes it.
    """

    type: Literal["Functional"] = "Functional"
    block_input: Name
    input_shape: tuple
    layers: list[SerializeAsAny[LayerSpec]]
    output: Name

    def compute_output_shape(self, s):
        shapes = {self.block_input: tuple(s)}
        for layer in self.layers:
            if any(r not in shapes for r in layer.inputs or ()):
                raise ShapeError(f"layer '{layer.name}' inside '{self.name}' takes an unknown input")
            args = [shapes[r] for r in layer.inputs]
            shapes[layer.name] = tuple(layer.compute_output_shape(args if layer.is_merge else args[0]))
        return shapes[self.output]

    def config(self) -> dict:
        return super().config() | {"layers": [layer.config() for layer in self.layers]}
