"""Convolutions, channels_last: Conv1D (steps, C), Conv2D (H, W, C), Conv2DTranspose, DepthwiseConv2D and
SeparableConv2D. Output sizes follow Keras 3's conv arithmetic exactly."""

from __future__ import annotations

import math
from typing import ClassVar, Literal

from pydantic import model_validator

from ..spec.types import Bool, PositiveInt, choice, int_tuple
from ..workspace import empty
from .activations import ActivationName
from .base import LayerSpec, ShapeError, WeightSpec, fmt_shape, register, require_rank, spatial_axes
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


def pad_before(n, out, k, stride, dilation, padding):
    """Padding before one axis so that `out` windows cover an axis of `n`: none for 'valid', the whole
    dilated window minus one for 'causal' (left only), and for 'same' TF/Keras's split of the total with
    the odd element after: pad_total = max((out-1)*stride + dilated_k - n, 0), before = pad_total // 2."""
    span = dilation * (k - 1) + 1
    if padding == "valid":
        return 0
    if padding == "causal":
        return span - 1
    return max((out - 1) * stride + span - n, 0) // 2


def geometry(in_spatial, out_spatial, kernel, strides, dilation, padding):
    """The kernels' window tuple (kh, kw, sh, sw, dh, dw, pad_top, pad_left) for a window sliding over
    `in_spatial` to give `out_spatial`; a 1-D window becomes 1 x k over an image of height 1."""
    if len(kernel) == 1:
        in_spatial, out_spatial = (1,) + tuple(in_spatial), (1,) + tuple(out_spatial)
        kernel, strides, dilation = (1,) + tuple(kernel), (1,) + tuple(strides), (1,) + tuple(dilation)
    pads = [pad_before(n, o, k, s, d, padding)
            for n, o, k, s, d in zip(in_spatial, out_spatial, kernel, strides, dilation, strict=True)]
    return tuple(int(v) for v in (*kernel, *strides, *dilation, *pads))


def as_image(x):
    """(N, steps, C) -> (N, 1, steps, C) and (N, H, W, C) unchanged, C-contiguous (a view when it can)."""
    import numpy as np

    x = np.ascontiguousarray(x)
    return x.reshape(x.shape[0], 1, x.shape[1], x.shape[2]) if x.ndim == 3 else x


class _Windowed(LayerSpec):
    """Shared by layers that slide a kernel: subclasses define kernel_size, strides, padding, dilation_rate."""

    runs_own_threads: ClassVar[bool] = True

    def window(self, sample_shape):
        """(output spatial shape, kernel geometry) for samples of `sample_shape` (no batch axis)."""
        out_spatial = self._spatial(sample_shape)
        return out_spatial, geometry(sample_shape[:-1], out_spatial, self.kernel_size, self.strides,
                                     self.dilation_rate, self.padding)

    def _channels(self, s):
        require_rank(self.type, s, spatial_axes(len(self.kernel_size)))
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

    def output_activation(self):
        return self.activation

    def applies_activation(self):
        # ReLU is applied to each chunk of the output while it is in cache, and its derivative to each
        # chunk of dy (from the output: y > 0 exactly where z > 0). Done by the engine instead, it was two
        # more passes over the largest tensors of a CNN: 18% of the benchmark CNN's step on one thread.
        return self.activation == "relu"

    # Conv1D and Conv2D: im2col + GEMM per chunk of samples (kernels.conv); Conv1D runs as an image of
    # height 1. Backward recomputes the windows from x, so forward keeps only x (and, with a ReLU, its
    # output).
    def forward(self, w, x, training, rng):
        return self.forward_window(w, x, *self.window(x.shape[1:]))

    def forward_window(self, w, x, out_spatial, g):
        """forward with the window worked out by the caller: a fused ZeroPadding2D (layers/fusion.py PadConv)
        adds its padding to g's pads and the output size of the padded input."""
        import numpy as np

        from ..kernels import conv

        x4 = as_image(x)  # (N, H, W, C)
        n = x4.shape[0]
        ho, wo = ((1,) + out_spatial)[-2:]
        f = self.filters
        kernel = w[0].reshape(-1, f)  # (kh*kw*C, F), a view
        bias = w[1] if self.use_bias else np.zeros(f, x4.dtype)
        out = empty("out", (n, ho, wo, f), x4.dtype)
        relu = self.applies_activation()
        conv.conv_forward(x4, kernel, bias, self.use_bias, g, out, relu)
        return out.reshape((n,) + out_spatial + (f,)), (x4, out.shape, x.shape, g, out if relu else None)

    def backward(self, w, g, saved, dy, need_dx=True):
        import numpy as np

        from ..kernels import conv

        x4, out_shape, in_shape, geom, relu_out = saved
        f = self.filters
        dy4 = np.ascontiguousarray(dy).reshape(out_shape)  # (N, Ho, Wo, F)
        dx = empty("dx", x4.shape, x4.dtype)  # (N, H, W, C)
        dbias = g[1] if self.use_bias else np.empty(f, dy4.dtype)
        conv.conv_backward(x4, w[0].reshape(-1, f), dy4, self.use_bias, True, need_dx, geom,
                           g[0].reshape(-1, f), dbias, dx, relu_out)
        return dx.reshape(in_shape) if need_dx else None


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

    def applies_activation(self):
        return False  # its own forward and backward (below) leave the activation to the engine

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

    # The adjoint of the Conv2D that maps an (Ho, Wo, filters) image to this layer's (H, W, in_channels)
    # input with the same kernel: that Conv2D's kernel layout is exactly Keras's (kh, kw, filters, C),
    # and its 'same' padding before each axis follows TF's rule with the roles of input and output swapped
    # (which is also where Keras's JAX and TF backends put the output). So forward is Conv2D's input
    # gradient, and backward is Conv2D's forward (for dx) plus its weight gradient.
    def _geometry(self, x_shape):
        out_spatial = self.compute_output_shape(x_shape[1:])[:-1]
        return out_spatial, geometry(out_spatial, x_shape[1:3], self.kernel_size, self.strides,
                                     self.dilation_rate, self.padding)

    def forward(self, w, x, training, rng):
        import numpy as np

        from ..kernels import conv

        x4 = np.ascontiguousarray(x)  # (N, H, W, C)
        n, h, wd, c = x4.shape
        f = self.filters
        (ho, wo), g = self._geometry(x4.shape)
        kernel = w[0].reshape(-1, c)  # (kh*kw*F, C), a view
        y = empty("y", (n, ho, wo, f), x4.dtype)
        no_dk = empty("no_dk", (0, 0), x4.dtype)
        no_db = empty("no_db", 0, x4.dtype)
        # y stands in for the unread x: only its shape matters.
        conv.conv_backward(y, kernel, x4, False, False, True, g, no_dk, no_db, y)
        if self.use_bias:
            y += w[1]
        return y, (x4, g)

    def backward(self, w, g, saved, dy, need_dx=True):
        import numpy as np

        from ..kernels import conv

        x4, geom = saved
        c = x4.shape[3]
        f = self.filters
        dy4 = np.ascontiguousarray(dy)  # (N, Ho, Wo, F)
        kernel = w[0].reshape(-1, c)
        dx = empty("dx", x4.shape, x4.dtype)
        conv.conv_forward(dy4, kernel, np.zeros(c, dy4.dtype), False, geom, dx)  # dx = im2col(dy) @ K
        # d(kernel) = im2col(dy).T @ x: Conv2D's weight gradient with x in the place of its dy.
        conv.conv_backward(dy4, kernel, x4, False, True, False, geom, g[0].reshape(-1, c),
                           np.empty(0, dy4.dtype), dy4)
        if self.use_bias:
            g[1][...] = dy4.reshape(-1, f).sum(axis=0)
        return dx


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

    def output_activation(self):
        return self.activation

    def forward(self, w, x, training, rng):
        import numpy as np

        from ..kernels import depthwise

        x4 = np.ascontiguousarray(x)  # (N, H, W, C)
        out_spatial, g = self.window(x4.shape[1:])
        cm = x4.shape[3] * self.depth_multiplier
        out = empty("out", (x4.shape[0],) + out_spatial + (cm,), x4.dtype)  # (N, Ho, Wo, C*m)
        bias = w[1] if self.use_bias else np.zeros(cm, x4.dtype)
        depthwise.forward(x4, w[0], bias, self.use_bias, g, out)
        return out, (x4, g)

    def backward(self, w, g, saved, dy, need_dx=True):
        import numpy as np

        from ..kernels import depthwise

        x4, geom = saved
        dy4 = np.ascontiguousarray(dy)
        dx = empty("dx", x4.shape, x4.dtype)
        dbias = g[1] if self.use_bias else np.empty(dy4.shape[3], dy4.dtype)
        depthwise.backward(x4, w[0], dy4, self.use_bias, geom, g[0], dbias, dx, need_dx)
        return dx if need_dx else None


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

    def output_activation(self):
        return self.activation

    # Depthwise (no bias) into z (N, Ho, Wo, C*m), then the pointwise kernel as a 1 x 1 Conv2D (one GEMM
    # straight on z, no im2col) plus the bias.
    def forward(self, w, x, training, rng):
        import numpy as np

        from ..kernels import conv, depthwise

        x4 = np.ascontiguousarray(x)  # (N, H, W, C)
        out_spatial, g = self.window(x4.shape[1:])
        n, cm, f = x4.shape[0], x4.shape[3] * self.depth_multiplier, self.filters
        z = empty("z", (n,) + out_spatial + (cm,), x4.dtype)
        depthwise.forward(x4, w[0], np.zeros(cm, x4.dtype), False, g, z)
        out = empty("out", (n,) + out_spatial + (f,), x4.dtype)
        bias = w[2] if self.use_bias else np.zeros(f, x4.dtype)
        conv.conv_forward(z, w[1].reshape(cm, f), bias, self.use_bias, POINTWISE, out)
        return out, (x4, z, g)

    def backward(self, w, g, saved, dy, need_dx=True):
        import numpy as np

        from ..kernels import conv, depthwise

        x4, z, geom = saved
        cm, f = z.shape[3], self.filters
        dy4 = np.ascontiguousarray(dy)  # (N, Ho, Wo, F)
        dz = empty("dz", z.shape, z.dtype)
        dbias = g[2] if self.use_bias else np.empty(f, dy4.dtype)
        conv.conv_backward(z, w[1].reshape(cm, f), dy4, self.use_bias, True, True, POINTWISE,
                           g[1].reshape(cm, f), dbias, dz)
        dx = empty("dx", x4.shape, x4.dtype)
        depthwise.backward(x4, w[0], dz, False, geom, g[0], np.empty(cm, dy4.dtype), dx)
        return dx


POINTWISE = (1, 1, 1, 1, 1, 1, 0, 0)  # geometry of a 1 x 1 convolution with stride 1 and no padding
