"""Symbolic tensors and call nodes: the record of which layer was called on which tensors.

`specc.Input(shape=(3,))` returns a KerasTensor; calling a layer on KerasTensors records a CallNode and
returns new KerasTensors. A Functional model is the set of CallNodes between its inputs and outputs; it is
turned into a specc Graph (specc.api.functional) only when the model is built, shown or run.

Shapes here include the batch axis, as Keras shows them: (None, 3) for `Input(shape=(3,))`.
"""

from __future__ import annotations

import itertools
from typing import Any

_ids = itertools.count()


def shape_str(shape: tuple) -> str:
    """A shape that already includes the batch axis, as Keras prints it: (None, 3), (1, 4)."""
    return "(" + ", ".join("None" if d is None else str(d) for d in shape) + ("," if len(shape) == 1 else "") + ")"


class CallNode:
    """One call of `layer` on `inputs` (KerasTensors), producing `outputs`.

    `owner` is the Sequential model that made the call while chaining its layers, or None for a call the
    user wrote (the Functional API). `id` grows with creation order, which is a topological order: a
    node's inputs exist before it does.
    """

    def __init__(self, layer: Any, inputs: list[KerasTensor], output_shapes: list[tuple], merge: bool,
                 owner: Any = None):
        self.id = next(_ids)
        self.layer = layer
        self.inputs = list(inputs)
        self.merge = merge  # the layer took a list of tensors (merge layers)
        self.owner = owner
        self.outputs = [KerasTensor(s, self, i) for i, s in enumerate(output_shapes)]


class KerasTensor:
    """A symbolic tensor: a shape (batch axis first, None where unknown) and the call that produces it."""

    dtype = "float32"

    def __init__(self, shape: tuple, node: CallNode, index: int = 0):
        self.shape = tuple(shape)
        self.node = node
        self.index = index

    @property
    def name(self) -> str:
        return self.node.layer.name

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __repr__(self) -> str:
        return f"<KerasTensor shape={shape_str(self.shape)}, dtype={self.dtype}, name={self.name}>"

    def __array__(self, *args, **kwargs):
        raise TypeError("a KerasTensor is symbolic (it has a shape, no values); call the model on a NumPy array "
                        "to get values, e.g. specc.Model(inputs, outputs)(x)")


def flatten(structure: Any) -> list:
    """Tensors (or arrays) of a single value, a list/tuple, or a dict, in order."""
    if isinstance(structure, dict):
        return list(structure.values())
    if isinstance(structure, (list, tuple)):
        return list(structure)
    return [structure]


def is_symbolic(structure: Any) -> bool:
    items = flatten(structure)
    return bool(items) and all(isinstance(t, KerasTensor) for t in items)
