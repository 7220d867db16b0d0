"""Shared layers of a spec: `{use: encoder, inputs: other}` applies the layer `encoder` again, on its weights.

The graph gets one node per application. The used layer's own node (`SharedOwner`) declares the weights,
so the parameter count and the weights file hold them once; each `SharedUse` node declares none and runs
on the owner's arrays. The engine runs nodes in graph order, so the owner's forward comes first (it hands
its weight views to the group) and its backward last: each use adds its weight gradients to the group's
pending sums, and the owner adds them to its own, which its kernels have just written (layer kernels
overwrite their gradients rather than accumulate). The validator checks that every use comes after its
owner in the graph's order.
"""

from __future__ import annotations

from typing import Any


class SharedGroup:
    """The owner's weight views of the current pass, and the uses' gradients waiting for its backward."""

    def __init__(self) -> None:
        self.weights: list | None = None
        self.pending: list | None = None


class SharedOwner:
    """The used layer's own node: the layer itself, handing its weights to the group as it runs."""

    def __init__(self, spec: Any, group: SharedGroup):
        self._spec, self._group = spec, group

    def __getattr__(self, key: str) -> Any:
        return getattr(self._spec, key)

    @property
    def layer(self) -> Any:
        return self._spec

    def forward(self, w, x, training, rng):
        self._group.weights, self._group.pending = w, None
        return self._spec.forward(w, x, training, rng)

    def backward(self, w, g, saved, dy, need_dx=True):
        dx = self._spec.backward(w, g, saved, dy, need_dx)
        pending, self._group.pending = self._group.pending, None
        if pending is not None:
            for grad, extra in zip(g, pending):
                if grad is not None and extra is not None:
                    grad += extra
        return dx


class SharedUse:
    """Another application of a layer: a LayerSpec stand-in with its own name and inputs, no weights."""

    def __init__(self, name: str, inputs: list[str] | None, owner: str):
        self.name, self.inputs, self.owner = name, inputs, owner
        self._spec: Any = None
        self._group: SharedGroup | None = None
        self._specs: list = []

    def bind(self, spec: Any, group: SharedGroup) -> None:
        self._spec, self._group = spec, group

    def __getattr__(self, key: str) -> Any:
        if key.startswith("_") or self._spec is None:
            raise AttributeError(key)
        return getattr(self._spec, key)

    @property
    def type(self) -> str:
        # Not the layer's own type: code that recognises a layer by its type and reads its weights from the
        # step (the fused Dense-chain path) must not take a use, which has none, for the layer.
        return f"{self._spec.type} (shared)" if self._spec is not None else "use"

    @property
    def shared_type(self) -> str:
        """The used layer's type, as the summary shows it."""
        return self._spec.type

    def weight_specs(self, input_shape: Any) -> list:
        self._specs = self._spec.weight_specs(input_shape)
        return []

    def forward(self, w, x, training, rng):
        return self._spec.forward(self._group.weights, x, training, rng)

    def backward(self, w, g, saved, dy, need_dx=True):
        import numpy as np

        weights = self._group.weights
        # (shape of each weight) scratch gradients for the trainable ones; statistics have none
        scratch = [np.zeros_like(v) if s.trainable else None for v, s in zip(weights, self._specs)]
        dx = self._spec.backward(weights, scratch, saved, dy, need_dx)
        if self._group.pending is None:
            self._group.pending = scratch
        else:
            for total, extra in zip(self._group.pending, scratch):
                if total is not None:
                    total += extra
        return dx
