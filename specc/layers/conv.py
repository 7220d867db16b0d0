"""Convolutions, channels_last: Conv1D (steps, C), Conv2D (H, W, C), Conv2DTranspose, DepthwiseConv2D and
SeparableConv2D. Output sizes follow Keras 3's conv arithmetic exactly."""

from __future__ import annotations

import math
from typing import Literal

from pydantic import model_validator

from ..spec.types import Bool, PositiveInt, choice, int_tuple
from .activations import ActivationName
from .base import LayerSpec, ShapeError, WeightSpec, fmt_shape, register
from .initializers import Initializer

Padding = choice(("valid", "same"), "padding")


def conv_length(n, k, stride, dilation, padding, axis="axis"):
    """Keras's output length of a convolution or pooling window along one axis."""
    if n is None:
        return None
    span = dilation * (k - 1) + 1
    if padding == "valid":
        out = (n - span) // stride + 1
        if out <= 0:
            raise ShapeError(f"a window of {span} does not fit the {axis} of {n} with padding 'valid'")
        return out
    return (n - 1) // stride + 1  # same and causal


def deconv_length(n, k, stride, dilation, padding, output_padding):
    if n is None:
        return None
    k = k + (k - 1) * (dilation - 1)
    if output_padding is None:
        return n * stride + max(k - stride, 0) if padding == "valid" else n * stride
    pad = k // 2 if padding == "same" else 0
    return (n - 1) * stride + k - 2 * pad + output_padding


class _Windowed(LayerSpec):
    """Shared by layers that slide a kernel: subclasses define kernel_size, strides, padding, dilation_rate."""

    def _channels(self, s):
        rank = len(self.kernel_size)
        if len(s) != rank + 1:
            what = "(steps, channels)" if rank == 1 else "(height, width, channels)"
            raise ShapeError(f"{self.type} expects input of rank {rank + 1} {what} (without the batch axis), "
                             f"got {fmt_shape(s)}")
        if s[-1] is None:
            raise ShapeError(f"the channel axis of its input {fmt_shape(s)} must be known")
        return s[-1]

    def _spatial(self, s):
        axes = ("steps",) if len(self.kernel_size) == 1 else ("height", "width")
        try:
            return tuple(conv_length(n, k, st, d, self.padding, ax)
                         for n, k, st, d, ax in zip(s[:-1], self.kernel_size, self.strides, self.dilation_rate, axes))
        except ShapeError as e:
            raise ShapeError(f"kernel_size {list(self.kernel_size)} (dilation_rate {list(self.dilation_rate)}) does not "
                             f"fit its input {fmt_shape(s)}: {e}; use padding 'same', a smaller kernel or a "
                             f"larger input") from None

    @model_validator(mode="after")
    def _strides_or_dilation(self):
        if any(st > 1 for st in self.strides) and any(d > 1 for d in self.dilation_rate):
            raise ValueError("strides > 1 cannot be combined with dilation_rate > 1 (Keras rejects it too)")
        return self


class _Conv(_Windowed):
    filters: PositiveInt
    activation: ActivationName = "linear"
    use_bias: Bool = True
    kernel_initializer: Initializer = "glorot_uniform"
    bias_initializer: Initializer = "zeros"

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


@register
class Conv1D(_Conv):
    type: Literal["Conv1D"] = "Conv1D"
    kernel_size: int_tuple(1)
    strides: int_tuple(1) = (1,)
    padding: choice(("valid", "same", "causal"), "padding") = "valid"
    dilation_rate: int_tuple(1) = (1,)


@register
class Conv2D(_Conv):
    type: Literal["Conv2D"] = "Conv2D"
    kernel_size: int_tuple(2)
    strides: int_tuple(2) = (1, 1)
    padding: Padding = "valid"
    dilation_rate: int_tuple(2) = (1, 1)


@register
class Conv2DTranspose(_Conv):
    """Kernel (kh, kw, filters, in_channels): Keras stores it transposed relative to Conv2D."""

    type: Literal["Conv2DTranspose"] = "Conv2DTranspose"
    kernel_size: int_tuple(2)
    strides: int_tuple(2) = (1, 1)
    padding: Padding = "valid"
    output_padding: int_tuple(2, minimum=0, what="non-negative integer") | None = None
    dilation_rate: int_tuple(2) = (1, 1)

    @model_validator(mode="after")
    def _output_padding_below_stride(self):
        if self.output_padding is not None and any(p >= st for p, st in zip(self.output_padding, self.strides)):
            raise ValueError(f"output_padding {list(self.output_padding)} must be smaller than strides "
                             f"{list(self.strides)} on each axis")
        return self

    def compute_output_shape(self, s):
        self._channels(s)
        op = self.output_padding or (None, None)
        return tuple(deconv_length(n, k, st, d, self.padding, p)
                     for n, k, st, d, p in zip(s[:-1], self.kernel_size, self.strides, self.dilation_rate, op)) + (
            self.filters,)

    def weight_specs(self, s):
        w = [WeightSpec("kernel", tuple(self.kernel_size) + (self.filters, self._channels(s)), self.kernel_initializer)]
        if self.use_bias:
            w.append(WeightSpec("bias", (self.filters,), self.bias_initializer))
        return w

    def macs(self, s, out):
        return math.prod(s[:-1]) * math.prod(self.kernel_size) * s[-1] * self.filters


@register
class DepthwiseConv2D(_Windowed):
    """One filter per input channel (times depth_multiplier); depthwise_kernel (kh, kw, C, multiplier)."""

    type: Literal["DepthwiseConv2D"] = "DepthwiseConv2D"
    kernel_size: int_tuple(2)
    strides: int_tuple(2) = (1, 1)
    padding: Padding = "valid"
    depth_multiplier: PositiveInt = 1
    dilation_rate: int_tuple(2) = (1, 1)
    activation: ActivationName = "linear"
    use_bias: Bool = True
    depthwise_initializer: Initializer = "glorot_uniform"
    bias_initializer: Initializer = "zeros"

    def compute_output_shape(self, s):
        return self._spatial(s) + (self._channels(s) * self.depth_multiplier,)

    def weight_specs(self, s):
        c = self._channels(s)
        w = [WeightSpec("kernel", tuple(self.kernel_size) + (c, self.depth_multiplier), self.depthwise_initializer)]
        if self.use_bias:
            w.append(WeightSpec("bias", (c * self.depth_multiplier,), self.bias_initializer))
        return w

    def macs(self, s, out):
        return math.prod(out) * math.prod(self.kernel_size)


@register
class SeparableConv2D(_Windowed):
    """Depthwise (kh, kw, C, multiplier) then pointwise (1, 1, C*multiplier, filters) convolution."""

    type: Literal["SeparableConv2D"] = "SeparableConv2D"
    filters: PositiveInt
    kernel_size: int_tuple(2)
    strides: int_tuple(2) = (1, 1)
    padding: Padding = "valid"
    depth_multiplier: PositiveInt = 1
    dilation_rate: int_tuple(2) = (1, 1)
    activation: ActivationName = "linear"
    use_bias: Bool = True
    depthwise_initializer: Initializer = "glorot_uniform"
    pointwise_initializer: Initializer = "glorot_uniform"
    bias_initializer: Initializer = "zeros"

    def compute_output_shape(self, s):
        self._channels(s)
        return self._spatial(s) + (self.filters,)

    def weight_specs(self, s):
        c, m = self._channels(s), self.depth_multiplier
        w = [WeightSpec("depthwise_kernel", tuple(self.kernel_size) + (c, m), self.depthwise_initializer),
             WeightSpec("pointwise_kernel", (1, 1, c * m, self.filters), self.pointwise_initializer)]
        if self.use_bias:
            w.append(WeightSpec("bias", (self.filters,), self.bias_initializer))
        return w

    def macs(self, s, out):
        hw = math.prod(out[:-1])
        return hw * math.prod(self.kernel_size) * s[-1] * self.depth_multiplier + hw * s[-1] * self.depth_multiplier * self.filters
