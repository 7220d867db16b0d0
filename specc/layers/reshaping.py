"""Layers that move data without arithmetic: Flatten, Reshape, Permute, RepeatVector, padding,
cropping and upsampling.

Flatten/Reshape/Permute/RepeatVector, padding and cropping are NumPy reshapes, transposes and slice copies;
upsampling (nearest and bilinear) runs Numba kernels from `specc.kernels.reshape`.
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import field_validator

from ..spec.errors import show_value
from ..spec.types import MAX_RANK, MAX_SIZE, PositiveInt, choice, int_tuple, limit_text, pad_pairs
from ..workspace import empty
from .base import LayerSpec, ShapeError, fmt_shape, prod, register, require_rank, spatial_axes


def _add(n, k):
    return None if n is None else n + k


@register
class Flatten(LayerSpec):
    type: Literal["Flatten"] = "Flatten"

    def compute_output_shape(self, s):
        return (prod(s),)

    def forward(self, w, x, training, rng):
        return x.reshape(x.shape[0], -1), x.shape

    def backward(self, w, g, shape, dy, need_dx=True):
        return dy.reshape(shape)


@register
class Reshape(LayerSpec):
    """target_shape may hold one -1, inferred from the input size as in Keras."""

    type: Literal["Reshape"] = "Reshape"
    target_shape: list[int]

    @field_validator("target_shape", mode="before")
    @classmethod
    def _check(cls, v):
        ok = isinstance(v, list) and v and all(isinstance(x, int) and not isinstance(x, bool)
                                               and (x >= 1 or x == -1) for x in v)
        if not ok or v.count(-1) > 1:
            raise ValueError("must be a list of positive integers with at most one -1, got " + show_value(v))
        if len(v) > MAX_RANK:
            raise ValueError(f"must have at most {MAX_RANK} axes (the batch axis not counted), got {len(v)}")
        if max(v) > MAX_SIZE:
            raise ValueError(f"each size must be at most {limit_text(MAX_SIZE)}, got {show_value(max(v))}")
        return v

    def compute_output_shape(self, s):
        n = prod(s)
        target = list(self.target_shape)
        known = math.prod(x for x in target if x != -1)
        if -1 in target:
            if n is None:
                target[target.index(-1)] = None
            elif n % known:
                raise ShapeError(f"cannot reshape input {fmt_shape(s)} ({n} values) to {tuple(self.target_shape)}: "
                                 f"{n} is not a multiple of {known}")
            else:
                target[target.index(-1)] = n // known
        elif n is not None and n != known:
            raise ShapeError(f"cannot reshape input {fmt_shape(s)} ({n} values) into {tuple(target)} ({known} values)")
        return tuple(target)

    def forward(self, w, x, training, rng):
        return x.reshape((x.shape[0], *self.target_shape)), x.shape

    def backward(self, w, g, shape, dy, need_dx=True):
        return dy.reshape(shape)


@register
class Permute(LayerSpec):
    """dims: a permutation of 1..rank (axis 0, the batch, never moves)."""

    type: Literal["Permute"] = "Permute"
    dims: list[PositiveInt]

    def compute_output_shape(self, s):
        if sorted(self.dims) != list(range(1, len(s) + 1)):
            raise ShapeError(f"dims {self.dims} must be a permutation of 1..{len(s)} for input {fmt_shape(s)}")
        return tuple(s[d - 1] for d in self.dims)

    def forward(self, w, x, training, rng):
        import numpy as np

        return np.ascontiguousarray(x.transpose((0, *self.dims))), None

    def backward(self, w, g, saved, dy, need_dx=True):
        import numpy as np

        return np.ascontiguousarray(dy.transpose(np.argsort((0, *self.dims))))


@register
class RepeatVector(LayerSpec):
    type: Literal["RepeatVector"] = "RepeatVector"
    n: PositiveInt

    def compute_output_shape(self, s):
        require_rank("RepeatVector", s, ("features",))
        return (self.n, s[0])

    def forward(self, w, x, training, rng):
        import numpy as np

        return np.repeat(x[:, None, :], self.n, axis=1), None

    def backward(self, w, g, saved, dy, need_dx=True):
        return dy.sum(axis=1)


def _pad(x, pairs):
    """Zero-pads axes 1..len(pairs) of x by (before, after) pairs."""
    import numpy as np

    k = len(pairs)
    spatial = tuple(n + a + b for n, (a, b) in zip(x.shape[1: 1 + k], pairs, strict=True))
    out = np.zeros((x.shape[0], *spatial, *x.shape[1 + k:]), x.dtype)
    out[_window(out.shape, pairs)] = x
    return out


def _window(shape, pairs):
    """Slices of an array of `shape` that drop (before, after) items of axes 1..len(pairs): the interior of
    a padded array, the kept part of a cropped one."""
    k = len(pairs)
    return (slice(None), *(slice(a, n - b) for n, (a, b) in zip(shape[1: 1 + k], pairs, strict=True)))


def _unpad(dy, pairs):
    import numpy as np

    return np.ascontiguousarray(dy[_window(dy.shape, pairs)])


class _Padding(LayerSpec):
    def forward(self, w, x, training, rng):
        return _pad(x, self.padding), None

    def backward(self, w, g, saved, dy, need_dx=True):
        return _unpad(dy, self.padding)


class _Cropping(LayerSpec):
    def forward(self, w, x, training, rng):
        return _unpad(x, self.cropping), None

    def backward(self, w, g, saved, dy, need_dx=True):
        return _pad(dy, self.cropping)


@register
class ZeroPadding1D(_Padding):
    type: Literal["ZeroPadding1D"] = "ZeroPadding1D"
    padding: pad_pairs(1, "padding") = ((1, 1),)

    def compute_output_shape(self, s):
        require_rank("ZeroPadding1D", s, spatial_axes(1))
        return (_add(s[0], sum(self.padding[0])), s[1])


@register
class ZeroPadding2D(_Padding):
    type: Literal["ZeroPadding2D"] = "ZeroPadding2D"
    padding: pad_pairs(2, "padding") = ((1, 1), (1, 1))

    def compute_output_shape(self, s):
        require_rank("ZeroPadding2D", s, spatial_axes(2))
        return (_add(s[0], sum(self.padding[0])), _add(s[1], sum(self.padding[1])), s[2])


def _crop(layer, n, pair, axis):
    if n is None:
        return None
    if n - sum(pair) <= 0:
        raise ShapeError(f"{layer} crops {pair[0]}+{pair[1]} from {axis} of size {n}, leaving nothing")
    return n - sum(pair)


@register
class Cropping1D(_Cropping):
    type: Literal["Cropping1D"] = "Cropping1D"
    cropping: pad_pairs(1, "cropping") = ((1, 1),)

    def compute_output_shape(self, s):
        require_rank("Cropping1D", s, spatial_axes(1))
        return (_crop("Cropping1D", s[0], self.cropping[0], "steps"), s[1])


@register
class Cropping2D(_Cropping):
    type: Literal["Cropping2D"] = "Cropping2D"
    cropping: pad_pairs(2, "cropping") = ((0, 0), (0, 0))

    def compute_output_shape(self, s):
        require_rank("Cropping2D", s, spatial_axes(2))
        return (_crop("Cropping2D", s[0], self.cropping[0], "height"),
                _crop("Cropping2D", s[1], self.cropping[1], "width"), s[2])


def _mul(n, k):
    return None if n is None else n * k


@register
class UpSampling1D(LayerSpec):
    type: Literal["UpSampling1D"] = "UpSampling1D"
    size: PositiveInt = 2

    def compute_output_shape(self, s):
        require_rank("UpSampling1D", s, spatial_axes(1))
        return (_mul(s[0], self.size), s[1])

    def forward(self, w, x, training, rng):
        y, saved = _upsample(x[:, :, None, :], self.size, 1, "nearest")
        return y[:, :, 0, :], saved

    def backward(self, w, g, saved, dy, need_dx=True):
        return _upsample_backward(dy[:, :, None, :], saved)[:, :, 0, :]


@register
class UpSampling2D(LayerSpec):
    type: Literal["UpSampling2D"] = "UpSampling2D"
    size: int_tuple(2) = (2, 2)
    interpolation: choice(("nearest", "bilinear"), "interpolation") = "nearest"

    def compute_output_shape(self, s):
        require_rank("UpSampling2D", s, spatial_axes(2))
        return (_mul(s[0], self.size[0]), _mul(s[1], self.size[1]), s[2])

    def forward(self, w, x, training, rng):
        return _upsample(x, self.size[0], self.size[1], self.interpolation)

    def backward(self, w, g, saved, dy, need_dx=True):
        return _upsample_backward(dy, saved)


def _bilinear_taps(n_in: int, factor: int, dtype):
    """Source rows for each of n_in * factor outputs with half-pixel centres, as Keras's
    `ops.image.resize(..., "bilinear")` (torch `interpolate(align_corners=False)`, TF `resize` with
    half_pixel_centers): src = (i + 0.5) / factor - 0.5 clamped at 0; i0 = floor(src),
    i1 = min(i0 + 1, n_in - 1), weight of i1 = src - i0."""
    import numpy as np

    src = np.maximum((np.arange(n_in * factor) + 0.5) * (n_in / (n_in * factor)) - 0.5, 0.0)
    i0 = np.floor(src).astype(np.int64)
    i1 = np.minimum(i0 + 1, n_in - 1)
    return i0, i1, (src - i0).astype(dtype)


def _upsample(x, sh, sw, interpolation):
    """x (batch, h, w, c) -> (batch, h * sh, w * sw, c)."""
    import numpy as np

    from ..kernels import reshape

    x = np.ascontiguousarray(x)
    b, h, w, c = x.shape
    out = empty("out", (b, h * sh, w * sw, c), x.dtype)
    if interpolation == "nearest":
        reshape.nearest_forward(x, sh, sw, out)
        return out, (x.shape, sh, sw, None)
    taps = (*_bilinear_taps(h, sh, x.dtype), *_bilinear_taps(w, sw, x.dtype))
    reshape.bilinear_forward(x, *taps, out)
    return out, (x.shape, sh, sw, taps)


def _upsample_backward(dy, saved):
    import numpy as np

    from ..kernels import reshape

    shape, sh, sw, taps = saved
    dy = np.ascontiguousarray(dy)
    dx = empty("dx", shape, dy.dtype)
    if taps is None:
        reshape.nearest_backward(dy, sh, sw, dx)
    else:
        reshape.bilinear_backward(dy, *taps, dx)
    return dx
