"""Regularisation layers that only act in training: SpatialDropout1D/2D (drop whole channels) and
GaussianNoise (add zero-mean noise). At inference each is the identity, as in Keras."""

from __future__ import annotations

from typing import ClassVar, Literal

from ..spec.types import Fraction, Rate, StrictInt
from .base import LayerSpec, register, require_rank, spatial_axes


class _SpatialDropout(LayerSpec):
    """Dropout with one keep/drop draw per (sample, channel), shared along the spatial axes."""

    rate: Rate
    seed: StrictInt | None = None
    rank: ClassVar[int]

    def compute_output_shape(self, s):
        require_rank(self.type, s, spatial_axes(self.rank))
        return s

    def forward(self, w, x, training, rng):
        if not training or self.rate == 0:
            return x, None
        mask_shape = (x.shape[0],) + (1,) * self.rank + (x.shape[-1],)  # (batch, 1, [1,] channels)
        keep = (rng.random(mask_shape) >= self.rate).astype(x.dtype) / x.dtype.type(1 - self.rate)
        return x * keep, keep

    def backward(self, w, g, keep, dy, need_dx=True):
        return dy if keep is None else dy * keep


@register
class SpatialDropout1D(_SpatialDropout):
    type: Literal["SpatialDropout1D"] = "SpatialDropout1D"
    rank: ClassVar[int] = 1


@register
class SpatialDropout2D(_SpatialDropout):
    type: Literal["SpatialDropout2D"] = "SpatialDropout2D"
    rank: ClassVar[int] = 2


@register
class GaussianNoise(LayerSpec):
    """Training: x + N(0, stddev^2) noise, drawn afresh each step; inference: x. Keras bounds stddev to
    [0, 1]."""

    type: Literal["GaussianNoise"] = "GaussianNoise"
    stddev: Fraction
    seed: StrictInt | None = None

    def forward(self, w, x, training, rng):
        if not training or self.stddev == 0:
            return x, None
        return x + (rng.standard_normal(x.shape) * self.stddev).astype(x.dtype), None

    def backward(self, w, g, saved, dy, need_dx=True):
        return dy
