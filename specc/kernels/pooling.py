"""Max and average pooling, channels_last, forward and backward, over the same geometry tuple as the
convolutions: `g = (kh, kw, sh, sw, dh, dw, pad_top, pad_left)` (pooling uses dh = dw = 1).

1-D pooling runs with H = 1; global pooling is one window covering the whole image (g = (H, W, 1, 1, 1, 1,
0, 0) and a 1 x 1 output), so four kernels serve all eight pooling layers.

Padding never takes part: max pooling takes the maximum over the window's valid positions, and average
pooling divides by their number (TF/Keras 'same'). With TF's 'same' split every window holds at least one
valid position.
"""

from __future__ import annotations

import numba

from . import JIT


@numba.njit(**JIT)
def max_forward(x, g, out, argmax):
    """x (N, H, W, C) -> out (N, Ho, Wo, C) and argmax (N, Ho, Wo, C): the winner's flat index ih*W + iw
    (the first one on ties), so backward routes each gradient without searching again."""
    kh, kw, sh, sw, dh, dw, ph, pw = g
    n_, h_, w_, c_ = x.shape
    _, ho, wo, _ = out.shape
    for n in range(n_):
        for oh in range(ho):
            h0 = max(oh * sh - ph, 0)
            h1 = min(oh * sh - ph + kh, h_)
            for ow in range(wo):
                w0 = max(ow * sw - pw, 0)
                w1 = min(ow * sw - pw + kw, w_)
                # Start from the first valid position rather than -inf (fastmath assumes no infinities).
                for c in range(c_):
                    out[n, oh, ow, c] = x[n, h0, w0, c]
                    argmax[n, oh, ow, c] = h0 * w_ + w0
                for ih in range(h0, h1):
                    for iw in range(w0, w1):
                        for c in range(c_):
                            v = x[n, ih, iw, c]
                            if v > out[n, oh, ow, c]:
                                out[n, oh, ow, c] = v
                                argmax[n, oh, ow, c] = ih * w_ + iw


@numba.njit(**JIT)
def max_backward(dy, argmax, dx):
    """dy (N, Ho, Wo, C) -> dx (N, H, W, C): each gradient goes to its window's winner (sums on overlap)."""
    n_, h_, w_, c_ = dx.shape
    _, ho, wo, _ = dy.shape
    dx[...] = 0
    for n in range(n_):
        for oh in range(ho):
            for ow in range(wo):
                for c in range(c_):
                    k = argmax[n, oh, ow, c]
                    dx[n, k // w_, k % w_, c] += dy[n, oh, ow, c]


@numba.njit(**JIT)
def avg_forward(x, g, out):
    """x (N, H, W, C) -> out (N, Ho, Wo, C): the mean over each window's valid (unpadded) positions."""
    kh, kw, sh, sw, dh, dw, ph, pw = g
    n_, h_, w_, c_ = x.shape
    _, ho, wo, _ = out.shape
    one = x.dtype.type(1)
    for n in range(n_):
        for oh in range(ho):
            h0 = max(oh * sh - ph, 0)
            h1 = min(oh * sh - ph + kh, h_)
            for ow in range(wo):
                w0 = max(ow * sw - pw, 0)
                w1 = min(ow * sw - pw + kw, w_)
                for c in range(c_):
                    out[n, oh, ow, c] = 0
                for ih in range(h0, h1):
                    for iw in range(w0, w1):
                        for c in range(c_):
                            out[n, oh, ow, c] += x[n, ih, iw, c]
                scale = one / x.dtype.type((h1 - h0) * (w1 - w0))
                for c in range(c_):
                    out[n, oh, ow, c] *= scale


@numba.njit(**JIT)
def avg_backward(dy, g, dx):
    """dy (N, Ho, Wo, C) -> dx (N, H, W, C): each window spreads dy / (its valid count) over its positions."""
    kh, kw, sh, sw, dh, dw, ph, pw = g
    n_, h_, w_, c_ = dx.shape
    _, ho, wo, _ = dy.shape
    one = dx.dtype.type(1)
    dx[...] = 0
    for n in range(n_):
        for oh in range(ho):
            h0 = max(oh * sh - ph, 0)
            h1 = min(oh * sh - ph + kh, h_)
            for ow in range(wo):
                w0 = max(ow * sw - pw, 0)
                w1 = min(ow * sw - pw + kw, w_)
                scale = one / dx.dtype.type((h1 - h0) * (w1 - w0))
                for ih in range(h0, h1):
                    for iw in range(w0, w1):
                        for c in range(c_):
                            dx[n, ih, iw, c] += dy[n, oh, ow, c] * scale
