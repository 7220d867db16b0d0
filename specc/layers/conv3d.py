"""Volumes, channels_last (depth, height, width, channels): Conv3D, MaxPooling3D, AveragePooling3D,
GlobalMaxPooling3D and GlobalAveragePooling3D, with Keras 3's arguments and output arithmetic.

The runtime is NumPy: a 3-D window is a sum over its kd * kh * kw offsets, each a strided view of the
(padded) input multiplied by that offset's (in, out) slice of the kernel (a BLAS product), and backward
adds each offset's share back. It is meant for the small volumes of video and medical models that the
2-D kernels' im2col does not cover, not tuned like them.
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import model_validator

from ..spec.types import Bool, PositiveInt, int_tuple
from .activations import ActivationName
from .base import LayerSpec, ShapeError, WeightSpec, fmt_shape, register, require_rank
from .conv import Padding, conv_length, pad_before
from .initializers import Initializer

AXES = ("depth", "height", "width", "channels")


def _pads(in_spatial, out_spatial, kernel, strides, dilation, padding):
    """[(before, after)] per spatial axis, TF/Keras's split for 'same' (the odd element after)."""
    pads = []
    for n, o, k, s, d in zip(in_spatial, out_spatial, kernel, strides, dilation, strict=True):
        before = pad_before(n, o, k, s, d, padding)
        total = max((o - 1) * s + d * (k - 1) + 1 - n, 0) if padding == "same" else 0
        pads.append((before, total - before))
    return pads


def _index(offset, out_spatial, strides, dilation):
    """The slices of a padded (N, D, H, W, C) array that kernel offset (a, b, c) sees, one per output."""
    return (slice(None), *(slice(a * d, a * d + (o - 1) * s + 1, s)
                           for a, o, s, d in zip(offset, out_spatial, strides, dilation, strict=True)), slice(None))


def _views(xp, out_spatial, kernel, strides, dilation):
    """((a, b, c), view) for every kernel offset: view (N, Do, Ho, Wo, C) of the padded input xp that the
    offset's kernel slice sees."""
    import itertools

    for offset in itertools.product(*(range(k) for k in kernel)):
        yield offset, xp[_index(offset, out_spatial, strides, dilation)]


def _crop(xp, pads, shape):
    """The padded array's part that is the input, (N, D, H, W, C) contiguous."""
    import numpy as np

    return np.ascontiguousarray(xp[(slice(None), *(slice(b, b + n) for (b, _), n in zip(pads, shape[1:-1])),
                                    slice(None))])


class _Volume(LayerSpec):
    """A window sliding over volumes: subclasses define the window's size, strides, dilation, padding."""

    def _window(self):
        raise NotImplementedError  # (kernel, strides, dilation)

    def _channels(self, s):
        require_rank(self.type, s, AXES)
        if s[-1] is None:
            raise ShapeError(f"the channel axis of its input {fmt_shape(s)} must be known")
        return s[-1]

    def _spatial(self, s):
        kernel, strides, dilation = self._window()
        try:
            return tuple(conv_length(n, k, st, d, self.padding, ax)
                         for n, k, st, d, ax in zip(s[:-1], kernel, strides, dilation, AXES))
        except ShapeError as e:
            raise ShapeError(f"the window {list(kernel)} does not fit its input {fmt_shape(s)}: {e}; use padding "
                             f"'same', a smaller window or a larger input") from None

    def _geometry(self, x):
        kernel, strides, dilation = self._window()
        out = self._spatial(x.shape[1:])
        return out, kernel, strides, dilation, _pads(x.shape[1:-1], out, kernel, strides, dilation, self.padding)


@register
class Conv3D(_Volume):
    """y = activation(sum over the window of x * kernel + bias); kernel (kd, kh, kw, in, filters)."""

    type: Literal["Conv3D"] = "Conv3D"
    filters: PositiveInt
    kernel_size: int_tuple(3)
    strides: int_tuple(3) = (1, 1, 1)
    padding: Padding = "valid"
    dilation_rate: int_tuple(3) = (1, 1, 1)
    activation: ActivationName = "linear"
    use_bias: Bool = True
    kernel_initializer: Initializer = "glorot_uniform"
    bias_initializer: Initializer = "zeros"

    @model_validator(mode="after")
    def _strides_or_dilation(self):
        if any(st > 1 for st in self.strides) and any(d > 1 for d in self.dilation_rate):
            raise ValueError("strides > 1 cannot be combined with dilation_rate > 1 (Keras rejects it too)")
        return self

    def _window(self):
        return self.kernel_size, self.strides, self.dilation_rate

    def compute_output_shape(self, s):
        self._channels(s)
        return self._spatial(s) + (self.filters,)

    def weight_specs(self, s):
        w = [WeightSpec("kernel", tuple(self.kernel_size) + (self._channels(s), self.filters), self.kernel_initializer)]
        if self.use_bias:
            w.append(WeightSpec("bias", (self.filters,), self.bias_initializer))
        return w

    def macs(self, s, out):
        return math.prod(out[:-1]) * math.prod(self.kernel_size) * s[-1] * self.filters

    def output_activation(self):
        return self.activation

    def forward(self, w, x, training, rng):
        import numpy as np

        out, kernel, strides, dilation, pads = self._geometry(x)
        xp = np.pad(x, [(0, 0), *pads, (0, 0)])
        y = np.zeros((x.shape[0], *out, self.filters), x.dtype)  # (N, Do, Ho, Wo, filters)
        for offset, view in _views(xp, out, kernel, strides, dilation):
            y += view @ w[0][offset]
        if self.use_bias:
            y += w[1]
        return y, (xp, x.shape, out, kernel, strides, dilation, pads)

    def backward(self, w, g, saved, dy, need_dx=True):
        import numpy as np

        xp, shape, out, kernel, strides, dilation, pads = saved
        dy = np.asarray(dy, xp.dtype)
        dy2 = dy.reshape(-1, self.filters)
        dxp = np.zeros_like(xp) if need_dx else None
        for offset, view in _views(xp, out, kernel, strides, dilation):
            g[0][offset] = view.reshape(-1, shape[-1]).T @ dy2
            if need_dx:
                dxp[_index(offset, out, strides, dilation)] += dy @ w[0][offset].T
        if self.use_bias:
            g[1][...] = dy2.sum(axis=0)
        return _crop(dxp, pads, shape) if need_dx else None


class _Pool3D(_Volume):
    """strides default to pool_size, as in Keras."""

    def _window(self):
        return self.pool_size, self.strides or self.pool_size, (1, 1, 1)

    def compute_output_shape(self, s):
        return self._spatial(s) + (self._channels(s),)


@register
class MaxPooling3D(_Pool3D):
    """The maximum of each window; padded positions never win. Backward sends each window's gradient to
    the first position that holds its maximum."""

    type: Literal["MaxPooling3D"] = "MaxPooling3D"
    pool_size: int_tuple(3) = (2, 2, 2)
    strides: int_tuple(3) | None = None
    padding: Padding = "valid"

    def forward(self, w, x, training, rng):
        import numpy as np

        out, kernel, strides, dilation, pads = self._geometry(x)
        xp = np.pad(x, [(0, 0), *pads, (0, 0)], constant_values=-np.inf)
        y = np.full((x.shape[0], *out, x.shape[-1]), -np.inf, x.dtype)
        for _, view in _views(xp, out, kernel, strides, dilation):
            np.maximum(y, view, out=y)
        return y, (xp, y, x.shape, out, kernel, strides, pads)

    def backward(self, w, g, saved, dy, need_dx=True):
        import numpy as np

        xp, y, shape, out, kernel, strides, pads = saved
        dxp = np.zeros_like(xp)
        taken = np.zeros(y.shape, bool)
        for offset, view in _views(xp, out, kernel, strides, (1, 1, 1)):
            wins = (view == y) & ~taken
            taken |= wins
            dxp[_index(offset, out, strides, (1, 1, 1))] += np.where(wins, dy, 0)
        return _crop(dxp, pads, shape)


@register
class AveragePooling3D(_Pool3D):
    """The mean of each window over the positions inside the input (padding is not counted, as in Keras)."""

    type: Literal["AveragePooling3D"] = "AveragePooling3D"
    pool_size: int_tuple(3)  # required in Keras 3
    strides: int_tuple(3) | None = None
    padding: Padding = "valid"

    def _counts(self, x, geometry):
        import numpy as np

        out, kernel, strides, dilation, pads = geometry
        ones = np.pad(np.ones((1, *x.shape[1:-1], 1), x.dtype), [(0, 0), *pads, (0, 0)])
        count = np.zeros((1, *out, 1), x.dtype)
        for _, view in _views(ones, out, kernel, strides, dilation):
            count += view
        return count  # (1, Do, Ho, Wo, 1)

    def forward(self, w, x, training, rng):
        import numpy as np

        geometry = self._geometry(x)
        out, kernel, strides, dilation, pads = geometry
        xp = np.pad(x, [(0, 0), *pads, (0, 0)])
        total = np.zeros((x.shape[0], *out, x.shape[-1]), x.dtype)
        for _, view in _views(xp, out, kernel, strides, dilation):
            total += view
        count = self._counts(x, geometry)
        return total / count, (xp.shape, count, x.shape, geometry)

    def backward(self, w, g, saved, dy, need_dx=True):
        import numpy as np

        padded_shape, count, shape, (out, kernel, strides, dilation, pads) = saved
        dxp = np.zeros(padded_shape, dy.dtype)
        share = dy / count
        for offset, _ in _views(dxp, out, kernel, strides, dilation):
            dxp[_index(offset, out, strides, dilation)] += share
        return _crop(dxp, pads, shape)


class _GlobalPool3D(LayerSpec):
    keepdims: Bool = False

    def compute_output_shape(self, s):
        require_rank(self.type, s, AXES)
        return (1, 1, 1, s[-1]) if self.keepdims else (s[-1],)

    def _shape(self, y, x):
        return y.reshape(x.shape[0], *((1, 1, 1) if self.keepdims else ()), x.shape[-1])


@register
class GlobalAveragePooling3D(_GlobalPool3D):
    type: Literal["GlobalAveragePooling3D"] = "GlobalAveragePooling3D"

    def forward(self, w, x, training, rng):
        return self._shape(x.mean(axis=(1, 2, 3)), x), x.shape

    def backward(self, w, g, shape, dy, need_dx=True):
        import numpy as np

        n = shape[1] * shape[2] * shape[3]
        d = dy.reshape(shape[0], 1, 1, 1, shape[-1]) / dy.dtype.type(n)
        return np.ascontiguousarray(np.broadcast_to(d, shape))


@register
class GlobalMaxPooling3D(_GlobalPool3D):
    type: Literal["GlobalMaxPooling3D"] = "GlobalMaxPooling3D"

    def forward(self, w, x, training, rng):
        import numpy as np

        flat = x.reshape(x.shape[0], -1, x.shape[-1])  # (N, D*H*W, C)
        where = flat.argmax(axis=1)  # the first maximum of each (sample, channel)
        y = np.take_along_axis(flat, where[:, None, :], axis=1)[:, 0]
        return self._shape(y, x), (where, x.shape)

    def backward(self, w, g, saved, dy, need_dx=True):
        import numpy as np

        where, shape = saved
        dx = np.zeros((shape[0], math.prod(shape[1:4]), shape[-1]), dy.dtype)
        np.put_along_axis(dx, where[:, None, :], dy.reshape(shape[0], 1, shape[-1]), axis=1)
        return dx.reshape(shape)
