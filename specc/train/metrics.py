"""Metrics, accumulated over the batches of an epoch as Keras's stateful metrics are.

Each metric keeps running sums (`update` per batch, `result` at any time, `reset` per epoch). They run in
NumPy: a metric touches each prediction once per step, which costs far less than the step itself.
"""

from __future__ import annotations

import numpy as np


class Metric:
    name = "metric"
    weighted = False  # Keras's `weighted_metrics` see the sample weights; `metrics` do not

    def __init__(self, name: str | None = None):
        self.name = name or self.name
        self.reset()

    def reset(self) -> None:
        self.total, self.count = 0.0, 0.0

    def update(self, y_true: np.ndarray, y_pred: np.ndarray, sample_weight: np.ndarray | None = None) -> None:
        values = self.values(y_true, y_pred)  # (samples,)
        w = np.ones(len(values)) if sample_weight is None else sample_weight
        self.total += float(np.sum(values * w))
        self.count += float(np.sum(w))

    def values(self, y_true, y_pred) -> np.ndarray:
        raise NotImplementedError

    def result(self) -> float:
        return self.total / self.count if self.count else 0.0

    # Running sums as JSON-able values, so an interrupted epoch resumes with the same metrics.
    def state(self) -> dict:
        return {k: (np.asarray(v).tolist() if isinstance(v, np.ndarray) else
                     [np.asarray(a).tolist() for a in v] if isinstance(v, list) else v)
                for k, v in vars(self).items() if k != "name"}

    def load_state(self, state: dict) -> None:
        for k, v in state.items():
            if k in ("scores", "labels"):
                v = [np.asarray(a, np.float64 if k == "scores" else bool) for a in v]
            elif k == "per_class":
                v = {int(c): list(t) for c, t in v.items()}
            setattr(self, k, v)


def _like_predictions(y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
    """Targets in the predictions' shape: class indices for a multi-unit output become one-hot, so
    per-unit metrics (precision, recall, AUC) count each class decision, as Keras does for one-hot labels."""
    if y_true.size != y_pred.size and y_pred.shape[-1] > 1 and y_true.size * y_pred.shape[-1] == y_pred.size:
        return np.eye(y_pred.shape[-1], dtype=y_pred.dtype)[y_true.reshape(y_pred.shape[:-1]).astype(np.int64)]
    return y_true.reshape(y_pred.shape)


def _per_sample(a: np.ndarray) -> np.ndarray:
    return a.reshape(len(a), -1).mean(axis=1)


class BinaryAccuracy(Metric):
    name = "binary_accuracy"

    def values(self, y_true, y_pred):
        return _per_sample((y_pred > 0.5) == (y_true.reshape(y_pred.shape) > 0.5))


class CategoricalAccuracy(Metric):
    name = "categorical_accuracy"

    def values(self, y_true, y_pred):
        return (np.argmax(y_true, axis=-1) == np.argmax(y_pred, axis=-1)).astype(np.float64).reshape(len(y_pred), -1).mean(1)


class SparseCategoricalAccuracy(Metric):
    name = "sparse_categorical_accuracy"

    def values(self, y_true, y_pred):
        labels = y_true.reshape(y_pred.shape[:-1]).astype(np.int64)
        return (labels == np.argmax(y_pred, axis=-1)).astype(np.float64).reshape(len(y_pred), -1).mean(1)


class TopKCategoricalAccuracy(Metric):
    name = "top_k_categorical_accuracy"
    k = 5

    def labels(self, y_true, y_pred):
        return np.argmax(y_true, axis=-1)

    def values(self, y_true, y_pred):
        labels = self.labels(y_true, y_pred).reshape(-1)
        scores = y_pred.reshape(len(labels), -1)
        target = scores[np.arange(len(labels)), labels]
        # in the top k when fewer than k scores beat the target's
        return (np.sum(scores > target[:, None], axis=1) < self.k).astype(np.float64)


class SparseTopKCategoricalAccuracy(TopKCategoricalAccuracy):
    name = "sparse_top_k_categorical_accuracy"

    def labels(self, y_true, y_pred):
        return y_true.astype(np.int64)


class MeanSquaredError(Metric):
    name = "mean_squared_error"

    def values(self, y_true, y_pred):
        return _per_sample((y_pred - y_true.reshape(y_pred.shape)) ** 2)


class MeanAbsoluteError(Metric):
    name = "mean_absolute_error"

    def values(self, y_true, y_pred):
        return _per_sample(np.abs(y_pred - y_true.reshape(y_pred.shape)))


class RootMeanSquaredError(MeanSquaredError):
    name = "root_mean_squared_error"

    def result(self):
        return float(np.sqrt(super().result()))


class _Counts(Metric):
    """True/false positives over binary decisions at 0.5 (every output unit counts, as in Keras)."""

    def reset(self):
        self.tp = self.fp = self.fn = self.tn = 0.0

    def update(self, y_true, y_pred, sample_weight=None):
        pred = y_pred > 0.5
        true = _like_predictions(y_true, y_pred) > 0.5
        w = np.ones(len(y_pred)) if sample_weight is None else sample_weight
        w = w.reshape((-1,) + (1,) * (y_pred.ndim - 1))
        self.tp += float(np.sum(w * (pred & true)))
        self.fp += float(np.sum(w * (pred & ~true)))
        self.fn += float(np.sum(w * (~pred & true)))
        self.tn += float(np.sum(w * (~pred & ~true)))


class Precision(_Counts):
    name = "precision"

    def result(self):
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else 0.0


class Recall(_Counts):
    name = "recall"

    def result(self):
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else 0.0


class F1Score(_Counts):
    """Binary F1 at threshold 0.5 for one-unit outputs; macro F1 over argmax classes otherwise."""

    name = "f1_score"

    def reset(self):
        super().reset()
        self.per_class: dict[int, list[float]] = {}

    def update(self, y_true, y_pred, sample_weight=None):
        if y_pred.shape[-1] == 1:
            return super().update(y_true, y_pred, sample_weight)
        pred = np.argmax(y_pred, axis=-1).reshape(-1)
        true = (np.argmax(y_true, axis=-1) if y_true.shape == y_pred.shape else y_true).reshape(-1).astype(np.int64)
        w = np.ones(len(pred)) if sample_weight is None else np.repeat(sample_weight, len(pred) // len(sample_weight))
        for c in range(y_pred.shape[-1]):
            tp, fp, fn = self.per_class.setdefault(c, [0.0, 0.0, 0.0])
            self.per_class[c] = [tp + float(np.sum(w * ((pred == c) & (true == c)))),
                                 fp + float(np.sum(w * ((pred == c) & (true != c)))),
                                 fn + float(np.sum(w * ((pred != c) & (true == c))))]

    def result(self):
        if not self.per_class:
            d = 2 * self.tp + self.fp + self.fn
            return 2 * self.tp / d if d else 0.0
        scores = [2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0 for tp, fp, fn in self.per_class.values()]
        return float(np.mean(scores))


class AUC(Metric):
    """Exact ROC AUC (Mann-Whitney, ties counted half) over every prediction of the epoch.

    Keras approximates with 200 thresholds; the exact value is what scikit-learn reports.
    """

    name = "auc"

    def reset(self):
        self.scores: list[np.ndarray] = []
        self.labels: list[np.ndarray] = []

    def update(self, y_true, y_pred, sample_weight=None):
        self.scores.append(y_pred.reshape(-1).astype(np.float64))
        self.labels.append((_like_predictions(y_true, y_pred) > 0.5).reshape(-1))

    def result(self):
        if not self.scores:
            return 0.0
        s, t = np.concatenate(self.scores), np.concatenate(self.labels)
        pos, neg = int(t.sum()), int((~t).sum())
        if pos == 0 or neg == 0:
            return 0.0
        order = np.argsort(s, kind="mergesort")
        ranks = np.empty(len(s))
        sorted_s = s[order]
        # average ranks over ties
        starts = np.r_[0, np.flatnonzero(np.diff(sorted_s)) + 1]
        ends = np.r_[starts[1:], len(s)]
        for a, b in zip(starts, ends):
            ranks[order[a:b]] = (a + b + 1) / 2.0
        return float((ranks[t].sum() - pos * (pos + 1) / 2.0) / (pos * neg))


class FunctionMetric(Metric):
    """A metric given as a function `fn(y_true, y_pred)` of NumPy arrays, as Keras wraps one in a
    MeanMetricWrapper: its values are averaged per sample (over any further axes), then over the samples,
    weighted by the sample weights when it is a weighted metric. A scalar result counts as one value."""

    def __init__(self, fn, name: str | None = None):
        self.fn = fn
        super().__init__(name or getattr(fn, "__name__", "metric"))

    def update(self, y_true, y_pred, sample_weight=None):
        try:
            values = np.asarray(self.fn(y_true, y_pred), np.float64)
        except Exception as exc:
            raise type(exc)(f"metric function {self.name!r} failed on y_true of shape {np.shape(y_true)} and "
                            f"y_pred of shape {np.shape(y_pred)}: {exc}") from exc
        if values.ndim == 0:
            self.total += float(values)
            self.count += 1.0
            return
        if len(values) != len(y_pred):
            raise ValueError(f"metric function {self.name!r} returned shape {values.shape} for a batch of "
                             f"{len(y_pred)}; it must return one value per sample (or per sample and step), or a "
                             f"scalar")
        per_sample = values.reshape(len(values), -1).mean(axis=1)
        w = np.ones(len(per_sample)) if sample_weight is None else \
            np.asarray(sample_weight, np.float64).reshape(len(per_sample), -1).mean(axis=1)
        self.total += float(np.sum(per_sample * w))
        self.count += float(np.sum(w))

    def state(self) -> dict:
        return {"total": self.total, "count": self.count}


class _CrossentropyMetric(Metric):
    """Keras's crossentropy metrics: the mean per-sample cross-entropy of probabilities, clipped to
    [1e-7, 1 - 1e-7] as Keras's loss functions clip them (categorical ones renormalised to sum 1)."""

    def values(self, y_true, y_pred):
        p = np.asarray(y_pred, np.float64)
        if self.kind == "binary":
            t = np.asarray(y_true, np.float64).reshape(p.shape)
            p = np.clip(p, 1e-7, 1 - 1e-7)
            return _per_sample(-(t * np.log(p) + (1 - t) * np.log(1 - p)))
        p = np.clip(p / p.sum(axis=-1, keepdims=True), 1e-7, 1 - 1e-7)
        if self.kind == "sparse":
            labels = np.asarray(y_true).reshape(p.shape[:-1]).astype(np.int64)
            ce = -np.log(np.take_along_axis(p, labels[..., None], axis=-1))[..., 0]
        else:
            ce = -np.sum(np.asarray(y_true, np.float64).reshape(p.shape) * np.log(p), axis=-1)
        return ce.reshape(len(p), -1).mean(axis=1)


class BinaryCrossentropy(_CrossentropyMetric):
    name, kind = "binary_crossentropy", "binary"


class CategoricalCrossentropy(_CrossentropyMetric):
    name, kind = "categorical_crossentropy", "categorical"


class SparseCategoricalCrossentropy(_CrossentropyMetric):
    name, kind = "sparse_categorical_crossentropy", "sparse"


BY_NAME = {
    "binary_accuracy": BinaryAccuracy, "categorical_accuracy": CategoricalAccuracy,
    "sparse_categorical_accuracy": SparseCategoricalAccuracy,
    "top_k_categorical_accuracy": TopKCategoricalAccuracy,
    "sparse_top_k_categorical_accuracy": SparseTopKCategoricalAccuracy,
    "mean_squared_error": MeanSquaredError, "mean_absolute_error": MeanAbsoluteError,
    "root_mean_squared_error": RootMeanSquaredError, "precision": Precision, "recall": Recall,
    "f1_score": F1Score, "auc": AUC,
}


def resolve(name: str, output_shape: tuple, sparse_targets: bool) -> Metric:
    """Keras's resolution of 'accuracy': binary for one-unit outputs, sparse when targets are class
    indices, categorical otherwise. The metric keeps the name the user wrote."""
    if name == "accuracy":
        if output_shape[-1] == 1:
            return BinaryAccuracy("accuracy")
        return SparseCategoricalAccuracy("accuracy") if sparse_targets else CategoricalAccuracy("accuracy")
    if name == "crossentropy":  # tf.keras's "crossentropy" / "ce", resolved like "accuracy"
        if output_shape[-1] == 1:
            return BinaryCrossentropy(name)
        return SparseCategoricalCrossentropy(name) if sparse_targets else CategoricalCrossentropy(name)
    return BY_NAME[name]()
