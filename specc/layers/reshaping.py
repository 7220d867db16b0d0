"""Layers that move data without arithmetic: Flatten, Reshape, Permute, RepeatVector, padding,
cropping and upsampling."""

from __future__ import annotations

import math
from typing import Literal

from pydantic import field_validator

from ..spec.types import PositiveInt, choice, int_tuple, pad_pairs
from .base import LayerSpec, ShapeError, fmt_shape, prod, register


def _need_rank(layer: str, s, rank: int, meaning: str):
    if len(s) != rank:
        raise ShapeError(f"{layer} expects input of rank {rank} {meaning} (without the batch axis), "
                         f"got {fmt_shape(s)}")


def _add(n, k):
    return None if n is None else n + k


@register
class Flatten(LayerSpec):
    type: Literal["Flatten"] = "Flatten"

    def compute_output_shape(self, s):
        return (prod(s),)


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
            raise ValueError("must be a list of positive integers with at most one -1, got " + repr(v))
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


@register
class Permute(LayerSpec):
    """dims: a permutation of 1..rank (axis 0, the batch, never moves)."""

    type: Literal["Permute"] = "Permute"
    dims: list[PositiveInt]

    def compute_output_shape(self, s):
        if sorted(self.dims) != list(range(1, len(s) + 1)):
            raise ShapeError(f"dims {self.dims} must be a permutation of 1..{len(s)} for input {fmt_shape(s)}")
        return tuple(s[d - 1] for d in self.dims)


@register
class RepeatVector(LayerSpec):
    type: Literal["RepeatVector"] = "RepeatVector"
    n: PositiveInt

    def compute_output_shape(self, s):
        _need_rank("RepeatVector", s, 1, "(features,)")
        return (self.n, s[0])


@register
class ZeroPadding1D(LayerSpec):
    type: Literal["ZeroPadding1D"] = "ZeroPadding1D"
    padding: pad_pairs(1, "padding") = ((1, 1),)

    def compute_output_shape(self, s):
        _need_rank("ZeroPadding1D", s, 2, "(steps, channels)")
        return (_add(s[0], sum(self.padding[0])), s[1])


@register
class ZeroPadding2D(LayerSpec):
    type: Literal["ZeroPadding2D"] = "ZeroPadding2D"
    padding: pad_pairs(2, "padding") = ((1, 1), (1, 1))

    def compute_output_shape(self, s):
        _need_rank("ZeroPadding2D", s, 3, "(height, width, channels)")
        return (_add(s[0], sum(self.padding[0])), _add(s[1], sum(self.padding[1])), s[2])


def _crop(layer, n, pair, axis):
    if n is None:
        return None
    if n - sum(pair) <= 0:
        raise ShapeError(f"{layer} crops {pair[0]}+{pair[1]} from {axis} of size {n}, leaving nothing")
    return n - sum(pair)


@register
class Cropping1D(LayerSpec):
    type: Literal["Cropping1D"] = "Cropping1D"
    cropping: pad_pairs(1, "cropping") = ((1, 1),)

    def compute_output_shape(self, s):
        _need_rank("Cropping1D", s, 2, "(steps, channels)")
        return (_crop("Cropping1D", s[0], self.cropping[0], "steps"), s[1])


@register
class Cropping2D(LayerSpec):
    type: Literal["Cropping2D"] = "Cropping2D"
    cropping: pad_pairs(2, "cropping") = ((0, 0), (0, 0))

    def compute_output_shape(self, s):
        _need_rank("Cropping2D", s, 3, "(height, width, channels)")
        return (_crop("Cropping2D", s[0], self.cropping[0], "height"),
                _crop("Cropping2D", s[1], self.cropping[1], "width"), s[2])


def _mul(n, k):
    return None if n is None else n * k


@register
class UpSampling1D(LayerSpec):
    type: Literal["UpSampling1D"] = "UpSampling1D"
    size: PositiveInt = 2

    def compute_output_shape(self, s):
        _need_rank("UpSampling1D", s, 2, "(steps, channels)")
        return (_mul(s[0], self.size), s[1])


@register
class UpSampling2D(LayerSpec):
    type: Literal["UpSampling2D"] = "UpSampling2D"
    size: int_tuple(2) = (2, 2)
    interpolation: choice(("nearest", "bilinear"), "interpolation") = "nearest"

    def compute_output_shape(self, s):
        _need_rank("UpSampling2D", s, 3, "(height, width, channels)")
        return (_mul(s[0], self.size[0]), _mul(s[1], self.size[1]), s[2])
