"""Max/average pooling over windows, and global pooling over every spatial position (channels_last)."""

from __future__ import annotations

from typing import ClassVar, Literal

from ..spec.types import Bool, choice, int_tuple
from .base import LayerSpec, ShapeError, fmt_shape, register
from .conv import conv_length

Padding = choice(("valid", "same"), "padding")


class _Pool(LayerSpec):
    """strides default to pool_size, as in Keras."""

    def compute_output_shape(self, s):
        rank = len(self.pool_size)
        if len(s) != rank + 1:
            what = "(steps, channels)" if rank == 1 else "(height, width, channels)"
            raise ShapeError(f"{self.type} expects input of rank {rank + 1} {what} (without the batch axis), "
                             f"got {fmt_shape(s)}")
        strides = self.strides or self.pool_size
        axes = ("steps",) if rank == 1 else ("height", "width")
        try:
            return tuple(conv_length(n, k, st, 1, self.padding, ax)
                         for n, k, st, ax in zip(s[:-1], self.pool_size, strides, axes)) + (s[-1],)
        except ShapeError as e:
            raise ShapeError(f"pool_size {list(self.pool_size)} does not fit its input {fmt_shape(s)}: {e}; "
                             f"use padding 'same' or a smaller pool_size") from None


@register
class MaxPooling1D(_Pool):
    type: Literal["MaxPooling1D"] = "MaxPooling1D"
    pool_size: int_tuple(1) = (2,)
    strides: int_tuple(1) | None = None
    padding: Padding = "valid"


@register
class MaxPooling2D(_Pool):
    type: Literal["MaxPooling2D"] = "MaxPooling2D"
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

    def compute_output_shape(self, s):
        rank = self._rank
        if len(s) != rank + 1:
            what = "(steps, channels)" if rank == 1 else "(height, width, channels)"
            raise ShapeError(f"{self.type} expects input of rank {rank + 1} {what} (without the batch axis), "
                             f"got {fmt_shape(s)}")
        return ((1,) * rank + (s[-1],)) if self.keepdims else (s[-1],)


@register
class GlobalMaxPooling1D(_Global):
    type: Literal["GlobalMaxPooling1D"] = "GlobalMaxPooling1D"
    _rank: ClassVar[int] = 1


@register
class GlobalMaxPooling2D(_Global):
    type: Literal["GlobalMaxPooling2D"] = "GlobalMaxPooling2D"
    _rank: ClassVar[int] = 2


@register
class GlobalAveragePooling1D(_Global):
    type: Literal["GlobalAveragePooling1D"] = "GlobalAveragePooling1D"
    _rank: ClassVar[int] = 1


@register
class GlobalAveragePooling2D(_Global):
    type: Literal["GlobalAveragePooling2D"] = "GlobalAveragePooling2D"
    _rank: ClassVar[int] = 2
