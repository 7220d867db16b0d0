"""DepthwiseConv2D, channels_last: direct loops over flat rows (there is no GEMM to batch).

The geometry tuple `g = (kh, kw, sh, sw, dh, dw, pad_top, pad_left)` is the convolutions' (kernels/conv.py).
With one filter per channel (multiplier 1), tap (i, j) adds to output row (n, oh) the input row
ih = oh * sh - pad_top + i * dh, column ow * sw + j * dw - pad_left, times the tap's (C,) weights. For
stride 1 the columns that tap reaches form one contiguous run of the input row, and the outputs they feed
one contiguous run of the output row: in flat (W * C) terms, out[a:a+L] += x[b:b+L] * k_tiled[:L], where
k_tiled repeats the tap's C weights along the row. That is one long vector loop per tap and row, instead of
a short C-element loop per output position (48 channels is less than one unrolled AVX-512 loop body, so
those ran in the scalar remainder). For stride s > 1 the input row is first split into its s phases
(columns r, r + s, ...), each contiguous, and a tap reads one phase; backward accumulates the input
gradient of strided layers in the same phase rows and adds them back into the row.

Indices into the flat views are cast to unsigned: Numba's wraparound for negative (signed) indices on a
computed index would otherwise stop LLVM from vectorising the loops. Every index is non-negative by
construction (the valid column range of each tap is worked out before its loop).

A depth multiplier m > 1 runs as multiplier 1 over the input with each channel repeated m times (channel
c * m + q of the output reads channel c: TF/Keras order); its input gradient is then summed over the copies.

The batch is cut into chunks of samples (a function of the batch size alone) shared between threads; each
chunk sums its kernel and bias gradients into its own tiled partials (one slot per output column and
channel), added at the end in a fixed order in float64, so results are the same bits at any thread count.
"""

from __future__ import annotations

import numba
import numpy as np

from ..workspace import empty
from . import JIT
from .conv import MIN_CHUNKS, in_threads


@numba.njit(**JIT)
def _tap_columns(j, g, w_, wo):
    """For kernel column j: (phase r, column offset base, first and last+1 output column) such that output
    column ow reads column ow + base of phase row r (columns r, r + sw, ... of the input row)."""
    kh, kw, sh, sw, dh, dw, ph, pw = g
    off = j * dw - pw
    r = off % sw  # Python's modulo: in [0, sw)
    base = (off - r) // sw
    cnt = (w_ - r + sw - 1) // sw  # columns in phase r
    return r, base, max(0, -base), min(wo, cnt - base)


@numba.njit(**JIT)
def _split_phases(xf, row, w_, c_, sw, cnt, phases):
    """phases[(r * cnt + k) * C + c] = x row's column k * sw + r, channel c (flat row starting at `row`)."""
    for r in range(sw):
        for k in range((w_ - r + sw - 1) // sw):
            src = row + (k * sw + r) * c_
            dst = (r * cnt + k) * c_
            for c in range(c_):
                phases[np.uint64(dst + c)] = xf[np.uint64(src + c)]


@numba.njit(**JIT)
def _merge_phases(phases, w_, c_, sw, cnt, row, dxf):
    """dx row (flat, starting at `row`) += the phase rows, the inverse layout of _split_phases."""
    for r in range(sw):
        for k in range((w_ - r + sw - 1) // sw):
            dst = row + (k * sw + r) * c_
            src = (r * cnt + k) * c_
            for c in range(c_):
                dxf[np.uint64(dst + c)] += phases[np.uint64(src + c)]


@numba.njit(**JIT)
def _forward_range(x, kt, bias_t, g, n0, n1, out):
    """Samples n0:n1 of out (N, Ho, Wo, C) from x (N, H, W, C); kt (kh*kw, Wo*C) each tap's weights repeated
    Wo times, bias_t (Wo*C,) the bias likewise (zeros without one)."""
    kh, kw, sh, sw, dh, dw, ph, pw = g
    _, h_, w_, c_ = x.shape
    _, ho, wo, _ = out.shape
    xf = x.reshape(x.size)
    of = out.reshape(out.size)
    ktf = kt.reshape(kt.size)
    row_len = wo * c_
    cnt = (w_ + sw - 1) // sw
    phases = np.empty(sw * cnt * c_ if sw > 1 else 0, x.dtype)
    for n in range(n0, n1):
        for oh in range(ho):
            orow = (n * ho + oh) * row_len
            for p in range(row_len):
                of[np.uint64(orow + p)] = bias_t[p]
            for i in range(kh):
                ih = oh * sh - ph + i * dh
                if ih < 0 or ih >= h_:
                    continue
                xrow = (n * h_ + ih) * w_ * c_
                if sw > 1:
                    _split_phases(xf, xrow, w_, c_, sw, cnt, phases)
                for j in range(kw):
                    r, base, lo, hi = _tap_columns(j, g, w_, wo)
                    if lo >= hi:
                        continue
                    ob = orow + lo * c_
                    kb = (i * kw + j) * row_len + lo * c_
                    length = (hi - lo) * c_
                    if sw == 1:
                        xb = xrow + (lo + base) * c_
                        for p in range(length):
                            of[np.uint64(ob + p)] += xf[np.uint64(xb + p)] * ktf[np.uint64(kb + p)]
                    else:
                        xb = (r * cnt + lo + base) * c_
                        for p in range(length):
                            of[np.uint64(ob + p)] += phases[np.uint64(xb + p)] * ktf[np.uint64(kb + p)]


@numba.njit(**JIT)
def _backward_range(x, kt, dy, use_bias, need_dx, g, n0, n1, dkt, dbt, dx):
    """For samples n0:n1: kernel gradient partials dkt (kh*kw, Wo*C) and bias gradient partials dbt (Wo*C,)
    (overwritten; slot ow*C + c of a tap holds channel c), input gradient dx (N, H, W, C) when need_dx."""
    kh, kw, sh, sw, dh, dw, ph, pw = g
    _, h_, w_, c_ = x.shape
    _, ho, wo, _ = dy.shape
    xf = x.reshape(x.size)
    dyf = dy.reshape(dy.size)
    dxf = dx.reshape(dx.size)
    ktf = kt.reshape(kt.size)
    dktf = dkt.reshape(dkt.size)
    row_len = wo * c_
    cnt = (w_ + sw - 1) // sw
    phases = np.empty(sw * cnt * c_ if sw > 1 else 0, x.dtype)
    dphases = np.empty(sw * cnt * c_ if sw > 1 and need_dx else 0, x.dtype)
    dkt[:] = 0
    dbt[:] = 0
    if need_dx:
        dx[n0:n1] = 0
    for n in range(n0, n1):
        for oh in range(ho):
            orow = (n * ho + oh) * row_len
            if use_bias:
                for p in range(row_len):
                    dbt[p] += dyf[np.uint64(orow + p)]
            for i in range(kh):
                ih = oh * sh - ph + i * dh
                if ih < 0 or ih >= h_:
                    continue
                xrow = (n * h_ + ih) * w_ * c_
                if sw > 1:
                    _split_phases(xf, xrow, w_, c_, sw, cnt, phases)
                    dphases[:] = 0
                for j in range(kw):
                    r, base, lo, hi = _tap_columns(j, g, w_, wo)
                    if lo >= hi:
                        continue
                    ob = orow + lo * c_
                    kb = (i * kw + j) * row_len + lo * c_
                    length = (hi - lo) * c_
                    if sw == 1:
                        xb = xrow + (lo + base) * c_
                        if need_dx:
                            for p in range(length):
                                d = dyf[np.uint64(ob + p)]
                                dktf[np.uint64(kb + p)] += xf[np.uint64(xb + p)] * d
                                dxf[np.uint64(xb + p)] += d * ktf[np.uint64(kb + p)]
                        else:
                            for p in range(length):
                                dktf[np.uint64(kb + p)] += xf[np.uint64(xb + p)] * dyf[np.uint64(ob + p)]
                    else:
                        xb = (r * cnt + lo + base) * c_
                        if need_dx:
                            for p in range(length):
                                d = dyf[np.uint64(ob + p)]
                                dktf[np.uint64(kb + p)] += phases[np.uint64(xb + p)] * d
                                dphases[np.uint64(xb + p)] += d * ktf[np.uint64(kb + p)]
                        else:
                            for p in range(length):
                                dktf[np.uint64(kb + p)] += phases[np.uint64(xb + p)] * dyf[np.uint64(ob + p)]
                if sw > 1 and need_dx:
                    _merge_phases(dphases, w_, c_, sw, cnt, xrow, dxf)


# Without fastmath: the order of the additions is part of the result (the same bits at any thread count).
@numba.njit(**dict(JIT, fastmath=False))
def _sum_parts(dkt_parts, dbt_parts, use_bias, dkernel, dbias):
    """dkernel (kh*kw, C) and dbias (C,) = the chunks' tiled partials, chunk by chunk, column by column."""
    chunks, taps, row_len = dkt_parts.shape
    c_ = dkernel.shape[1]
    for tap in range(taps):
        for c in range(c_):
            total = 0.0
            for t in range(chunks):
                for p in range(c, row_len, c_):
                    total += dkt_parts[t, tap, p]
            dkernel[tap, c] = total
    if use_bias:
        for c in range(c_):
            total = 0.0
            for t in range(chunks):
                for p in range(c, row_len, c_):
                    total += dbt_parts[t, p]
            dbias[c] = total


def _chunks(n):
    """(samples per chunk, chunks): a function of the batch size alone, so the sums over chunks (added in
    chunk order) give the same bits at any thread count."""
    spc = max(1, -(-n // MIN_CHUNKS))
    return spc, -(-n // spc)


def _tiled(kernel, wo):
    """kernel (kh, kw, C, m) -> (kh*kw, Wo*C*m): each tap's C*m weights repeated once per output column."""
    kh, kw, c, m = kernel.shape
    return np.ascontiguousarray(np.tile(kernel.reshape(kh * kw, c * m), (1, wo)))


def _repeated(x, m):
    """x (N, H, W, C) with each channel repeated m times, channel c*m + q = x's channel c; x itself for m = 1."""
    if m == 1:
        return x
    xr = empty("depthwise repeated input", x.shape[:3] + (x.shape[3] * m,), x.dtype)
    xr.reshape(-1, x.shape[3], m)[...] = x.reshape(-1, x.shape[3], 1)
    return xr


def forward(x, kernel, bias, use_bias, g, out):
    """x (N, H, W, C), kernel (kh, kw, C, m), bias (C*m,) -> out (N, Ho, Wo, C*m), channel c*m + q from
    input channel c and multiplier q (TF/Keras order); all C-contiguous. Chunks of samples over the threads."""
    n, wo, cm = x.shape[0], out.shape[2], out.shape[3]
    xr = _repeated(x, kernel.shape[3])
    kt = _tiled(kernel, wo)
    bias_t = np.tile(bias, wo) if use_bias else np.zeros(wo * cm, x.dtype)
    spc, chunks = _chunks(n)
    in_threads(chunks, lambda share, t0, t1: _forward_range(xr, kt, bias_t, g, t0 * spc, min(n, t1 * spc), out))


def backward(x, kernel, dy, use_bias, g, dkernel, dbias, dx, need_dx=True):
    """dy (N, Ho, Wo, C*m) -> dkernel (kh, kw, C, m), dbias (C*m,) (when use_bias), dx (N, H, W, C) (when
    need_dx). Each chunk of samples writes its own kernel and bias partials, then added in chunk order."""
    n, wo, cm = x.shape[0], dy.shape[2], dy.shape[3]
    kh, kw, c, m = kernel.shape
    xr = _repeated(x, m)
    kt = _tiled(kernel, wo)
    dxr = dx if m == 1 else empty("depthwise repeated input gradient", xr.shape, dx.dtype)
    spc, chunks = _chunks(n)
    dkt_parts = empty("depthwise kernel gradient parts", (chunks, kh * kw, wo * cm), dy.dtype)
    dbt_parts = empty("depthwise bias gradient parts", (chunks, wo * cm), dy.dtype)

    def run(share, t0, t1):
        for t in range(t0, t1):
            _backward_range(xr, kt, dy, use_bias, need_dx, g, t * spc, min(n, (t + 1) * spc), dkt_parts[t],
                            dbt_parts[t], dxr)

    in_threads(chunks, run)
    _sum_parts(dkt_parts, dbt_parts, use_bias, dkernel.reshape(kh * kw, cm), dbias)
    if need_dx and m > 1:
        np.sum(dxr.reshape(x.shape + (m,)), axis=4, out=dx)
