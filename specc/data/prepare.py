"""From a spec's `data` section to train/test arrays that fit the model, checked before the first step.

Data/model mismatches (feature shape vs the model input, classes vs output units, labels out of range for
a sparse loss, NaN or inf values) are reported as `DataError`s carrying the spec path to point at.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

import numpy as np

from ..layers.base import fmt_shape
from ..spec.validate import Spec
from .sources import Arrays, DataError, builtin, from_file, synthetic_inputs

CLASS_LOSSES = ("sparse_categorical_crossentropy", "categorical_crossentropy", "binary_crossentropy", "hinge")


@dataclass
class Dataset:
    x_train: list[np.ndarray]  # one array per model input, (samples, *input_shape)
    y_train: list[np.ndarray]  # one array per model output
    x_test: list[np.ndarray]
    y_test: list[np.ndarray]
    name: str
    classification: bool
    normalization: dict = field(default_factory=dict)  # {"mean": [...], "std": [...]} when fitted


def losses_by_output(spec: Spec) -> list[str]:
    outputs = spec.graph.outputs
    loss = spec.compile.loss if spec.compile else "mean_squared_error"
    if isinstance(loss, dict):
        return [loss.get(o, "mean_squared_error") for o in outputs]
    return [loss] * len(outputs)


def load(spec: Spec) -> Dataset:
    """Load, reshape, check, split and normalise the spec's data. Raises DataError."""
    data = spec.data
    if data is None:
        raise DataError((), "the spec has no `data` section; add e.g. `data: {source: digits}` to train it")
    graph = spec.graph
    input_shapes = [n.output_shape for n in graph.inputs]
    output_shapes = [graph.node(o).output_shape for o in graph.outputs]
    losses = losses_by_output(spec)
    rng = np.random.default_rng(spec.seed)

    if isinstance(data.source, str) and data.source == "synthetic":
        seed = spec.seed or 0
        try:
            xs = [synthetic_inputs(shape, data.samples, seed + k) for k, shape in enumerate(input_shapes)]
        except (MemoryError, ValueError):  # ValueError: NumPy's "array is too big" before trying
            size = sum(math.prod(d or 8 for d in shape) for shape in input_shapes) * data.samples * 4
            raise DataError(("data", "samples"), f"{data.samples:,} synthetic samples of the model's input size "
                                                 f"need {size / 2**30:,.1f} GiB, more than this machine can "
                                                 f"allocate; lower data.samples") from None
        ys = []
        for k, (shape, loss) in enumerate(zip(output_shapes, losses)):
            if None in shape:
                raise DataError(("data", "source"), f"synthetic targets need every output size known from the spec, "
                                                    f"but output '{graph.outputs[k]}' has shape "
                                                    f"{fmt_shape(shape)}; give model inputs fixed sizes")
            classes = data.classes or (shape[-1] if loss in CLASS_LOSSES and shape[-1] > 1 else None)
            if loss in ("binary_crossentropy", "hinge"):
                classes = 2
            elif data.classes and loss in CLASS_LOSSES and data.classes > shape[-1]:
                raise DataError(("data", "classes"), f"{data.classes:,} classes do not fit output "
                                                     f"'{graph.outputs[k]}' of {shape[-1]} units; set data.classes "
                                                     f"to at most {shape[-1]}")
            try:
                ys.append(_teacher_labels(xs[0], shape, loss, classes, seed + 100 + k))
            except (MemoryError, ValueError):  # ValueError: NumPy's "array is too big" before trying
                raise DataError(("data", "classes") if data.classes else ("data", "samples"),
                                "the synthetic targets need more memory than this machine can allocate; lower "
                                "data.samples or data.classes") from None
        name, classification = "synthetic", any(loss in CLASS_LOSSES for loss in losses)
    else:
        if isinstance(data.source, str):
            arrays = builtin(data.source)
        else:
            arrays = from_file(data.source, os.path.dirname(os.path.abspath(spec.file)))
        if len(input_shapes) != 1 or len(output_shapes) != 1:
            raise DataError(("data", "source"), f"{arrays.name} provides one input array and one target, but the "
                                                f"model has {len(input_shapes)} inputs and {len(output_shapes)} "
                                                f"outputs; use `source: synthetic` or an .npz per input/output")
        xs, ys = [_fit_input(arrays, input_shapes[0], spec)], [arrays.y]
        name, classification = arrays.name, arrays.classification

    for k, x in enumerate(xs):
        _check_finite(x, f"{name} inputs" if len(xs) == 1 else f"{name} input {k}")
    for k, (y, shape, loss) in enumerate(zip(ys, output_shapes, losses)):
        ys[k] = _check_targets(y, shape, loss, name, spec, graph.outputs[k])

    n = len(xs[0])
    test_idx, train_idx = _split(n, data.test_split, ys[0] if classification and ys[0].ndim == 1 else None, rng)
    _check_split_sizes(n, len(train_idx), data.test_split, spec.fit.validation_split if spec.fit else 0.0, name)
    ds = Dataset([x[train_idx] for x in xs], [y[train_idx] for y in ys], [x[test_idx] for x in xs],
                 [y[test_idx] for y in ys], name, classification)
    if data.normalize:
        stats = []
        for k, x in enumerate(ds.x_train):
            mean = x.mean(axis=0)
            std = x.std(axis=0)
            std[std == 0] = 1.0  # constant features (digits' blank border pixels) stay as they are
            ds.x_train[k] = ((x - mean) / std).astype(np.float32)
            ds.x_test[k] = ((ds.x_test[k] - mean) / std).astype(np.float32)
            stats.append({"mean": mean.tolist(), "std": std.tolist()})
        ds.normalization = {"inputs": stats}
    return ds


def validation_cut(n: int, fraction: float) -> int:
    """How many of `n` training samples stay for training when `fraction` is held out for validation:
    Keras's rule (the last part, before shuffling), which the fit loop applies."""
    return int(n * (1 - fraction))


def _check_split_sizes(n: int, n_train: int, test_split: float, validation_split: float, name: str) -> None:
    """Each split the spec asks for keeps at least one sample on each side, so no epoch runs on nothing
    (and no normalisation is fitted on nothing)."""
    if n_train == 0:
        raise DataError(("data", "test_split"), f"test_split {test_split} holds out all {n} samples of {name} for "
                                                f"testing and leaves none to train on; use a smaller fraction, "
                                                f"e.g. 0.2")
    if validation_split > 0:
        kept = validation_cut(n_train, validation_split)
        if kept == 0:
            raise DataError(("fit", "validation_split"),
                            f"validation_split {validation_split} holds out all {n_train} training samples of {name} "
                            f"for validation and leaves none to train on; use a smaller fraction, e.g. 0.1")
        if kept == n_train:
            raise DataError(("fit", "validation_split"),
                            f"validation_split {validation_split} of {n_train} training samples of {name} is less "
                            f"than one sample, so there would be no validation data; use a larger fraction or 0")


def _teacher_labels(x, shape, loss, classes, seed):
    """Learnable targets: a random linear teacher applied to the (first) input."""
    rng = np.random.default_rng(seed)
    flat = x.reshape(len(x), -1)
    if classes:
        teacher = rng.standard_normal((flat.shape[1], classes)).astype(np.float32)
        labels = np.argmax(flat @ teacher, axis=1)
        if loss == "categorical_crossentropy":
            return np.eye(classes, dtype=np.float32)[labels]
        if loss in ("binary_crossentropy", "hinge"):
            return labels.astype(np.float32).reshape(len(x), *[1] * len(shape))
        return labels.astype(np.int64)
    out = int(np.prod(shape))
    teacher = rng.standard_normal((flat.shape[1], out)).astype(np.float32) / np.sqrt(flat.shape[1])
    return (flat @ teacher).reshape(len(x), *shape).astype(np.float32)


def _fit_input(arrays: Arrays, shape: tuple, spec: Spec) -> np.ndarray:
    """Reshape features to the model's input when the sizes agree (digits' 64 values -> 8x8x1)."""
    x = arrays.x
    want = [d for d in shape]
    if list(x.shape[1:]) == want or (None in want and len(want) == x.ndim - 1):
        return x
    if None not in want and int(np.prod(want)) == int(np.prod(x.shape[1:])):
        return x.reshape(len(x), *want)
    raise DataError(("model", "input") if spec.graph.kind == "sequential" else ("model", "inputs"),
                    f"the model input {tuple(want)} does not fit the data: {arrays.name} has samples of shape "
                    f"{tuple(x.shape[1:])} ({int(np.prod(x.shape[1:]))} values)")


def _check_finite(a: np.ndarray, what: str) -> None:
    if np.issubdtype(a.dtype, np.floating):
        bad = ~np.isfinite(a)
        if bad.any():
            first = np.argwhere(bad)[0]
            raise DataError(("data",), f"{what} contain {int(bad.sum())} NaN or infinite values "
                                       f"(first at sample {first[0]}); clean or impute them first")


def _check_targets(y: np.ndarray, shape: tuple, loss: str, name: str, spec: Spec, output: str) -> np.ndarray:
    units = shape[-1]
    out_path = ("compile", "loss")
    _check_finite(np.asarray(y, np.float64) if y.dtype != np.float32 else y, f"{name} targets")
    if loss == "sparse_categorical_crossentropy":
        if not np.issubdtype(y.dtype, np.integer):
            raise DataError(out_path, f"sparse_categorical_crossentropy needs integer class labels, but {name} "
                                      f"has {y.dtype} targets; use mean_squared_error for regression")
        lo, hi = int(y.min()), int(y.max())
        if lo < 0 or hi >= units:
            raise DataError(out_path, f"{name} has labels {lo}..{hi}, but output '{output}' has {units} units "
                                      f"(labels must be 0..{units - 1}); set its units to {hi + 1}")
        return y.astype(np.int64)
    if loss == "categorical_crossentropy":
        if y.ndim == 1 and np.issubdtype(y.dtype, np.integer):
            raise DataError(out_path, f"categorical_crossentropy needs one-hot targets, but {name} has integer "
                                      f"labels; use sparse_categorical_crossentropy")
        if y.shape[-1] != units:
            raise DataError(out_path, f"{name} has {y.shape[-1]}-wide one-hot targets, but output '{output}' has "
                                      f"{units} units")
        return y.astype(np.float32)
    if loss in ("binary_crossentropy", "hinge"):
        if np.issubdtype(y.dtype, np.integer) and y.ndim == 1:
            if units != 1:
                raise DataError(out_path, f"{loss} with integer labels needs one output unit, but output "
                                          f"'{output}' has {units}; use sparse_categorical_crossentropy "
                                          f"for {units} classes")
            if y.min() < 0 or y.max() > 1:
                raise DataError(out_path, f"{loss} needs 0/1 labels, but {name} has labels "
                                          f"{int(y.min())}..{int(y.max())}")
            y = y.reshape(-1, 1)
        return y.astype(np.float32)
    y = y.astype(np.float32)
    if y.ndim == 1:
        y = y.reshape(-1, 1)
    if y.shape[1:] != tuple(shape):
        raise DataError(out_path, f"{name} has targets of shape {tuple(y.shape[1:])}, but output '{output}' "
                                  f"produces {tuple(shape)}")
    return y


def _split(n: int, fraction: float, labels: np.ndarray | None, rng) -> tuple[np.ndarray, np.ndarray]:
    """(test indices, train indices); stratified by label when labels are given."""
    if fraction <= 0:
        return np.array([], np.int64), rng.permutation(n)
    if labels is None:
        perm = rng.permutation(n)
        k = int(round(n * fraction))
        return np.sort(perm[:k]), np.sort(perm[k:])
    # sorted(set(...)) and a mask rather than np.unique / np.setdiff1d: the same classes in the same order
    # (so the same split), but NumPy 2's unique imports numpy.ma on first use, slowing `specc train`'s start.
    test = []
    for c in sorted(set(labels.tolist())):
        idx = rng.permutation(np.flatnonzero(labels == c))
        test.extend(idx[: int(round(len(idx) * fraction))])
    test = np.sort(np.asarray(test, np.int64))
    in_train = np.ones(n, bool)
    in_train[test] = False
    return test, np.flatnonzero(in_train)
