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
from .conv import share_count


@numba.njit(**JIT)
def _max_forward(x, g, n0, n1, out, argmax):
    """x (N, H, W, C) -> out (N, Ho, Wo, C) and argmax (N, Ho, Wo, C): the winner's flat index ih*W + iw
    (the first one on ties), so backward routes each gradient without searching again; samples n0:n1.
    The channel loop is branch-free (selects) so it vectorises."""
    kh, kw, sh, sw, dh, dw, ph, pw = g
    _, h_, w_, c_ = x.shape
    _, ho, wo, _ = out.shape
    if kh == 2 and kw == 2 and ph == 0 and pw == 0 and (ho - 1) * sh + 2 <= h_ and (wo - 1) * sw + 2 <= w_:
        _max_forward_2x2(x, sh, sw, n0, n1, out, argmax)
        return
    for n in range(n0, n1):
        for oh in range(ho):
            h0 = max(oh * sh - ph, 0)
            h1 = min(oh * sh - ph + kh, h_)
            for ow in range(wo):
                w0 = max(ow * sw - pw, 0)
                w1 = min(ow * sw - pw + kw, w_)
                o = out[n, oh, ow]  # (C,)
                a = argmax[n, oh, ow]  # (C,)
                # Start from the first valid position rather than -inf (fastmath assumes no infinities).
                first = x[n, h0, w0]
                k0 = argmax.dtype.type(h0 * w_ + w0)  # in argmax's int32, so the selects stay lane for lane
                for c in range(c_):
                    o[c] = first[c]
                    a[c] = k0
                for ih in range(h0, h1):
                    for iw in range(w0, w1):
                        v = x[n, ih, iw]  # (C,)
                        k = argmax.dtype.type(ih * w_ + iw)
                        for c in range(c_):
                            better = v[c] > o[c]
                            o[c] = v[c] if better else o[c]
                            a[c] = k if better else a[c]


@numba.njit(**JIT)
def _max_forward_2x2(x, sh, sw, n0, n1, out, argmax):
    """_max_forward where every window is a full 2 x 2 (the usual MaxPooling2D(2)): one pass over the
    channels per window where the general loop takes five. A function of its own: with the general loop
    beside it in one function, LLVM compiled this one no faster than that loop."""
    _, h_, w_, c_ = x.shape
    _, ho, wo, _ = out.shape
    for n in range(n0, n1):
        for oh in range(ho):
            for ow in range(wo):
                h0, w0 = oh * sh, ow * sw
                p00, p01, p10, p11 = x[n, h0, w0], x[n, h0, w0 + 1], x[n, h0 + 1, w0], x[n, h0 + 1, w0 + 1]  # (C,)
                k00 = argmax.dtype.type(h0 * w_ + w0)  # indexes in argmax's int32: selects lane for lane
                k01 = argmax.dtype.type(k00 + 1)
                k10 = argmax.dtype.type(k00 + w_)
                k11 = argmax.dtype.type(k10 + 1)
                o = out[n, oh, ow]  # (C,)
                a = argmax[n, oh, ow]  # (C,)
                for c in range(c_):  # one select per value (a select of tuples would branch)
                    best = p00[c]
                    k = k00
                    better = p01[c] > best
                    best = p01[c] if better else best
                    k = k01 if better else k
                    better = p10[c] > best
                    best = p10[c] if better else best
                    k = k10 if better else k
                    better = p11[c] > best
                    best = p11[c] if better else best
                    k = k11 if better else k
                    o[c] = best
                    a[c] = k


@numba.njit(**JIT)
def _max_backward(dy, argmax, g, n0, n1, dx):
    """dy (N, Ho, Wo, C) -> dx (N, H, W, C), samples n0:n1: each gradient goes to its window's winner
    (sums on overlap). Each window position takes dy where it is the winner, 0 elsewhere (a select that
    vectorises, where scattering through argmax would not). Windows that tile the input (stride = pool
    size, no padding before: the usual MaxPooling2D(2)) each own their positions, which are then written
    once instead of zeroed and added to."""
    kh, kw, sh, sw, dh, dw, ph, pw = g
    _, h_, w_, c_ = dx.shape
    _, ho, wo, _ = dy.shape
    zero = dx.dtype.type(0)
    tiled = sh == kh and sw == kw and ph == 0 and pw == 0
    for n in range(n0, n1):
        if tiled:  # only the positions past the last window (a 'valid' floor) are left to zero
            dx[n, min(ho * sh, h_) :] = 0
            dx[n, :, min(wo * sw, w_) :] = 0
        else:
            dx[n] = 0
        for oh in range(ho):
            h0 = max(oh * sh - ph, 0)
            h1 = min(oh * sh - ph + kh, h_)
            for ow in range(wo):
                w0 = max(ow * sw - pw, 0)
                w1 = min(ow * sw - pw + kw, w_)
                d = dy[n, oh, ow]  # (C,)
                a = argmax[n, oh, ow]  # (C,)
                for ih in range(h0, h1):
                    for iw in range(w0, w1):
                        k = argmax.dtype.type(ih * w_ + iw)  # compared in argmax's int32, lane for lane
                        t = dx[n, ih, iw]  # (C,)
                        if tiled:
                            for c in range(c_):
                                t[c] = d[c] if a[c] == k else zero
                        else:
                            for c in range(c_):
                                t[c] += d[c] if a[c] == k else zero


@numba.njit(**JIT)
def _avg_forward(x, g, n0, n1, out):
    """x (N, H, W, C) -> out (N, Ho, Wo, C), samples n0:n1: the mean over each window's valid (unpadded)
    positions."""
    kh, kw, sh, sw, dh, dw, ph, pw = g
    _, h_, w_, c_ = x.shape
    _, ho, wo, _ = out.shape
    one = x.dtype.type(1)
    for n in range(n0, n1):
        for oh in range(ho):
            h0 = max(oh * sh - ph, 0)
            h1 = min(oh * sh - ph + kh, h_)
            for ow in range(wo):
                w0 = max(ow * sw - pw, 0)
                w1 = min(ow * sw - pw + kw, w_)
                o = out[n, oh, ow]  # (C,)
                o[:] = 0
                for ih in range(h0, h1):
                    for iw in range(w0, w1):
                        v = x[n, ih, iw]  # (C,)
                        for c in range(c_):
                            o[c] += v[c]
                scale = one / x.dtype.type((h1 - h0) * (w1 - w0))
                for c in range(c_):
                    o[c] *= scale


@numba.njit(**JIT)
def _avg_backward(dy, g, n0, n1, dx):
    """dy (N, Ho, Wo, C) -> dx (N, H, W, C), samples n0:n1: each window spreads dy / (its valid count)
    over its positions."""
    kh, kw, sh, sw, dh, dw, ph, pw = g
    _, h_, w_, c_ = dx.shape
    _, ho, wo, _ = dy.shape
    one = dx.dtype.type(1)
    for n in range(n0, n1):
        dx[n] = 0
        for oh in range(ho):
            h0 = max(oh * sh - ph, 0)
            h1 = min(oh * sh - ph + kh, h_)
            for ow in range(wo):
                w0 = max(ow * sw - pw, 0)
                w1 = min(ow * sw - pw + kw, w_)
                d = dy[n, oh, ow]  # (C,)
                scale = one / dx.dtype.type((h1 - h0) * (w1 - w0))
                for ih in range(h0, h1):
                    for iw in range(w0, w1):
                        t = dx[n, ih, iw]  # (C,)
                        for c in range(c_):
                            t[c] += d[c] * scale


# Samples are split between Numba's threads (one parallel loop for max pooling's two passes, one for
# average pooling's: a model compiles the code of the kind it uses only, in the loop and out of it);
# split=False runs the whole batch on the calling thread (global pooling: one cheap pass over the input,
# shorter than waking a thread). Any split gives the same bits: each sample is computed whole.


@numba.njit(**JIT)
def _max_samples(backward, a, argmax, g, n0, n1, out):
    """Max pooling over samples n0:n1: a = x -> out (forward), or a = dy -> out = dx (backward)."""
    if backward:
        _max_backward(a, argmax, g, n0, n1, out)
    else:
        _max_forward(a, g, n0, n1, out, argmax)


@numba.njit(**JIT)
def _avg_samples(backward, a, g, n0, n1, out):
    """Average pooling over samples n0:n1, as _max_samples."""
    if backward:
        _avg_backward(a, g, n0, n1, out)
    else:
        _avg_forward(a, g, n0, n1, out)


@numba.njit(parallel=True, **JIT)
def _max_split(backward, a, argmax, g, n, parts, out):
    for t in numba.prange(parts):
        _max_samples(backward, a, argmax, g, n * t // parts, n * (t + 1) // parts, out)


@numba.njit(parallel=True, **JIT)
def _avg_split(backward, a, g, n, parts, out):
    for t in numba.prange(parts):
        _avg_samples(backward, a, g, n * t // parts, n * (t + 1) // parts, out)


def _parts(n, split):
    return share_count(n) if split else 1  # one share: without the parallel loop's compile


def max_forward(x, g, out, argmax, split=True):
    """_max_forward over the whole batch, samples shared between threads."""
    n, parts = x.shape[0], _parts(x.shape[0], split)
    if parts <= 1:
        _max_samples(False, x, argmax, g, 0, n, out)
    else:
        _max_split(False, x, argmax, g, n, parts, out)


def max_backward(dy, argmax, g, dx, split=True):
    n, parts = dx.shape[0], _parts(dx.shape[0], split)
    if parts <= 1:
        _max_samples(True, dy, argmax, g, 0, n, dx)
    else:
        _max_split(True, dy, argmax, g, n, parts, dx)


def avg_forward(x, g, out, split=True):
    n, parts = x.shape[0], _parts(x.shape[0], split)
    if parts <= 1:
        _avg_samples(False, x, g, 0, n, out)
    else:
        _avg_split(False, x, g, n, parts, out)


def avg_backward(dy, g, dx, split=True):
    n, parts = dx.shape[0], _parts(dx.shape[0], split)
    if parts <= 1:
        _avg_samples(True, dy, g, 0, n, dx)
    else:
        _avg_split(True, dy, g, n, parts, dx)
