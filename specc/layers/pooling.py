"""Max/average pooling over windows, and global pooling over every spatial position (channels_last)."""

from __future__ import annotations

from typing import ClassVar, Literal

from ..spec.types import Bool, choice, int_tuple
from ..workspace import empty
from .base import LayerSpec, ShapeError, fmt_shape, register, require_rank, spatial_axes
from .conv import as_image, conv_length, geometry

Padding = choice(("valid", "same"), "padding")


class _Pool(LayerSpec):
    """strides default to pool_size, as in Keras."""

    runs_own_threads: ClassVar[bool] = True

    def compute_output_shape(self, s):
        rank = len(self.pool_size)
        require_rank(self.type, s, spatial_axes(rank))
        strides = self.strides or self.pool_size
        axes = ("steps",) if rank == 1 else ("height", "width")
        try:
            return tuple(conv_length(n, k, st, 1, self.padding, ax)
                         for n, k, st, ax in zip(s[:-1], self.pool_size, strides, axes)) + (s[-1],)
        except ShapeError as e:
            raise ShapeError(f"pool_size {list(self.pool_size)} does not fit its input {fmt_shape(s)}: {e}; "
                             f"use padding 'same' or a smaller pool_size") from None

    _max: ClassVar[bool] = False  # max or average

    def window(self, sample_shape):
        """(output spatial shape, window geometry for kernels.pooling) for samples of `sample_shape`."""
        out_spatial = self.compute_output_shape(sample_shape)[:-1]
        return out_spatial, geometry(sample_shape[:-1], out_spatial, self.pool_size, self.strides or self.pool_size,
                                     (1,) * len(self.pool_size), self.padding)

    # 1-D pooling runs as 2-D over an image of height 1 (kernels.pooling).
    def forward(self, w, x, training, rng):
        import numpy as np

        from ..kernels import pooling

        x4 = as_image(x)  # (N, H, W, C)
        out_spatial, g = self.window(x.shape[1:])
        n, ho, wo, c = (x4.shape[0],) + ((1,) + out_spatial)[-2:] + (x4.shape[3],)
        out = empty("out", (n, ho, wo, c), x4.dtype)
        if self._max:
            argmax = empty("argmax", (n, ho, wo, c), np.int32)  # winner's index ih*W + iw, for backward
            pooling.max_forward(x4, g, out, argmax)
        else:
            argmax = None
            pooling.avg_forward(x4, g, out)
        return out.reshape((n,) + out_spatial + (c,)), (argmax, g, x4.shape, x.shape, out.shape)

    def backward(self, w, g, saved, dy, need_dx=True):
        return _pool_backward(saved, dy)


@register
class MaxPooling1D(_Pool):
    type: Literal["MaxPooling1D"] = "MaxPooling1D"
    _max: ClassVar[bool] = True
    pool_size: int_tuple(1) = (2,)
    strides: int_tuple(1) | None = None
    padding: Padding = "valid"


@register
class MaxPooling2D(_Pool):
    type: Literal["MaxPooling2D"] = "MaxPooling2D"
    _max: ClassVar[bool] = True
    pool_size: int_tuple(2) = (2, 2)
    strides: int_tuple(2) | None = None
    padding: Padding = "valid"


@register
class AveragePooling1D(_Pool):
    type: Literal["AveragePooling1D"] = "AveragePooling1D"
    pool_size: int_tuple(1)  # required in Keras 3, unlike MaxPooling
    strides: int_tuple(1) | None = None
    padding: Padding = "valid"


@register
class AveragePooling2D(_Pool):
    type: Literal["AveragePooling2D"] = "AveragePooling2D"
    pool_size: int_tuple(2)  # required in Keras 3, unlike MaxPooling
    strides: int_tuple(2) | None = None
    padding: Padding = "valid"


class _Global(LayerSpec):
    keepdims: Bool = False
    # Its kernels run on the calling thread (kernels/pooling.py, split=False): one pass over the input, shorter
    # than waking a thread. So it leaves runs_own_threads off, and the model's products keep their threads.

    def compute_output_shape(self, s):
        rank = self._rank
        require_rank(self.type, s, spatial_axes(rank))
        return ((1,) * rank + (s[-1],)) if self.keepdims else (s[-1],)

    _max: ClassVar[bool] = False  # max or average

    # One window over the whole image (or sequence, as an image of height 1) with a 1 x 1 output.
    def forward(self, w, x, training, rng):
        import numpy as np

        from ..kernels import pooling

        x4 = as_image(x)  # (N, H, W, C)
        n, h, wd, c = x4.shape
        g = (h, wd, 1, 1, 1, 1, 0, 0)
        out = empty("out", (n, 1, 1, c), x4.dtype)
        if self._max:
            argmax = empty("argmax", (n, 1, 1, c), np.int32)
            pooling.max_forward(x4, g, out, argmax, split=False)
        else:
            argmax = None
            pooling.avg_forward(x4, g, out, split=False)
        y = out.reshape((n,) + self.compute_output_shape(x.shape[1:]))
        return y, (argmax, g, x4.shape, x.shape, out.shape)

    def backward(self, w, g, saved, dy, need_dx=True):
        return _pool_backward(saved, dy, split=False)


@register
class GlobalMaxPooling1D(_Global):
    type: Literal["GlobalMaxPooling1D"] = "GlobalMaxPooling1D"
    _max: ClassVar[bool] = True
    _rank: ClassVar[int] = 1


@register
class GlobalMaxPooling2D(_Global):
    type: Literal["GlobalMaxPooling2D"] = "GlobalMaxPooling2D"
    _max: ClassVar[bool] = True
    _rank: ClassVar[int] = 2


@register
class GlobalAveragePooling1D(_Global):
    type: Literal["GlobalAveragePooling1D"] = "GlobalAveragePooling1D"
    _rank: ClassVar[int] = 1


@register
class GlobalAveragePooling2D(_Global):
    type: Literal["GlobalAveragePooling2D"] = "GlobalAveragePooling2D"
    _rank: ClassVar[int] = 2


def _pool_backward(saved, dy, split=True):
    import numpy as np

    from ..kernels import pooling

    argmax, g, img_shape, in_shape, out_shape = saved
    dy4 = np.ascontiguousarray(dy).reshape(out_shape)  # (N, Ho, Wo, C)
    dx = empty("dx", img_shape, dy4.dtype)  # (N, H, W, C)
    if argmax is not None:
        pooling.max_backward(dy4, argmax, g, dx, split)
    else:
        pooling.avg_backward(dy4, g, dx, split)
    return dx.reshape(in_shape)
