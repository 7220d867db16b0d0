"""Keras's metric classes for `compile()`: `specc.metrics.AUC()`, `specc.metrics.MeanAbsoluteError(name="mae")`.

A metric object names one of the spec's metrics and the label it is logged under (Keras's `name`).
"""

from __future__ import annotations

from typing import Any


class Metric:
    key = ""  # the spec's metric name

    def __init__(self, name: str | None = None, **kwargs: Any):
        kwargs.pop("dtype", None)
        if kwargs:
            raise TypeError(f"{type(self).__name__} has no argument {', '.join(sorted(kwargs))} in specc "
                            f"(only `name` is supported)")
        self.name = name or self.key

    def __repr__(self) -> str:
        return f"<{type(self).__name__} name={self.name}>"


def _cls(name: str, key: str) -> type:
    return type(name, (Metric,), {"key": key, "__module__": "specc.metrics"})


BinaryAccuracy = _cls("BinaryAccuracy", "binary_accuracy")
CategoricalAccuracy = _cls("CategoricalAccuracy", "categorical_accuracy")
SparseCategoricalAccuracy = _cls("SparseCategoricalAccuracy", "sparse_categorical_accuracy")
TopKCategoricalAccuracy = _cls("TopKCategoricalAccuracy", "top_k_categorical_accuracy")
SparseTopKCategoricalAccuracy = _cls("SparseTopKCategoricalAccuracy", "sparse_top_k_categorical_accuracy")
MeanSquaredError = _cls("MeanSquaredError", "mean_squared_error")
MeanAbsoluteError = _cls("MeanAbsoluteError", "mean_absolute_error")
RootMeanSquaredError = _cls("RootMeanSquaredError", "root_mean_squared_error")
AUC = _cls("AUC", "auc")
Precision = _cls("Precision", "precision")
Recall = _cls("Recall", "recall")
F1Score = _cls("F1Score", "f1_score")

__all__ = ["Metric", "BinaryAccuracy", "CategoricalAccuracy", "SparseCategoricalAccuracy",
           "TopKCategoricalAccuracy", "SparseTopKCategoricalAccuracy", "MeanSquaredError", "MeanAbsoluteError",
           "RootMeanSquaredError", "AUC", "Precision", "Recall", "F1Score"]
