"""Keras's loss classes for `compile()`: `specc.losses.SparseCategoricalCrossentropy(from_logits=True)`.

A loss object names one of the spec's losses plus the options the spec's string form cannot carry
(`from_logits`, Huber's `delta`, Keras 3's `reduction`); the training loop computes it with
specc.train.losses. Called on arrays, `loss(y_true, y_pred, sample_weight=None)` gives Keras's value.

Custom losses: specc trains with each loss's exact gradient, computed beside its value in one kernel, so
a loss must be one specc can differentiate. Built-in losses combine by weighted sums — `0.5 *
MeanSquaredError() + MeanAbsoluteError()`, `(a + b) / 2`, `a - 0.1 * b` — whose gradient is the same sum
of the terms' gradients. A plain Python function is refused with a TypeError that says so.
"""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np

from ..spec.schema import LOSS_ALIASES, LOSSES

REDUCTIONS = ("sum_over_batch_size", "mean", "sum", "mean_with_sample_weight", "none", None)
_DEFAULTS = {"label_smoothing": 0.0, "axis": -1, "dtype": None, "ignore_class": None}


class Loss:
    """Base of specc's loss objects: a built-in loss, or a weighted sum of them (`0.5 * a + b`)."""

    key = ""  # the spec's loss name
    default_name = ""

    def __init__(self, reduction: str | None = "sum_over_batch_size", name: str | None = None, **kwargs: Any):
        for key, default in _DEFAULTS.items():
            if key in kwargs and kwargs[key] == default:
                kwargs.pop(key)
        if kwargs:
            raise TypeError(f"{type(self).__name__} has no argument {', '.join(sorted(kwargs))} in specc"
                            f"{' (only the Keras defaults are supported)' if set(kwargs) & set(_DEFAULTS) else ''}")
        if reduction not in REDUCTIONS:
            raise ValueError(f"Invalid value for argument `reduction`. Expected one of "
                             f"{', '.join(map(repr, REDUCTIONS))}. Received: reduction={reduction!r}")
        self.name = name or self.default_name
        self.reduction = "none" if reduction is None else reduction
        self.from_logits = False
        self.delta = 1.0

    def __repr__(self) -> str:
        return f"<{type(self).__name__} from_logits={self.from_logits} reduction={self.reduction}>"

    def terms(self) -> list[tuple[float, Loss]]:
        """The built-in losses this loss sums, with their weights."""
        return [(1.0, self)]

    def to_train(self):
        """The training loop's loss (specc.train.losses): a Loss, or a LossSum of them."""
        from ..train.losses import get_loss

        return get_loss(self.key, from_logits=self.from_logits, delta=self.delta, reduction=self.reduction)

    @property
    def has_options(self) -> bool:
        return self.from_logits or self.delta != 1.0 or self.reduction not in ("sum_over_batch_size", "mean")

    def __call__(self, y_true: Any, y_pred: Any, sample_weight: Any = None) -> Any:
        """Keras's value of the loss on arrays: a float, or per-sample values with reduction="none"."""
        train = self.to_train()
        if self.reduction == "none":
            return per_sample(train, y_true, y_pred, sample_weight)
        return train(np.asarray(y_true), np.asarray(y_pred), sample_weight)[0]

    # --- weighted sums ------------------------------------------------------------------------------

    def __add__(self, other: Any) -> LossSum:
        if not isinstance(other, Loss):
            return _not_a_loss("+", other)
        return LossSum(self.terms() + other.terms())

    def __sub__(self, other: Any) -> LossSum:
        if not isinstance(other, Loss):
            return _not_a_loss("-", other)
        return LossSum(self.terms() + [(-w, t) for w, t in other.terms()])

    def __mul__(self, factor: Any) -> LossSum:
        if isinstance(factor, bool) or not isinstance(factor, numbers.Real):
            return _not_a_loss("*", factor)
        return LossSum([(w * float(factor), t) for w, t in self.terms()])

    __rmul__ = __mul__

    def __truediv__(self, divisor: Any) -> LossSum:
        if isinstance(divisor, bool) or not isinstance(divisor, numbers.Real) or divisor == 0:
            return _not_a_loss("/", divisor)
        return self * (1.0 / float(divisor))

    def __neg__(self) -> LossSum:
        return self * -1.0


def _not_a_loss(op: str, other: Any):
    raise TypeError(f"specc losses combine as weighted sums: loss + loss, loss - loss, number * loss, loss / number; "
                    f"got loss {op} {type(other).__name__}")


class LossSum(Loss):
    """A weighted sum of built-in losses, e.g. `0.5 * MeanSquaredError() + MeanAbsoluteError()`: trained with
    the same sum of the terms' exact gradients. Every term reads the same targets."""

    def __init__(self, terms: list[tuple[float, Loss]]):
        super().__init__(name=" + ".join(f"{w:g}*{t.name}" for w, t in terms))
        sparse = {t.key == "sparse_categorical_crossentropy" for _, t in terms}
        if len(sparse) > 1:
            raise ValueError("a sum of losses cannot mix sparse_categorical_crossentropy (class-index targets) with "
                             "losses of one-hot or real-valued targets: all terms read the same y")
        self._terms = list(terms)
        self.key = terms[0][1].key

    def terms(self) -> list[tuple[float, Loss]]:
        return list(self._terms)

    @property
    def has_options(self) -> bool:
        return True

    def to_train(self):
        from ..train.losses import LossSum as TrainLossSum

        return TrainLossSum([(w, t.to_train()) for w, t in self._terms])

    def __call__(self, y_true: Any, y_pred: Any, sample_weight: Any = None) -> Any:
        return sum(w * t(y_true, y_pred, sample_weight) for w, t in self._terms)

    def __repr__(self) -> str:
        return f"<LossSum {' + '.join(f'{w:g} * {t!r}' for w, t in self._terms)}>"


def per_sample(train_loss: Any, y_true: Any, y_pred: Any, sample_weight: Any = None) -> np.ndarray:
    """The unreduced loss, one value per sample (per time step for sequences): the kernel's weighted mean
    with all the weight on one value at a time, so the values are exactly the kernel's."""
    y_pred = np.asarray(y_pred, np.float64 if np.asarray(y_pred).dtype == np.float64 else np.float32)
    per_row = y_pred.ndim > 1 or train_loss.name in ("categorical_crossentropy", "sparse_categorical_crossentropy")
    values_shape = y_pred.shape[:-1] if per_row else y_pred.shape
    rows = int(np.prod(values_shape))
    scale = np.ones(rows) if sample_weight is None else \
        np.broadcast_to(np.asarray(sample_weight, np.float64).reshape((-1,) + (1,) * (len(values_shape) - 1)),
                        values_shape).reshape(rows)
    from ..train.losses import Loss as TrainLoss

    mean = TrainLoss(train_loss.name, train_loss.from_logits, train_loss.delta)
    out = np.empty(rows)
    weights = np.zeros(rows)
    for i in range(rows):
        weights[:] = 0.0
        weights[i] = rows  # the kernel divides by the number of values
        out[i] = mean(np.asarray(y_true), y_pred, weights)[0] * scale[i]
    return out.reshape(values_shape)


class _Crossentropy(Loss):
    def __init__(self, from_logits: bool = False, name: str | None = None,
                 reduction: str | None = "sum_over_batch_size", **kwargs: Any):
        super().__init__(reduction, name, **kwargs)
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

    def __init__(self, delta: float = 1.0, reduction: str | None = "sum_over_batch_size", name: str | None = None,
                 **kwargs: Any):
        super().__init__(reduction, name or "huber_loss", **kwargs)
        self.delta = float(delta)


def known(name: str) -> bool:
    return isinstance(name, str) and (name in LOSSES or name in LOSS_ALIASES)


CUSTOM_LOSS_HELP = ("specc trains with each loss's exact gradient, computed beside its value in one compiled kernel, "
                    "so it cannot differentiate an arbitrary Python function. Use a built-in loss (a name such as "
                    "'mse' or a specc.losses object), or a weighted sum of them, e.g. "
                    "0.5 * specc.losses.MeanSquaredError() + specc.losses.MeanAbsoluteError()")

__all__ = ["Loss", "LossSum", "MeanSquaredError", "MeanAbsoluteError", "KLDivergence", "Hinge", "BinaryCrossentropy",
           "CategoricalCrossentropy", "SparseCategoricalCrossentropy", "Huber"]
