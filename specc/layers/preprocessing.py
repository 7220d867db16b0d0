"""Rescaling and Normalization: fixed affine maps of the input, with Keras 3's arguments.

Both have no trainable weights; their gradient to the input is a constant scale, so they can sit inside a
model that trains (Keras applies them in the model too when they are layers of it).
"""

from __future__ import annotations

from typing import Literal

from pydantic import model_validator

from ..spec.types import Bool, Number, StrictInt
from .base import LayerSpec, ShapeError, WeightSpec, fmt_shape, register

# Keras's backend.epsilon(): the floor of sqrt(variance), so a constant feature does not divide by zero.
EPSILON = 1e-7


def _trailing_broadcast(layer_type: str, what: str, values, s) -> None:
    """A list of values broadcasts against the trailing axis of a sample, as NumPy would."""
    if isinstance(values, list) and len(values) not in (1, s[-1] if s else 1) and s and s[-1] is not None:
        raise ShapeError(f"{what} has {len(values)} values, which does not broadcast against the last axis of "
                         f"input {fmt_shape(s)} (size {s[-1]}); give 1 or {s[-1]} values")


@register
class Rescaling(LayerSpec):
    """y = x * scale + offset; scale and offset are numbers or lists broadcast against the last axis (one
    value per channel)."""

    type: Literal["Rescaling"] = "Rescaling"
    scale: Number | list[Number]
    offset: Number | list[Number] = 0.0

    def compute_output_shape(self, s):
        _trailing_broadcast(self.type, "scale", self.scale, s)
        _trailing_broadcast(self.type, "offset", self.offset, s)
        return s

    def forward(self, w, x, training, rng):
        import numpy as np

        scale = np.asarray(self.scale, x.dtype)
        return x * scale + np.asarray(self.offset, x.dtype), (scale, x.shape)

    def backward(self, w, g, saved, dy, need_dx=True):
        import numpy as np

        scale, shape = saved
        return np.broadcast_to(dy * scale, shape).astype(dy.dtype, copy=False) if need_dx else None


@register
class Normalization(LayerSpec):
    """y = (x - mean) / max(sqrt(variance), 1e-7) per position of the kept `axis` (with `invert`:
    x * max(sqrt(variance), 1e-7) + mean). Given `mean` and `variance` (numbers, or lists over the last
    kept axis) the layer has no weights, as in Keras; without them it holds non-trainable `mean`,
    `variance` (zeros, ones) and `count` weights that set_weights or a Keras import fills."""

    type: Literal["Normalization"] = "Normalization"
    axis: StrictInt | list[StrictInt] | None = -1
    mean: Number | list[Number] | None = None
    variance: Number | list[Number] | None = None
    invert: Bool = False

    @model_validator(mode="after")
    def _both_or_neither(self):
        if (self.mean is None) != (self.variance is None):
            raise ValueError("give both `mean` and `variance`, or neither (Keras's rule)")
        if isinstance(self.mean, list) != isinstance(self.variance, list) or (
                isinstance(self.mean, list) and len(self.mean) != len(self.variance)):
            raise ValueError(f"`mean` and `variance` must have the same shape, got {self.mean!r} and "
                             f"{self.variance!r}")
        if isinstance(self.variance, list) and any(v < 0 for v in self.variance) or (
                isinstance(self.variance, float) and self.variance < 0):
            raise ValueError(f"`variance` must not be negative, got {self.variance!r}")
        return self

    def _kept(self, s):
        """The kept axes as sample axes (0-based, batch excluded), sorted, and their sizes."""
        rank = len(s) + 1
        axes = [] if self.axis is None else [self.axis] if isinstance(self.axis, int) else self.axis
        kept = []
        for a in axes:
            k = a + rank if a < 0 else a
            if not 1 <= k < rank:
                raise ShapeError(f"axis {a} is out of range for input {fmt_shape(s)} (the batch axis 0 cannot be "
                                 f"kept)")
            if s[k - 1] is None:
                raise ShapeError(f"the kept axis {a} of input {fmt_shape(s)} must have a known size")
            kept.append(k - 1)
        kept = sorted(set(kept))
        if isinstance(self.mean, list) and len(self.mean) > 1:
            if not kept or len(self.mean) != s[kept[-1]]:
                size = s[kept[-1]] if kept else "no kept axis"
                raise ShapeError(f"mean and variance have {len(self.mean)} values but the last kept axis has size "
                                 f"{size}")
        return kept

    def compute_output_shape(self, s):
        self._kept(s)
        return s

    def weight_specs(self, s):
        if self.mean is not None:
            return []
        shape = tuple(s[a] for a in self._kept(s))
        return [WeightSpec("mean", shape, "zeros", trainable=False),
                WeightSpec("variance", shape, "ones", trainable=False),
                WeightSpec("count", (), "zeros", trainable=False)]

    def adapted(self, x) -> list:
        """Keras's adapt(): the mean, variance (biased) and count of `x` (samples, ...) over every axis but
        the kept ones, accumulated in float64; what this layer's three weights take (weight_specs order)."""
        import numpy as np

        kept = self._kept(x.shape[1:])
        reduce = tuple(a for a in range(x.ndim) if a - 1 not in kept)
        x64 = np.asarray(x, np.float64)
        mean = x64.mean(axis=reduce)
        var = np.mean(np.square(x64 - x64.mean(axis=reduce, keepdims=True)), axis=reduce)
        count = np.prod([x.shape[a] for a in reduce], dtype=np.int64)
        return [mean, var, np.asarray(count, np.float64)]

    def _stats(self, w, x):
        """The mean and the divisor, shaped to broadcast against x (batch, ...)."""
        import numpy as np

        kept = self._kept(x.shape[1:])
        kept_shape = tuple(x.shape[a + 1] for a in kept)
        if self.mean is None:
            mean, var = w[0], w[1]  # kept_shape
        else:  # a number or a list over the last kept axis
            mean = np.broadcast_to(np.asarray(self.mean, np.float64), kept_shape)
            var = np.broadcast_to(np.asarray(self.variance, np.float64), kept_shape)
        shape = [1] * x.ndim
        for a in kept:
            shape[a + 1] = x.shape[a + 1]
        mean = np.asarray(mean, x.dtype).reshape(shape)
        return mean, np.maximum(np.sqrt(np.asarray(var, x.dtype)), x.dtype.type(EPSILON)).reshape(shape)

    def forward(self, w, x, training, rng):
        mean, div = self._stats(w, x)
        y = x * div + mean if self.invert else (x - mean) / div
        return y.astype(x.dtype, copy=False), div

    def backward(self, w, g, div, dy, need_dx=True):
        return (dy * div if self.invert else dy / div).astype(dy.dtype, copy=False) if need_dx else None
