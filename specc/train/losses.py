"""Keras 3 losses: the reduced value and its gradient w.r.t. the predictions, in one kernel call.

    loss = get_loss("categorical_crossentropy")          # or an alias: "mse", "kld", ...
    value, d_pred = loss(y_true, y_pred, sample_weight=None)

The reduction is Keras's default "sum_over_batch_size": the per-sample loss (for the elementwise
losses, the mean over the last axis; kl_divergence sums it) is weighted by `sample_weight` and summed,
then divided by the number of per-sample values (batch, or batch * time for sequence outputs), not by
the sum of the weights. Cross-entropies on probabilities clip them to [1e-7, 1 - 1e-7] as Keras does.

Fused paths, for an output layer whose activation the loss can absorb (`loss.fuses_with`):
`fused_softmax(y_true, logits)` for the categorical cross-entropies and `fused_sigmoid(y_true, logits)`
for binary cross-entropy return (value, d_logits), the gradient w.r.t. the pre-activation, which goes to
`Engine.backward(..., pre_activation=[True])`. They compute the loss from the logits (log-sum-exp), so
they equal the unfused composition wherever Keras's clipping is inactive (probabilities >= 1e-7) and
stay exact and non-zero where it is not.
"""

from __future__ import annotations

import numpy as np

from ..kernels import losses as K
from ..spec.schema import LOSS_ALIASES, LOSSES
from ..workspace import empty

EPSILON = 1e-7  # keras.backend.epsilon()

_ELEMENTWISE = {"mean_squared_error": K.MSE, "mean_absolute_error": K.MAE, "huber": K.HUBER,
                "binary_crossentropy": K.BCE, "hinge": K.HINGE, "kl_divergence": K.KLD}


def canonical_name(name: str) -> str:
    name = LOSS_ALIASES.get(name, name)
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; expected one of {', '.join(LOSSES)}")
    return name


REDUCTIONS = ("sum_over_batch_size", "mean", "sum", "mean_with_sample_weight", "none")


def get_loss(name: str, from_logits: bool = False, delta: float = 1.0,
             reduction: str = "sum_over_batch_size") -> Loss:
    """The loss `name` (a Keras name or alias). `from_logits` applies to the cross-entropies only."""
    return Loss(canonical_name(name), from_logits, delta, reduction)


def _float(a, dtype=None) -> np.ndarray:
    a = np.asarray(a)
    if dtype is None:
        dtype = a.dtype if a.dtype in (np.float32, np.float64) else np.float32
    return np.ascontiguousarray(a, dtype=dtype)


def _bounds(dtype) -> tuple[float, float]:
    """epsilon and 1 - epsilon as Keras sees them: rounded to the prediction dtype."""
    t = np.dtype(dtype).type
    return float(t(EPSILON)), float(t(1.0 - EPSILON))


def _row_weights(sample_weight, values_shape: tuple) -> np.ndarray:
    """One weight per per-sample loss value: (batch,) weights are repeated over any time axes."""
    rows = int(np.prod(values_shape))
    if sample_weight is None:
        ones = empty("ones", (rows,), np.float64)
        ones[...] = 1.0
        return ones
    w = np.asarray(sample_weight, np.float64)
    if w.size == rows:
        return np.ascontiguousarray(w.reshape(rows))
    batch = values_shape[0] if values_shape else 1
    if w.size == batch:
        return np.ascontiguousarray(np.broadcast_to(w.reshape((batch,) + (1,) * (len(values_shape) - 1)),
                                                    values_shape).reshape(rows))
    raise ValueError(f"sample_weight of shape {w.shape} does not match per-sample losses of shape {values_shape}")




def check_label_range(labels: np.ndarray, classes: int) -> None:
    """Sparse labels must be class indices of the output."""
    if labels.size and (labels.min() < 0 or labels.max() >= classes):
        raise ValueError(f"labels must be in [0, {classes}), got values in [{labels.min()}, {labels.max()}]")


class Loss:
    """One of Keras's losses with its options. `reduction` is Keras 3's: "sum_over_batch_size" (= "mean",
    the default) divides the weighted sum by the number of per-sample values, "sum" does not divide,
    "mean_with_sample_weight" divides by the sum of the weights; "none" has no scalar to train on (fit
    refuses it; evaluate reports the mean, as Keras does)."""

    def __init__(self, name: str, from_logits: bool = False, delta: float = 1.0,
                 reduction: str = "sum_over_batch_size"):
        if reduction not in REDUCTIONS:
            raise ValueError(f"reduction must be one of {', '.join(REDUCTIONS)}; got {reduction!r}")
        self.name = name
        self.from_logits = bool(from_logits)
        self.delta = float(delta)
        self.reduction = reduction

    @property
    def plain(self) -> bool:
        """Keras's default reduction: the fused training step computes exactly this loss."""
        return self.reduction in ("sum_over_batch_size", "mean", "none")

    def __repr__(self) -> str:
        return f"Loss({self.name!r}, from_logits={self.from_logits})"

    @property
    def fuses_with(self) -> str | None:
        """The output activation this loss can absorb (see fused_softmax / fused_sigmoid), or None."""
        if self.from_logits:
            return None
        if self.name in ("categorical_crossentropy", "sparse_categorical_crossentropy"):
            return "softmax"
        if self.name == "binary_crossentropy":
            return "sigmoid"
        return None

    def __call__(self, y_true, y_pred, sample_weight=None) -> tuple[float, np.ndarray]:
        """(reduced loss, d loss / d y_pred with y_pred's shape and float dtype)."""
        return self._compute(y_true, y_pred, sample_weight, self.from_logits)

    def _rescale(self, value: float, grad: np.ndarray, rows: int, weights: np.ndarray) -> float:
        """The kernels divide by the number of per-sample values; other reductions rescale value and gradient."""
        if self.reduction == "sum":
            scale = float(rows)
        elif self.reduction == "mean_with_sample_weight":
            total = float(weights.sum())
            scale = rows / total if total else 0.0
        else:
            return value
        grad *= scale
        return value * scale

    def fused_softmax(self, y_true, logits, sample_weight=None) -> tuple[float, np.ndarray]:
        """Loss of softmax(logits) and its gradient w.r.t. the logits: (softmax * sum(t) - t) * w / N."""
        if self.name not in ("categorical_crossentropy", "sparse_categorical_crossentropy"):
            raise ValueError(f"{self.name} does not fuse with softmax")
        return self._compute(y_true, logits, sample_weight, True)

    def fused_sigmoid(self, y_true, logits, sample_weight=None) -> tuple[float, np.ndarray]:
        """Binary cross-entropy of sigmoid(logits) and its gradient w.r.t. the logits."""
        if self.name != "binary_crossentropy":
            raise ValueError(f"{self.name} does not fuse with sigmoid")
        return self._compute(y_true, logits, sample_weight, True)

    def fused(self, activation: str, y_true, logits, sample_weight=None) -> tuple[float, np.ndarray]:
        if activation != self.fuses_with:
            raise ValueError(f"{self.name} does not fuse with {activation}")
        return self._compute(y_true, logits, sample_weight, True)

    # --- implementation ----------------------------------------------------------------------------

    def _compute(self, y_true, y_pred, sample_weight, from_logits: bool):
        y_pred = _float(y_pred)
        shape = y_pred.shape
        if y_pred.ndim == 0:
            raise ValueError("y_pred must have at least one axis")
        if np.isnan(y_pred).any():
            # The kernels run with fastmath, which assumes no NaN: report a NaN prediction explicitly.
            return float("nan"), np.full_like(y_pred, np.nan)
        lo, hi = _bounds(y_pred.dtype)
        if self.name in ("categorical_crossentropy", "sparse_categorical_crossentropy"):
            if y_pred.ndim < 2:
                raise ValueError(f"{self.name} needs y_pred of shape (batch, ..., classes), got {shape}")
            values_shape = shape[:-1]
            pred = y_pred.reshape(-1, shape[-1])
            weights = _row_weights(sample_weight, values_shape)
            grad = empty("gradient", pred.shape, pred.dtype)
            inv = 1.0 / max(len(pred), 1)
            if self.name == "categorical_crossentropy":
                true = _float(y_true, y_pred.dtype)
                if true.shape != shape:
                    raise ValueError(f"y_true of shape {true.shape} does not match y_pred of shape {shape}")
                value = K.categorical(true.reshape(pred.shape), pred, weights, inv, from_logits, lo, hi, grad)
            else:
                labels = np.asarray(y_true)
                if labels.size != len(pred):
                    raise ValueError(f"sparse labels of shape {labels.shape} do not match y_pred of shape {shape}")
                labels = np.ascontiguousarray(labels.reshape(-1).astype(np.int64))  # truncates, as Keras's cast
                check_label_range(labels, shape[-1])
                value = K.sparse_categorical(labels, pred, weights, inv, from_logits, lo, hi, grad)
            return self._rescale(float(value), grad, len(pred), weights), grad.reshape(shape)

        pred = y_pred.reshape(-1, 1) if y_pred.ndim == 1 else y_pred.reshape(-1, shape[-1])
        values_shape = shape if y_pred.ndim == 1 else shape[:-1]
        true = _float(y_true, y_pred.dtype)
        if true.size != y_pred.size:
            raise ValueError(f"y_true of shape {true.shape} does not match y_pred of shape {shape}")
        true = true.reshape(pred.shape)
        code = _ELEMENTWISE[self.name]
        if code == K.BCE and from_logits:
            code = K.BCE_LOGITS
        hinge_binary = code == K.HINGE and bool(np.all((true == 0) | (true == 1)))
        row_scale = 1.0 if code == K.KLD else 1.0 / pred.shape[1]
        weights = _row_weights(sample_weight, values_shape)
        grad = empty("gradient", pred.shape, pred.dtype)
        value = K.elementwise(code, true, pred, weights, row_scale, 1.0 / max(len(pred), 1), self.delta,
                              lo, hi, hinge_binary, grad)
        return self._rescale(float(value), grad, len(pred), weights), grad.reshape(shape)


class LossSum:
    """A weighted sum of losses, sum_i w_i * loss_i: its value and gradient are the same sums of the terms'.
    The terms read the same targets (`name`, the first term's, is what the targets are checked against)."""

    from_logits = False
    fuses_with = None
    plain = False

    def __init__(self, terms: list[tuple[float, Loss]]):
        if not terms:
            raise ValueError("a sum of losses needs at least one term")
        self.terms = [(float(w), loss) for w, loss in terms]
        self.name = self.terms[0][1].name

    def __repr__(self) -> str:
        return " + ".join(f"{w:g} * {loss!r}" for w, loss in self.terms)

    def __call__(self, y_true, y_pred, sample_weight=None) -> tuple[float, np.ndarray]:
        total, grad = 0.0, None
        for w, loss in self.terms:
            value, g = loss(y_true, y_pred, sample_weight)
            total += w * value
            if grad is None:
                grad = g * w  # a new array: each term's gradient lives in the same reused buffer
            else:
                grad += w * g
        return total, grad
