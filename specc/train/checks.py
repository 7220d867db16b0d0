"""Checks on the arrays a user hands to training, evaluation and prediction, made before any of them reaches
a compiled kernel: the kernels index without bounds checks, so a wrong shape there is a crash, not an error.

Each check raises a Keras-style ValueError that names the array (`x`, `validation_data y`, `x['meta']`, ...)
and says what was expected. The training loop (specc.train.fit) and the Python API (specc.api) use these
same functions; nothing here imports Numba.

    x = numeric_array("x", x)                                   # real numbers: bool, integer or float
    check_shape("x", x, (None, 8, 8, 1), layer="sequential")     # expected shape with the batch axis first
    n = check_cardinality({"x": x, "y": y})                     # one number of samples for all arrays
    y = check_targets("y", y, (10,), "sparse_categorical_crossentropy", "dense")
    batch_size = check_positive_int("batch_size", batch_size)
"""

from __future__ import annotations

from typing import Any

import numpy as np

# dtype kinds a model can take: bool, signed and unsigned integers, floats (cast to the model's float32).
_NUMERIC_KINDS = "biuf"
_KIND_NAMES = {"c": "complex numbers", "O": "Python objects", "U": "strings", "S": "bytes", "M": "datetimes",
               "m": "timedeltas", "V": "raw records"}


def shape_str(shape: tuple) -> str:
    """A shape that already includes the batch axis, as Keras prints it: (None, 3), (1, 4)."""
    return "(" + ", ".join("None" if d is None else str(d) for d in shape) + ("," if len(shape) == 1 else "") + ")"


def numeric_array(name: str, value: Any) -> np.ndarray:
    """`value` as a NumPy array of real numbers (no copy when it already is one), or a ValueError."""
    if value is None:
        raise ValueError(f"{name} is None; expected an array of numbers with the samples on the first axis")
    if isinstance(value, np.ndarray):
        array = value
    else:
        try:
            array = np.asarray(value)
        except (ValueError, TypeError) as exc:  # ragged nested lists, objects NumPy cannot hold
            raise ValueError(f"{name} cannot be read as an array ({exc}); expected an array of numbers with the "
                             f"samples on the first axis") from None
    if array.dtype.kind not in _NUMERIC_KINDS:
        what = _KIND_NAMES.get(array.dtype.kind, "values of another kind")
        raise ValueError(f"{name} has dtype {array.dtype} ({what}); expected real numbers: a bool, integer or "
                         f"float array")
    return array


def check_batch_axis(name: str, array: np.ndarray) -> None:
    if array.ndim == 0:
        raise ValueError(f"{name} is a scalar ({array.item()!r}); expected an array with the samples on the first "
                         f"axis")


def shape_compatible(expected: tuple, found: tuple) -> bool:
    """Same rank and equal sizes wherever the expected size is known (the batch axis is not compared)."""
    return len(expected) == len(found) and all(e is None or e == f for e, f in zip(expected[1:], found[1:]))


def check_shape(name: str, array: np.ndarray, expected: tuple, layer: str, index: int = 0) -> None:
    """`expected` includes the batch axis; None matches any size."""
    if not shape_compatible(tuple(expected), array.shape):
        raise ValueError(f"{name}: Input {index} of layer \"{layer}\" is incompatible with the layer: expected "
                         f"shape={shape_str(tuple(expected))}, found shape={shape_str(array.shape)}")


def check_cardinality(arrays: dict[str, np.ndarray]) -> int:
    """The one number of samples of every array (each has a batch axis), or Keras's cardinality error."""
    sizes = {name: len(a) for name, a in arrays.items()}
    if len(set(sizes.values())) > 1:
        listed = ", ".join(f"'{name}' sizes: {n}" for name, n in sizes.items())
        raise ValueError(f"Data cardinality is ambiguous. Make sure all arrays contain the same number of "
                         f"samples. {listed}")
    return next(iter(sizes.values()), 0)


def check_non_empty(n: int, what: str) -> None:
    if n == 0:
        raise ValueError(f"Expected input data to be non-empty: {what} has 0 samples")


def check_positive_int(name: str, value: Any) -> int:
    """A count such as batch_size: an integer >= 1 (bool is not a count)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def check_non_negative_int(name: str, value: Any) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    return int(value)


def _matches(found: tuple, want: tuple) -> bool:
    return len(found) == len(want) and all(w is None or w == f for f, w in zip(found, want))


def _matches_squeezed(found: tuple, want: tuple) -> bool:
    """found is want, or want with a trailing axis of size 1 added or removed (Keras squeezes it)."""
    return _matches(found, want) or _matches(found, want + (1,)) or (want[-1:] == (1,) and _matches(found, want[:-1]))


def check_targets(name: str, y: np.ndarray, output_shape: tuple, loss: str, output: str) -> np.ndarray:
    """y (batch axis first, numeric) against an output of `output_shape` (no batch axis) under `loss` (a
    canonical loss name). Returns y, with integral-valued float labels of a sparse loss cast to int64."""
    output_shape = tuple(output_shape)
    shown = shape_str((None, *output_shape))
    if loss == "sparse_categorical_crossentropy":
        classes = output_shape[-1]
        labels_shape = output_shape[:-1]
        if not (_matches(y.shape[1:], labels_shape) or _matches(y.shape[1:], labels_shape + (1,))):
            raise ValueError(f"{name}: sparse_categorical_crossentropy takes class indices of shape "
                             f"{shape_str((None, *labels_shape))} for output '{output}' of shape {shown}, but {name} "
                             f"has shape {shape_str(y.shape)}"
                             + ("; for one-hot targets use categorical_crossentropy" if y.shape[1:] == output_shape
                                else ""))
        if y.dtype.kind == "f":
            bad = ~(np.isfinite(y) & (np.trunc(y) == y))
            if bad.any():
                at = int(np.argmax(bad.reshape(-1)))
                raise ValueError(f"{name}: sparse_categorical_crossentropy takes integer class indices, but {name} "
                                 f"has the value {y.reshape(-1)[at].item()!r} (flat position {at}); round or cast the "
                                 f"labels to integers, or use a regression loss such as mean_squared_error")
        if y.size:
            lo, hi = y.min(), y.max()
            if lo < 0 or hi >= classes:
                value = lo if lo < 0 else hi
                hint = "; 0/1 labels for one sigmoid unit take binary_crossentropy" if classes == 1 else ""
                raise ValueError(f"{name}: received a label value of {value.item()!r} which is outside the valid "
                                 f"range of [0, {classes}) for output '{output}' ({classes} unit"
                                 f"{'' if classes == 1 else 's'}): labels must be in [0, {classes}), got values in "
                                 f"[{lo.item()!r}, {hi.item()!r}]{hint}")
        return y if y.dtype == np.int64 else y.astype(np.int64)
    if loss == "categorical_crossentropy":
        if not _matches(y.shape[1:], output_shape):
            hint = ("; integer class labels take sparse_categorical_crossentropy"
                    if y.dtype.kind in "iu" and y.shape[1:] in (output_shape[:-1], output_shape[:-1] + (1,)) else "")
            raise ValueError(f"{name}: categorical_crossentropy takes one-hot targets of the output's shape: output "
                             f"'{output}' has shape {shown}, {name} has shape {shape_str(y.shape)}{hint}")
        return y
    if not _matches_squeezed(y.shape[1:], output_shape):
        raise ValueError(f"{name}: {loss} needs targets of the output's shape: output '{output}' has shape {shown}, "
                         f"{name} has shape {shape_str(y.shape)}")
    return y


def check_sample_weight(name: str, value: Any, n: int) -> np.ndarray:
    """Keras's `sample_weight`: one finite, non-negative number per sample (or per sample and time step: a
    2-d array (samples, steps) for sequence outputs), as float64."""
    w = numeric_array(name, value)
    if w.ndim == 0 or w.ndim > 2:
        raise ValueError(f"{name} must have shape ({n},) (one weight per sample) or (samples, steps) for sequence "
                         f"outputs; got shape {shape_str(w.shape)}")
    if len(w) != n:
        raise ValueError(f"Data cardinality is ambiguous. Make sure all arrays contain the same number of samples. "
                         f"'x' sizes: {n}, '{name}' sizes: {len(w)}")
    w = w.astype(np.float64)
    if not np.isfinite(w).all() or (w < 0).any():
        raise ValueError(f"{name} must hold finite, non-negative weights; it has "
                         f"{'NaN or infinite values' if not np.isfinite(w).all() else 'negative values'}")
    return w
