"""Convolutions, channels_last: im2col + GEMM for Conv1D/Conv2D (and, as their adjoint, Conv2DTranspose);
direct loops for DepthwiseConv2D.

Every window is described by one geometry tuple `g = (kh, kw, sh, sw, dh, dw, pad_top, pad_left)`: kernel
size, strides, dilation and the padding before each axis (padding after needs no number: reads past the
end are zeros and writes past it are dropped). A 1-D layer runs as 2-D with H = 1 and a 1 x k kernel, so
the same compiled code serves both.

im2col lays the window of output position (n, oh, ow) out as one row of `cols`, taps in (i, j, c) order,
which is exactly the order of a Keras kernel (kh, kw, C, F) reshaped to (kh*kw*C, F). Reading x[n, ih, iw, :]
copies C contiguous values, so the copy is cache friendly in channels_last; the convolution itself is then
one BLAS GEMM (np.dot inside njit calls BLAS through SciPy).

A pointwise geometry (1 x 1 kernel, stride 1, no padding) needs no im2col at all: `cols` would be a copy of
x, so the kernels multiply x directly (callers pass x itself as `cols`, and dx itself as `dcols`).
"""

from __future__ import annotations

import numba
import numpy as np

from . import JIT
from .dense import column_sums


@numba.njit(**JIT)
def _pointwise(g):
    return g[0] == 1 and g[1] == 1 and g[2] == 1 and g[3] == 1 and g[6] == 0 and g[7] == 0


@numba.njit(**JIT)
def _im2col(x, g, cols):
    """x (N, H, W, C) -> cols (N, Ho, Wo, kh*kw*C); taps that fall in the padding read 0."""
    kh, kw, sh, sw, dh, dw, ph, pw = g
    n_, h_, w_, c_ = x.shape
    ho, wo = cols.shape[1], cols.shape[2]
    zero = x.dtype.type(0)
    for n in range(n_):
        for oh in range(ho):
            for ow in range(wo):
                for i in range(kh):
                    ih = oh * sh - ph + i * dh
                    for j in range(kw):
                        iw = ow * sw - pw + j * dw
                        base = (i * kw + j) * c_
                        if 0 <= ih < h_ and 0 <= iw < w_:
                            for c in range(c_):
                                cols[n, oh, ow, base + c] = x[n, ih, iw, c]
                        else:
                            for c in range(c_):
                                cols[n, oh, ow, base + c] = zero


@numba.njit(**JIT)
def _col2im(cols, g, x):
    """The adjoint of _im2col: cols (N, Ho, Wo, kh*kw*C) summed back into x (N, H, W, C); padding dropped."""
    kh, kw, sh, sw, dh, dw, ph, pw = g
    n_, h_, w_, c_ = x.shape
    ho, wo = cols.shape[1], cols.shape[2]
    x[...] = 0
    for n in range(n_):
        for oh in range(ho):
            for ow in range(wo):
                for i in range(kh):
                    ih = oh * sh - ph + i * dh
                    if ih < 0 or ih >= h_:
                        continue
                    for j in range(kw):
                        iw = ow * sw - pw + j * dw
                        if iw < 0 or iw >= w_:
                            continue
                        base = (i * kw + j) * c_
                        for c in range(c_):
                            x[n, ih, iw, c] += cols[n, oh, ow, base + c]


@numba.njit(**JIT)
def conv_forward(x, kernel, bias, use_bias, g, cols, out):
    """x (N, H, W, C), kernel (kh*kw*C, F), bias (F,) -> cols (N, Ho, Wo, kh*kw*C), out (N, Ho, Wo, F).

    cols is kept for backward; for a pointwise geometry pass x as cols (it is not written).
    Conv2DTranspose's backward uses this too, for d(input) = im2col(dy) @ kernel.
    """
    rows = out.shape[0] * out.shape[1] * out.shape[2]
    f = out.shape[3]
    if _pointwise(g):
        a = x.reshape(rows, x.shape[3])
    else:
        _im2col(x, g, cols)
        a = cols.reshape(rows, cols.shape[3])
    out2 = out.reshape(rows, f)
    np.dot(a, kernel, out2)
    if use_bias:
        for r in range(rows):
            for j in range(f):
                out2[r, j] += bias[j]


@numba.njit(**JIT)
def conv_backward(cols, kernel, dy, use_bias, need_dk, need_dx, g, dkernel, dbias, dcols, dx):
    """dy (N, Ho, Wo, F) -> dkernel (kh*kw*C, F) = cols.T @ dy, dbias (F,) = sum of dy over positions,
    dx (N, H, W, C) = col2im(dy @ kernel.T) through dcols (N, Ho, Wo, kh*kw*C) as scratch.

    For a pointwise geometry cols is x and dy @ kernel.T is dx itself (dcols is not used).
    Conv2DTranspose's forward is the dx part alone (dy = its input, dx = its output); its kernel
    gradient is the dkernel part with dy = its input and cols = im2col(its output gradient).
    """
    rows = dy.shape[0] * dy.shape[1] * dy.shape[2]
    f = dy.shape[3]
    dy2 = dy.reshape(rows, f)
    if need_dk:
        np.dot(cols.reshape(rows, cols.shape[3]).T, dy2, dkernel)
    if use_bias:
        column_sums(dy2, dbias)
    if need_dx:
        if _pointwise(g):
            np.dot(dy2, kernel.T, dx.reshape(rows, dx.shape[3]))
        else:
            np.dot(dy2, kernel.T, dcols.reshape(rows, dcols.shape[3]))
            _col2im(dcols, g, dx)


@numba.njit(**JIT)
def depthwise_forward(x, kernel, bias, use_bias, g, out):
    """x (N, H, W, C), kernel (kh, kw, C, m), bias (C*m,) -> out (N, Ho, Wo, C*m), channel c*m + q from
    input channel c and multiplier q (TF/Keras order). Direct loops: there is no GEMM to batch."""
    kh, kw, sh, sw, dh, dw, ph, pw = g
    n_, h_, w_, c_ = x.shape
    _, ho, wo, cm = out.shape
    m = kernel.shape[3]
    zero = x.dtype.type(0)
    for n in range(n_):
        for oh in range(ho):
            for ow in range(wo):
                for k in range(cm):
                    out[n, oh, ow, k] = bias[k] if use_bias else zero
                for i in range(kh):
                    ih = oh * sh - ph + i * dh
                    if ih < 0 or ih >= h_:
                        continue
                    for j in range(kw):
                        iw = ow * sw - pw + j * dw
                        if iw < 0 or iw >= w_:
                            continue
                        if m == 1:  # the common case, written so the channel loop vectorises
                            for c in range(c_):
                                out[n, oh, ow, c] += x[n, ih, iw, c] * kernel[i, j, c, 0]
                        else:
                            for c in range(c_):
                                v = x[n, ih, iw, c]
                                for q in range(m):
                                    out[n, oh, ow, c * m + q] += v * kernel[i, j, c, q]


@numba.njit(**JIT)
def depthwise_backward(x, kernel, dy, use_bias, g, dkernel, dbias, dx):
    """dy (N, Ho, Wo, C*m) -> dkernel (kh, kw, C, m), dbias (C*m,), dx (N, H, W, C)."""
    kh, kw, sh, sw, dh, dw, ph, pw = g
    n_, h_, w_, c_ = x.shape
    _, ho, wo, cm = dy.shape
    m = kernel.shape[3]
    dkernel[...] = 0
    dx[...] = 0
    if use_bias:
        dbias[...] = 0
    for n in range(n_):
        for oh in range(ho):
            for ow in range(wo):
                if use_bias:
                    for k in range(cm):
                        dbias[k] += dy[n, oh, ow, k]
                for i in range(kh):
                    ih = oh * sh - ph + i * dh
                    if ih < 0 or ih >= h_:
                        continue
                    for j in range(kw):
                        iw = ow * sw - pw + j * dw
                        if iw < 0 or iw >= w_:
                            continue
                        if m == 1:  # the common case, written so the channel loop vectorises
                            for c in range(c_):
                                d = dy[n, oh, ow, c]
                                dkernel[i, j, c, 0] += x[n, ih, iw, c] * d
                                dx[n, ih, iw, c] += d * kernel[i, j, c, 0]
                        else:
                            for c in range(c_):
                                v = x[n, ih, iw, c]
                                acc = x.dtype.type(0)
                                for q in range(m):
                                    d = dy[n, oh, ow, c * m + q]
                                    dkernel[i, j, c, q] += v * d
                                    acc += d * kernel[i, j, c, q]
                                dx[n, ih, iw, c] += acc
