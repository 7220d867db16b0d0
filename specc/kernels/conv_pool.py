"""A convolution (linear or ReLU) and the max pooling that takes its output, run as one step chunk by chunk
(the engine fuses the two layers when nothing else reads the convolution's output: specc/layers/fusion.py).

Why. Run as two layers, the convolution's output is the largest tensor of a CNN, and it crosses memory
five times per training step: written by the convolution, read by the pooling, its gradient written by the
pooling's backward, then read by the convolution's backward along with the output itself (the ReLU's
mask). A layer with few multiply-adds per output value, such as a usual first layer (28x28x1 -> 32 with a
3 x 3 kernel: 9 per output value), is bound by that traffic. Here each chunk of samples goes through the
convolution into a per-thread scratch that stays in L2, and is pooled from there; backward routes the
pooled gradient back into that scratch and takes the kernel gradient from it. Only the pooled output, its
winners and x go to memory.

Two paths. Where `pair` allows (float32 on AVX-512 or AVX2, no convolution padding, 2 x 2 pooling with stride
2: the usual CNN block), conv_pool_tiles computes the pair with the convolution's outputs in registers
only, and keeps each window's winner as an int8 code; its outputs are the layers' bits, its kernel and bias
gradients the same sums in another order (within float32 rounding of float64: tests/test_fusion.py). When
the input gradient is needed too, backward takes all three gradients from the winners chunk by chunk
(_codes_backward_range; tests/test_conv_pool_dx.py), since only one convolution output in four has a
gradient.
Elsewhere the pieces are the layers' own kernels (conv._forward_rows / _backward_rows,
pooling._max_forward / _max_backward) on the same chunks conv_forward uses, and every result is
bit-for-bit that of the two layers run apart.
"""

from __future__ import annotations

from typing import NamedTuple

import numba
import numpy as np
from numba import types
from numba.extending import overload

from ..workspace import empty
from . import JIT, native
from .conv import (
    _backward_rows,
    _chunking,
    _forward_rows,
    _scratch,
    _sum_parts,
    one_blas_thread,
    share_count,
    tiles_ready,
)
from .pooling import _max_backward, _max_forward


@numba.njit(**JIT)
def _forward_range(x, kernel, bias, use_bias, relu, g, pg, ho, wo, spc, t0, t1, scratch, z_scratch, out, argmax):
    """Chunks t0:t1 of spc samples each, on the calling thread: the chunk's convolution (Ho, Wo, F) per
    sample, into z_scratch, then max-pooled by window geometry pg into out and argmax (N, Po, Qo, F)."""
    n_ = x.shape[0]
    f = kernel.shape[1]
    per = ho * wo
    for t in range(t0, t1):
        n0 = t * spc
        n1 = min(n0 + spc, n_)
        z = z_scratch[: (n1 - n0) * per * f].reshape(n1 - n0, ho, wo, f)
        _forward_rows(x, kernel, bias, use_bias, relu, g, n0, n1, ho, wo, scratch, z.reshape((n1 - n0) * per, f))
        _max_forward(z, pg, 0, n1 - n0, out[n0:n1], argmax[n0:n1])


@numba.njit(**JIT)
def _backward_range(x, kernel, dp, pooled, argmax, relu, use_bias, need_dk, need_dx, g, pg, ho, wo, spc, t0, t1,
                    scratch, dz_scratch, dp_scratch, dk_parts, db_parts, dx):
    """Chunks t0:t1, on the calling thread: the pooled gradient dp (N, Po, Qo, F), through the ReLU, is
    routed to the pooling's winners in dz_scratch (the chunk's convolution output gradient), from which
    _backward_rows takes the chunk's kernel, bias and input gradients."""
    n_ = x.shape[0]
    f = kernel.shape[1]
    per = ho * wo
    zero = dp.dtype.type(0)
    for t in range(t0, t1):
        n0 = t * spc
        n1 = min(n0 + spc, n_)
        # The ReLU passed the winner's gradient where the pooled output is > 0: the maximum of a ReLU's
        # outputs is the ReLU of the maximum, and its winner is the same position.
        src = dp[n0:n1]
        d = dp_scratch[: src.size].reshape(src.shape)  # (n1 - n0, Po, Qo, F)
        kept = pooled[n0:n1]
        for a in range(src.shape[0]):
            for b in range(src.shape[1]):
                for c in range(src.shape[2]):
                    for q in range(f):
                        d[a, b, c, q] = src[a, b, c, q] if kept[a, b, c, q] > zero or not relu else zero
        dz = dz_scratch[: (n1 - n0) * per * f].reshape(n1 - n0, ho, wo, f)
        _max_backward(d, argmax[n0:n1], pg, 0, n1 - n0, dz)
        _backward_rows(x, kernel, dz.reshape((n1 - n0) * per, f), use_bias, need_dk, need_dx, g, n0, n1, ho, wo, t,
                       scratch, dk_parts, db_parts, dx)


def _runs(v, dk, r, x, at, dx, kt, run):
    """dk[r:r + run] += v * x[at:at + run] and dx[at:at + run] += v * kt[r:r + run] (1-D arrays).

    Compiled (the overload below): native.conv_pool_tiles.axpy_pair on C-contiguous float32 arrays, else
    the same loops."""
    dk[r : r + run] += v * x[at : at + run]
    dx[at : at + run] += v * kt[r : r + run]


@overload(_runs, jit_options=JIT)
def _runs_njit(v, dk, r, x, at, dx, kt, run):
    tiles = native.conv_pool_tiles
    arrays = (dk, x, dx, kt)
    if tiles is not None and all(a.dtype == types.float32 and a.layout == "C" for a in arrays):
        return lambda v, dk, r, x, at, dx, kt, run: tiles.axpy_pair(
            v, dk.ctypes.data + 4 * r, x.ctypes.data + 4 * at, dx.ctypes.data + 4 * at, kt.ctypes.data + 4 * r, run)

    def loops(v, dk, r, x, at, dx, kt, run):
        dk_run, x_run, dx_run, k_run = dk[r : r + run], x[at : at + run], dx[at : at + run], kt[r : r + run]
        for e in range(run):  # (slices: indexes from 0, which vectorise)
            dk_run[e] += v * x_run[e]
        for e in range(run):
            dx_run[e] += v * k_run[e]

    return loops


@numba.njit(**JIT)
def _codes_backward_range(x, kernel_t, dp, code, use_bias, g, spc, t0, t1, dk_t, dk_parts, db_parts, dx):
    """The kernel, bias and input gradients of chunks t0:t1 from the direct path's winner codes (N, Po, Qo,
    F), on the calling thread, for a convolution without padding. Only the winners take a gradient (one
    output in four, none where the code is BLOCKED: the ReLU stopped it), so each window's gradient goes
    straight from its winner's taps: per filter, dk_t[f] (K,) += d * the winner's taps of x and dx's taps
    += d * kernel_t[f] (K,), a contiguous run of kw*C per kernel row, instead of a dense convolution
    backward over an output gradient three quarters zeros. kernel_t (F, K) is the kernel transposed;
    dk_t (F, K) scratch; x and dx (N, H, W, C) C-contiguous. Sums in sample, filter, window order: the same
    bits at any thread count."""
    n_, h_, w_, c_ = x.shape
    _, po, qo, f_ = dp.shape
    kh, kw, sh, sw, dh, dw = g[0], g[1], g[2], g[3], g[4], g[5]
    k = kernel_t.shape[1]
    hwc = h_ * w_ * c_
    run = kw * c_ if dw == 1 else c_  # taps contiguous in x (and in a kernel row)
    xf = x.reshape(n_ * hwc)
    dxf = dx.reshape(n_ * hwc)
    blocked = code.dtype.type(4)
    for t in range(t0, t1):
        n0 = t * spc
        n1 = min(n0 + spc, n_)
        dk_t[...] = 0
        dxf[n0 * hwc : n1 * hwc] = 0
        if use_bias:
            db_parts[t, :] = 0
        for n in range(n0, n1):
            xs = xf[n * hwc : (n + 1) * hwc]
            dxs = dxf[n * hwc : (n + 1) * hwc]
            for f in range(f_):
                dkf = dk_t[f]
                ktf = kernel_t[f]
                bias = dp.dtype.type(0)
                for p in range(po):
                    for q in range(qo):
                        cd = code[n, p, q, f]
                        if cd == blocked:
                            continue
                        v = dp[n, p, q, f]
                        bias += v
                        oh, ow = 2 * p + (cd >> 1), 2 * q + (cd & 1)
                        origin = (oh * sh * w_ + ow * sw) * c_
                        for i in range(kh):
                            for j0 in range(0, kw * c_, run):  # one run per kernel row without dilation
                                r = i * kw * c_ + j0
                                at = origin + i * dh * w_ * c_ + (j0 // c_) * dw * c_
                                _runs(v, dkf, r, xs, at, dxs, ktf, run)
                if use_bias:
                    db_parts[t, f] += bias
        dk = dk_parts[t]
        for r in range(k):
            for f in range(f_):
                dk[r, f] = dk_t[f, r]


class Pair(NamedTuple):
    """A convolution + pooling pair's geometry and chunking for one input shape (see `pair`)."""

    g: tuple  # the convolution's window geometry (kernels/conv.py)
    pg: tuple  # the pooling's, over the convolution's output
    ho: int  # the convolution's output height and width
    wo: int
    taps: np.ndarray | None  # for the direct path: the kernel's taps as offsets into x; None: the chunked path
    spc: int  # samples per chunk (conv._chunking)
    chunks: int


def pair(x_shape, dtype, g, pg, conv_hw, pooled_hw, filters) -> Pair:
    """The Pair for x (N, H, W, C) of `dtype` and a kernel of `filters`. The direct path (conv_pool_tiles)
    takes float32 on AVX-512 or AVX2, a convolution without padding and 2 x 2 pooling windows with stride 2, all
    inside the convolution's output (Ho, Wo) -> (Po, Qo); its taps are (i, j, channel) in the kernel's row
    order."""
    (ho, wo), (po, qo) = conv_hw, pooled_hw
    n, h, w, c = x_shape
    kh, kw, sh, sw, dh, dw = g[:6]
    # No padding on any side for the windows the pooling reads: 'same' pads an even side only below or
    # right (g holds the top and left padding), and the direct tiles read the input unpadded.
    unpadded = (g[6] == 0 and g[7] == 0 and (2 * po - 1) * sh + (kh - 1) * dh < h
                and (2 * qo - 1) * sw + (kw - 1) * dw < w)
    direct = (native.conv_pool_tiles is not None and np.dtype(dtype) == np.float32 and unpadded
              and tuple(pg) == (2, 2, 2, 2, 1, 1, 0, 0) and 0 < 2 * po <= ho and 0 < 2 * qo <= wo)
    taps = None
    if direct:
        taps = np.array([(i * dh * w + j * dw) * c + ch for i in range(kh) for j in range(kw) for ch in range(c)],
                        np.int64)
    spc, chunks = _chunking(n, ho * wo, kh * kw * c, filters, np.dtype(dtype).itemsize)
    return Pair(tuple(g), tuple(pg), ho, wo, taps, spc, chunks)


# The two entry points run at every training step, right after a kernel that streamed megabytes through
# the caches, where every Python call is slow: what depends on the shapes only is in the Pair, worked out
# once per shape (layers/fusion.py keeps them).
def conv_pool_forward(x, kernel, bias, use_bias, relu, geometry: Pair, out, winners):
    """x (N, H, W, C) in any layout, kernel (kh*kw*C, F), bias (F,) -> out and winners (N, Po, Qo, F),
    C-contiguous: the max pooling of the convolution (then max(., 0) with relu), as conv.conv_forward
    followed by pooling.max_forward compute them, without the convolution's full output. winners: int8
    codes from conv_pool_tiles on the direct path (geometry.taps), else int32, each winner's flat index
    oh*Wo + ow in the convolution's output."""
    g, pg, ho, wo, taps, spc, chunks = geometry
    if taps is not None:
        native.conv_pool_tiles.run_forward(x, kernel, bias, use_bias, relu, g[2], g[3], taps, spc, out, winners)
        return
    x = np.ascontiguousarray(x)
    f = kernel.shape[1]
    scratch = _scratch(chunks, spc * ho * wo * kernel.shape[0], x.dtype)
    z_scratch = empty("conv output", (share_count(chunks), spc * ho * wo * f), x.dtype)
    tiles_ready(x.dtype)
    parts = share_count(chunks)
    if parts <= 1:  # without the parallel loop's compile
        _forward_range(x, kernel, bias, use_bias, relu, g, pg, ho, wo, spc, 0, chunks, scratch[0], z_scratch[0], out,
                       winners)
        return
    with one_blas_thread():
        _forward_split(x, kernel, bias, use_bias, relu, g, pg, ho, wo, spc, chunks, parts, scratch, z_scratch, out,
                       winners)


def conv_pool_backward(x, kernel, dp, pooled, winners, relu, use_bias, need_dx, geometry: Pair, dkernel, dbias, dx):
    """The gradients of conv_pool_forward from dp (N, Po, Qo, F) in any layout, the gradient of its output
    `pooled`: dkernel (kh*kw*C, F), dbias (F,) and, with need_dx, dx (N, H, W, C). Per-chunk partial sums
    in chunk order, as conv.conv_backward. When forward took the direct path: its tiles without dx, else
    _codes_backward_range."""
    g, pg, ho, wo, taps, spc, chunks = geometry
    k, f = kernel.shape
    if taps is not None and not need_dx:
        parts = empty("gradient parts", (chunks, k + 1, f), x.dtype)  # per chunk: the kernel's rows, the bias
        native.conv_pool_tiles.run_backward(x, dp, winners, use_bias, g[2], g[3], taps, spc, parts, dkernel, dbias)
        return
    x, dp, shares = np.ascontiguousarray(x), np.ascontiguousarray(dp), share_count(chunks)
    dk_parts = empty("kernel gradient parts", (chunks, k, f), x.dtype)
    db_parts = empty("bias gradient parts", (chunks if use_bias else 0, f), x.dtype)
    if taps is not None:  # the input gradient too, from the winner codes
        kernel_t = empty("kernel by filter", (f, k), x.dtype)
        kernel_t[...] = kernel.T
        dk_t = empty("kernel gradient by filter", (shares, f, k), x.dtype)
        if shares <= 1:
            _codes_backward_range(x, kernel_t, dp, winners, use_bias, g, spc, 0, chunks, dk_t[0], dk_parts, db_parts,
                                  dx)
        else:
            _codes_split(x, kernel_t, dp, winners, use_bias, g, spc, chunks, shares, dk_t, dk_parts, db_parts, dx)
    else:
        scratch = _scratch(chunks, spc * ho * wo * k, x.dtype)
        dz_scratch = empty("conv output gradient", (shares, spc * ho * wo * f), x.dtype)
        dp_scratch = empty("pooled gradient", (shares, spc * dp[0].size), x.dtype)
        tiles_ready(x.dtype)
        if shares <= 1:
            _backward_range(x, kernel, dp, pooled, winners, relu, use_bias, True, need_dx, g, pg, ho, wo, spc, 0,
                            chunks, scratch[0], dz_scratch[0], dp_scratch[0], dk_parts, db_parts, dx)
        else:
            with one_blas_thread():
                _backward_split(x, kernel, dp, pooled, winners, relu, use_bias, need_dx, g, pg, ho, wo, spc, chunks,
                                shares, scratch, dz_scratch, dp_scratch, dk_parts, db_parts, dx)
    _sum_parts(dk_parts, dbias, db_parts, True, use_bias, dkernel)


# The three chunk loops above split over Numba's threads, range t with scratch row t (see conv._split); one
# parallel loop each, compiled only for the path a layer takes (their winner codes' types differ).
@numba.njit(parallel=True, **JIT)
def _forward_split(x, kernel, bias, use_bias, relu, g, pg, ho, wo, spc, chunks, parts, scratch, z_scratch, out,
                   argmax):
    for t in numba.prange(parts):
        _forward_range(x, kernel, bias, use_bias, relu, g, pg, ho, wo, spc, chunks * t // parts,
                       chunks * (t + 1) // parts, scratch[t], z_scratch[t], out, argmax)


@numba.njit(parallel=True, **JIT)
def _codes_split(x, kernel_t, dp, code, use_bias, g, spc, chunks, parts, dk_t, dk_parts, db_parts, dx):
    for t in numba.prange(parts):
        _codes_backward_range(x, kernel_t, dp, code, use_bias, g, spc, chunks * t // parts,
                              chunks * (t + 1) // parts, dk_t[t], dk_parts, db_parts, dx)


@numba.njit(parallel=True, **JIT)
def _backward_split(x, kernel, dp, pooled, argmax, relu, use_bias, need_dx, g, pg, ho, wo, spc, chunks, parts,
                    scratch, dz_scratch, dp_scratch, dk_parts, db_parts, dx):
    for t in numba.prange(parts):
        _backward_range(x, kernel, dp, pooled, argmax, relu, use_bias, True, need_dx, g, pg, ho, wo, spc,
                        chunks * t // parts, chunks * (t + 1) // parts, scratch[t], dz_scratch[t], dp_scratch[t],
                        dk_parts, db_parts, dx)
