"""Convolutions, channels_last: im2col + GEMM for Conv1D/Conv2D (and, as their adjoint, Conv2DTranspose);
direct loops for DepthwiseConv2D.

Every window is described by one geometry tuple `g = (kh, kw, sh, sw, dh, dw, pad_top, pad_left)`: kernel
size, strides, dilation and the padding before each axis (padding after needs no number: reads past the
end are zeros and writes past it are dropped). A 1-D layer runs as 2-D with H = 1 and a 1 x k kernel, so
the same compiled code serves both.

im2col lays the window of output position (n, oh, ow) out as one row of `cols`, taps in (i, j, c) order,
which is exactly the order of a Keras kernel (kh, kw, C, F) reshaped to (kh*kw*C, F). Reading x[n, ih, iw, :]
copies C contiguous values, so the copy is cache friendly in channels_last; the convolution itself is then
a BLAS GEMM (np.dot inside njit calls BLAS through SciPy).

The batch is cut into chunks of whole samples, run in parallel (`prange`): each chunk lays out only its own
windows, in a per-thread scratch that stays in L2, and runs its own single-threaded GEMM, instead of one
im2col of the whole batch (tens of MB) followed by one multi-threaded GEMM. Sums over the batch (kernel
and bias gradients) go to per-chunk partials added in chunk order, so results are bit-for-bit the same at
any thread count. A pointwise geometry (1 x 1 kernel, stride 1, no padding) needs no im2col at all: the
kernels multiply x's rows directly.
"""

from __future__ import annotations

import contextlib
import functools

import numba
import numpy as np

from . import JIT

# Samples per chunk: as many as keep a chunk's windows and outputs ((rows, K) + (rows, F)) within about
# CHUNK_BYTES, so the GEMM reads windows that were just written and the bias pass finds the GEMM's output
# in cache (1 MB measured a few % faster than 256 or 512 KB on the 13x13x32 -> 64 benchmark layer, and
# no slower than 2 MB); but at least MIN_CHUNKS chunks per batch, so two threads share the work evenly.
# The chunking depends on the shapes only, never on the thread count, so results are the same at any
# thread count.
CHUNK_BYTES = 1024 * 1024
MIN_CHUNKS = 16
# Below this many channels the windows are laid out tap-major, cols_t (K, rows): each tap's row is then a
# contiguous copy of an input row (for C = 1) instead of C-element pieces; BLAS reads it transposed.
TAP_MAJOR_BELOW_C = 4


@numba.njit(**JIT)
def _pointwise(g):
    return g[0] == 1 and g[1] == 1 and g[2] == 1 and g[3] == 1 and g[6] == 0 and g[7] == 0


@numba.njit(**JIT)
def _samples_per_chunk(n, rows_per_sample, k, f, itemsize):
    by_cache = CHUNK_BYTES // max(rows_per_sample * (k + f) * itemsize, 1)
    by_balance = (n + MIN_CHUNKS - 1) // MIN_CHUNKS
    return max(1, min(by_cache, by_balance))


@numba.njit(**JIT)
def _valid_outputs(wo, stride, offset, w):
    """The range [lo, hi) of output positions ow whose input position ow*stride + offset is in [0, w)."""
    lo = max(0, -(offset // stride))
    hi = min(wo, -((offset - w) // stride))
    return lo, max(lo, hi)


@numba.njit(**JIT)
def _im2col(x, n0, n1, g, ho, wo, cols):
    """Samples n0:n1 of x (N, H, W, C) -> cols (rows, kh*kw*C), row (n - n0)*Ho*Wo + oh*Wo + ow; taps
    that fall in the padding read 0."""
    kh, kw, sh, sw, dh, dw, ph, pw = g
    _, h_, w_, c_ = x.shape
    zero = x.dtype.type(0)
    r = 0
    for n in range(n0, n1):
        for oh in range(ho):
            for ow in range(wo):
                for i in range(kh):
                    ih = oh * sh - ph + i * dh
                    for j in range(kw):
                        iw = ow * sw - pw + j * dw
                        base = (i * kw + j) * c_
                        if 0 <= ih < h_ and 0 <= iw < w_:
                            for c in range(c_):
                                cols[r, base + c] = x[n, ih, iw, c]
                        else:
                            for c in range(c_):
                                cols[r, base + c] = zero
                r += 1


@numba.njit(**JIT)
def _col2im(cols, n0, n1, g, ho, wo, x):
    """The adjoint of _im2col: cols (rows, kh*kw*C) summed into samples n0:n1 of x (N, H, W, C), which
    are zeroed first; padding dropped."""
    kh, kw, sh, sw, dh, dw, ph, pw = g
    _, h_, w_, c_ = x.shape
    x[n0:n1] = 0
    r = 0
    for n in range(n0, n1):
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
                            x[n, ih, iw, c] += cols[r, base + c]
                r += 1


@numba.njit(**JIT)
def _im2col_t(x, n0, n1, g, ho, wo, cols_t):
    """_im2col tap-major: samples n0:n1 of x (N, H, W, C) -> cols_t (kh*kw*C, rows)."""
    kh, kw, sh, sw, dh, dw, ph, pw = g
    _, h_, w_, c_ = x.shape
    zero = x.dtype.type(0)
    per = ho * wo
    for i in range(kh):
        for j in range(kw):
            lo, hi = _valid_outputs(wo, sw, j * dw - pw, w_)
            for c in range(c_):
                row = cols_t[(i * kw + j) * c_ + c]  # (rows,)
                for n in range(n0, n1):
                    for oh in range(ho):
                        ih = oh * sh - ph + i * dh
                        r = (n - n0) * per + oh * wo
                        if ih < 0 or ih >= h_:
                            row[r : r + wo] = zero
                            continue
                        row[r : r + lo] = zero
                        for ow in range(lo, hi):
                            row[r + ow] = x[n, ih, ow * sw - pw + j * dw, c]
                        row[r + hi : r + wo] = zero


@numba.njit(**JIT)
def _col2im_t(cols_t, n0, n1, g, ho, wo, x):
    """The adjoint of _im2col_t: cols_t (kh*kw*C, rows) summed into samples n0:n1 of x (N, H, W, C),
    which are zeroed first."""
    kh, kw, sh, sw, dh, dw, ph, pw = g
    _, h_, w_, c_ = x.shape
    x[n0:n1] = 0
    per = ho * wo
    for i in range(kh):
        for j in range(kw):
            lo, hi = _valid_outputs(wo, sw, j * dw - pw, w_)
            for c in range(c_):
                row = cols_t[(i * kw + j) * c_ + c]  # (rows,)
                for n in range(n0, n1):
                    for oh in range(ho):
                        ih = oh * sh - ph + i * dh
                        if ih < 0 or ih >= h_:
                            continue
                        r = (n - n0) * per + oh * wo
                        for ow in range(lo, hi):
                            x[n, ih, ow * sw - pw + j * dw, c] += row[r + ow]


@numba.njit(parallel=True, **JIT)
def conv_forward(x, kernel, bias, use_bias, g, out):
    """x (N, H, W, C), kernel (kh*kw*C, F), bias (F,) -> out (N, Ho, Wo, F).

    Chunks of samples in parallel: each chunk lays its windows out in its own scratch (rows, kh*kw*C)
    (tap-major for few channels) and multiplies them by the kernel with one BLAS GEMM, which must run
    single-threaded here (see `one_blas_thread`); a pointwise geometry multiplies x's rows directly. The
    bias is added while the chunk's output is in cache.
    Conv2DTranspose's backward uses this too, for d(input) = im2col(dy) @ kernel.
    """
    n_, h_, w_, c_ = x.shape
    _, ho, wo, f = out.shape
    k = kernel.shape[0]
    per = ho * wo
    spc = _samples_per_chunk(n_, per, k, f, x.itemsize)
    chunks = (n_ + spc - 1) // spc
    pointwise = _pointwise(g)
    tap_major = c_ < TAP_MAJOR_BELOW_C
    x2 = x.reshape(n_ * h_ * w_, c_)
    out2 = out.reshape(n_ * per, f)
    for t in numba.prange(chunks):
        n0 = t * spc
        n1 = min(n0 + spc, n_)
        r = (n1 - n0) * per
        o = out2[n0 * per : n1 * per]
        if pointwise:
            np.dot(x2[n0 * per : n1 * per], kernel, o)
        elif tap_major:
            cols_t = np.empty((k, r), x.dtype)  # this chunk's windows
            _im2col_t(x, n0, n1, g, ho, wo, cols_t)
            np.dot(cols_t.T, kernel, o)
        else:
            cols = np.empty((r, k), x.dtype)  # this chunk's windows
            _im2col(x, n0, n1, g, ho, wo, cols)
            np.dot(cols, kernel, o)
        if use_bias:
            for i in range(r):
                for q in range(f):
                    o[i, q] += bias[q]


@numba.njit(parallel=True, **JIT)
def conv_backward(x, kernel, dy, use_bias, need_dk, need_dx, g, dkernel, dbias, dx):
    """dy (N, Ho, Wo, F) -> dkernel (kh*kw*C, F) = im2col(x).T @ dy, dbias (F,) = the sum of dy over
    positions, dx (N, H, W, C) = col2im(dy @ kernel.T).

    Chunks of samples as in conv_forward (BLAS single-threaded): each chunk recomputes its windows of x
    (cheaper than keeping every window from forward: they are kh*kw times the input) and writes its own
    partial kernel and bias gradients, which are then summed in chunk order, so the result does not
    depend on the thread count. x is read only when need_dk. Conv2DTranspose's forward is the dx part
    alone (dy = its input, dx = its output); its kernel gradient is the dkernel part with x = its output
    gradient and dy = its input.
    """
    n_, ho, wo, f = dy.shape
    _, h_, w_, c_ = dx.shape
    k = kernel.shape[0]
    per = ho * wo
    spc = _samples_per_chunk(n_, per, k, f, dy.itemsize)
    chunks = (n_ + spc - 1) // spc
    pointwise = _pointwise(g)
    tap_major = c_ < TAP_MAJOR_BELOW_C
    dk_parts = np.empty((chunks, k, f), dy.dtype)  # never touched without need_dk
    db_parts = np.empty((chunks if use_bias else 0, f), dy.dtype)
    x2 = x.reshape(x.shape[0] * h_ * w_, c_)
    dx2 = dx.reshape(n_ * h_ * w_, c_)
    dy2 = dy.reshape(n_ * per, f)
    for t in numba.prange(chunks):
        n0 = t * spc
        n1 = min(n0 + spc, n_)
        r = (n1 - n0) * per
        d = dy2[n0 * per : n1 * per]
        if use_bias:
            db = db_parts[t]
            db[:] = 0
            for i in range(r):
                for q in range(f):
                    db[q] += d[i, q]
        if need_dk:
            if pointwise:
                np.dot(x2[n0 * per : n1 * per].T, d, dk_parts[t])
            elif tap_major:
                cols_t = np.empty((k, r), dy.dtype)  # this chunk's windows
                _im2col_t(x, n0, n1, g, ho, wo, cols_t)
                np.dot(cols_t, d, dk_parts[t])
            else:
                cols = np.empty((r, k), dy.dtype)  # this chunk's windows
                _im2col(x, n0, n1, g, ho, wo, cols)
                np.dot(cols.T, d, dk_parts[t])
        if need_dx:
            if pointwise:
                np.dot(d, kernel.T, dx2[n0 * per : n1 * per])
            elif tap_major:
                dcols_t = np.empty((k, r), dy.dtype)  # gradients of this chunk's windows
                np.dot(kernel, d.T, dcols_t)
                _col2im_t(dcols_t, n0, n1, g, ho, wo, dx)
            else:
                dcols = np.empty((r, k), dy.dtype)  # gradients of this chunk's windows
                np.dot(d, kernel.T, dcols)
                _col2im(dcols, n0, n1, g, ho, wo, dx)
    # Partial sums in chunk order, rows of the kernel gradient in parallel.
    if need_dk:
        for i in numba.prange(k):
            for q in range(f):
                dkernel[i, q] = 0
            for t in range(chunks):
                for q in range(f):
                    dkernel[i, q] += dk_parts[t, i, q]
    if use_bias:
        dbias[:] = 0
        for t in range(chunks):
            for q in range(f):
                dbias[q] += db_parts[t, q]


def one_blas_thread():
    """A context in which BLAS runs on one thread (about 20 us to enter and leave): conv_forward and
    conv_backward call BLAS from every Numba thread at once, and a multi-threaded BLAS would then
    oversubscribe the cores (and serialise on OpenBLAS's lock). Limited at one Numba thread too, so
    every GEMM is computed the same way at any thread count."""
    controller = _blas_controller()
    return contextlib.nullcontext() if controller is None else controller.limit(limits=1, user_api="blas")


@functools.cache
def _blas_controller():
    try:
        import scipy.linalg.cython_blas  # noqa: F401 - the BLAS Numba's np.dot calls must be loaded to be found
        from threadpoolctl import ThreadpoolController
    except ImportError:  # pragma: no cover - threadpoolctl comes with scikit-learn
        return None
    return ThreadpoolController()


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
