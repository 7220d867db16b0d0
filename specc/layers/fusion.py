"""Pairs of layers the engine runs as one step: a Conv1D/Conv2D (linear or ReLU) whose output only a
MaxPooling1D/2D of the same rank reads. The pair computes what the two layers compute apart, to the bit or
(the kernel and bias gradients on the AVX-512 path) within float32 rounding, with ties between equal maxima
going to the first in scan order as in the pooling layer; kernels/conv_pool.py says why it is faster. The
model, its summary, weights and layer names do not change: this exists only in the engine's execution plan
(Engine.plan)."""

from __future__ import annotations

from typing import Any

from ..workspace import empty
from .conv import Conv1D, Conv2D, as_image
from .pooling import MaxPooling1D, MaxPooling2D

_PAIRS = ((Conv2D, MaxPooling2D), (Conv1D, MaxPooling1D))


def fusable(conv: Any, pool: Any) -> bool:
    """Whether ConvPool runs conv followed by pool (the engine checks that nothing else reads conv's output)."""
    return (any(type(conv) is c and type(pool) is p for c, p in _PAIRS)
            and conv.activation in ("linear", "relu"))


class ConvPool:
    """The runtime side of a layer (see LayerSpec) for conv then pool; its weights are the convolution's."""

    is_merge = False
    runs_own_threads = True

    def __init__(self, conv: Any, pool: Any):
        self.conv, self.pool = conv, pool
        self._pairs: dict = {}  # (sample shape, dtype) -> conv_pool.Pair: geometry worked out once per shape

    def _pair(self, x):
        """(conv_pool.Pair, pooled output shape per sample) for this input."""
        key = (x.shape[1:], x.dtype)
        if key not in self._pairs:
            from ..kernels import conv_pool

            f = self.conv.filters
            conv_spatial, g = self.conv.window(x.shape[1:])
            pooled_spatial, pg = self.pool.window(conv_spatial + (f,))
            image = as_image(x[:0]).shape[1:]  # (H, W, C)
            self._pairs[key] = (conv_pool.pair(image, x.dtype, g, pg, ((1,) + conv_spatial)[-2:],
                                               ((1,) + pooled_spatial)[-2:]), pooled_spatial)
        return self._pairs[key]

    def output_activation(self) -> str:
        return "linear"

    def applies_activation(self) -> bool:
        return False

    def forward(self, w, x, training, rng):
        import numpy as np

        from ..kernels import conv_pool

        conv, f = self.conv, self.conv.filters
        x4 = as_image(x)  # (N, H, W, C)
        geometry, pooled_spatial = self._pair(x)
        n = x4.shape[0]
        shape = (n,) + ((1,) + pooled_spatial)[-2:] + (f,)  # (N, Po, Qo, F)
        out = empty("out", shape, x4.dtype)
        # Each window's winner: an int8 code (0-3 in the window, or blocked by the ReLU) on the direct path,
        # else its index oh*Wo + ow in the convolution's output.
        winners = empty("winners", shape, np.int32 if geometry.taps is None else np.int8)
        bias = w[1] if conv.use_bias else np.zeros(f, x4.dtype)
        relu = conv.activation == "relu"
        conv_pool.conv_pool_forward(x4, w[0].reshape(-1, f), bias, conv.use_bias, relu, geometry, out, winners)
        return out.reshape((n,) + pooled_spatial + (f,)), (x4, x.shape, geometry, out, winners, relu)

    def backward(self, w, g, saved, dy, need_dx=True):
        import numpy as np

        from ..kernels import conv_pool

        x4, in_shape, geometry, out, winners, relu = saved
        f = self.conv.filters
        dp = np.ascontiguousarray(dy).reshape(out.shape)  # (N, Po, Qo, F)
        dx = empty("dx", x4.shape, x4.dtype)  # (N, H, W, C)
        dbias = g[1] if self.conv.use_bias else np.empty(f, dp.dtype)
        conv_pool.conv_pool_backward(x4, w[0].reshape(-1, f), dp, out, winners, relu, self.conv.use_bias, need_dx,
                                     geometry, g[0].reshape(-1, f), dbias, dx)
        return dx.reshape(in_shape) if need_dx else None
