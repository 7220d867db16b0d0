"""Keras's loss classes for `compile()`: `specc.losses.SparseCategoricalCrossentropy(from_logits=True)`.

A loss object names one of the spec's losses plus the options the spec's string form cannot carry
(`from_logits`, Huber's `delta`); the training loop computes it with specc.train.losses.
"""

from __future__ import annotations

from typing import Any

from ..spec.schema import LOSS_ALIASES, LOSSES

_DEFAULTS = {"reduction": "sum_over_batch_size", "label_smoothing": 0.0, "axis": -1, "dtype": None,
             "ignore_class": None}


class Loss:
    key = ""  # the spec's loss name
    default_name = ""

    def __init__(self, name: str | None = None, **kwargs: Any):
        for key, default in _DEFAULTS.items():
            if key in kwargs and kwargs[key] == default:
                kwargs.pop(key)
        if kwargs:
            raise TypeError(f"{type(self).__name__} has no argument {', '.join(sorted(kwargs))} in specc"
                            f"{' (only the Keras defaults are supported)' if set(kwargs) & set(_DEFAULTS) else ''}")
        self.name = name or self.default_name
        self.from_logits = False
        self.delta = 1.0

    def __repr__(self) -> str:
        return f"<{type(self).__name__} from_logits={self.from_logits}>"


class _Crossentropy(Loss):
    def __init__(self, from_logits: bool = False, name: str | None = None, **kwargs: Any):
        super().__init__(name, **kwargs)
        self.from_logits = bool(from_logits)


def _cls(name: str, key: str, base: type = Loss) -> type:
    return type(name, (base,), {"key": key, "default_name": key, "__module__": "specc.losses"})


MeanSquaredError = _cls("MeanSquaredError", "mean_squared_error")
MeanAbsoluteError = _cls("MeanAbsoluteError", "mean_absolute_error")
KLDivergence = _cls("KLDivergence", "kl_divergence")
Hinge = _cls("Hinge", "hinge")
BinaryCrossentropy = _cls("BinaryCrossentropy", "binary_crossentropy", _Crossentropy)
CategoricalCrossentropy = _cls("CategoricalCrossentropy", "categorical_crossentropy", _Crossentropy)
SparseCategoricalCrossentropy = _cls("SparseCategoricalCrossentropy", "sparse_categorical_crossentropy", _Crossentropy)


class Huber(Loss):
    key = default_name = "huber"

    def __init__(self, delta: float = 1.0, name: str | None = None, **kwargs: Any):
        super().__init__(name or "huber_loss", **kwargs)
        self.delta = float(delta)


def known(name: str) -> bool:
    return isinstance(name, str) and (name in LOSSES or name in LOSS_ALIASES)


__all__ = ["Loss", "MeanSquaredError", "MeanAbsoluteError", "KLDivergence", "Hinge", "BinaryCrossentropy",
           "CategoricalCrossentropy", "SparseCategoricalCrossentropy", "Huber"]
