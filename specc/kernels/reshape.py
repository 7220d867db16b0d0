"""Upsampling kernels over (batch, height, width, channels); UpSampling1D runs with width 1.

Nearest repeats each pixel; bilinear interpolates with per-axis taps (i0, i1, weight of i1) computed by
the caller (half-pixel centres, as Keras's `ops.image.resize`).
"""

from __future__ import annotations

import numba

from . import JIT


@numba.njit(**JIT)
def nearest_forward(x, sh, sw, out):
    b_, h, w, c = x.shape
    for b in range(b_):
        for i in range(h * sh):
            ii = i // sh
            for j in range(w * sw):
                jj = j // sw
                for k in range(c):
                    out[b, i, j, k] = x[b, ii, jj, k]


@numba.njit(**JIT)
def nearest_backward(dy, sh, sw, dx):
    """dx[b, i, j] = sum of dy over the sh x sw block that repeats pixel (i, j)."""
    b_, h, w, c = dx.shape
    for b in range(b_):
        for i in range(h):
            for j in range(w):
                for k in range(c):
                    dx[b, i, j, k] = 0
        for i in range(h * sh):
            ii = i // sh
            for j in range(w * sw):
                jj = j // sw
                for k in range(c):
                    dx[b, ii, jj, k] += dy[b, i, j, k]


@numba.njit(**JIT)
def bilinear_forward(x, y0, y1, ly, x0, x1, lx, out):
    b_, oh, ow, c = out.shape
    one = x.dtype.type(1)
    for b in range(b_):
        for i in range(oh):
            a0 = y0[i]
            a1 = y1[i]
            wy = ly[i]
            for j in range(ow):
                c0 = x0[j]
                c1 = x1[j]
                wx = lx[j]
                for k in range(c):
                    top = x[b, a0, c0, k] * (one - wx) + x[b, a0, c1, k] * wx
                    bottom = x[b, a1, c0, k] * (one - wx) + x[b, a1, c1, k] * wx
                    out[b, i, j, k] = top * (one - wy) + bottom * wy


@numba.njit(**JIT)
def bilinear_backward(dy, y0, y1, ly, x0, x1, lx, dx):
    b_, oh, ow, c = dy.shape
    h, w = dx.shape[1], dx.shape[2]
    one = dy.dtype.type(1)
    for b in range(b_):
        for i in range(h):
            for j in range(w):
                for k in range(c):
                    dx[b, i, j, k] = 0
        for i in range(oh):
            a0 = y0[i]
            a1 = y1[i]
            wy = ly[i]
            for j in range(ow):
                c0 = x0[j]
                c1 = x1[j]
                wx = lx[j]
                w00 = (one - wy) * (one - wx)
                w01 = (one - wy) * wx
                w10 = wy * (one - wx)
                w11 = wy * wx
                for k in range(c):
                    g = dy[b, i, j, k]
                    dx[b, a0, c0, k] += g * w00
                    dx[b, a0, c1, k] += g * w01
                    dx[b, a1, c0, k] += g * w10
                    dx[b, a1, c1, k] += g * w11
