"""DepthwiseConv2D, channels_last: direct loops (there is no GEMM to batch).

The geometry tuple `g = (kh, kw, sh, sw, dh, dw, pad_top, pad_left)` is the convolutions' (kernels/conv.py).
With one filter per channel (multiplier 1), output position (n, oh, ow) is the sum over taps (i, j) of
input position (ih, iw) = (oh * sh - pad_top + i * dh, ow * sw - pad_left + j * dw) times the tap's (C,)
weights, taps outside the input skipped. The inner loops run over the C contiguous channels of one position,
the weights of a tap staying in L1; where a kernel row of width 3 lies inside the input (all but the edge
columns of a 3x3 layer), one loop adds its three taps, so the output is loaded and stored once per kernel
row instead of once per tap. The valid column range of each kernel column is worked out once per call.

The loops index flat views of the arrays with unsigned indices: Numba's wraparound for negative (signed)
indices on a computed index would otherwise stop LLVM from vectorising them (every index is non-negative
by construction). Backward writes one array per loop (kernel gradient, then input gradient, per tap): a
loop that updates several arrays needs more overlap checks than LLVM makes, and stays scalar.

With a width stride of 1 and fewer than ROW_CHANNELS channels the kernels run a segment of an output row
at a time instead (`_forward_rows`, `_kernel_grad_rows`): the positions one tap reaches along a row are contiguous,
so a tap (or a kernel row's three taps, or all nine inside the input) is one long loop over positions and
channels together, against the taps tiled to the segment's length. With stride 1 in both directions the
input gradient is the forward correlation of dy with the kernel turned by 180 degrees (`_forward_rows`
again), which writes each dx value once instead of adding into it once per tap.

A depth multiplier m > 1 runs as multiplier 1 over the input with each channel repeated m times (channel
c * m + q of the output reads channel c: TF/Keras order); its input gradient is then summed over the copies.

The batch is cut into chunks of samples (a function of the batch size alone) shared between threads; each
chunk sums its kernel and bias gradients into its own partials, added at the end in chunk order, so results
are the same bits at any thread count.
"""

from __future__ import annotations

import numba
import numpy as np

from ..workspace import empty
from . import JIT
from .conv import MIN_CHUNKS, share_count


@numba.njit(**JIT)
def _columns(g, w_, wo):
    """(kw, 2): per kernel column j, the first and last+1 output column whose input column
    ow * sw + j * dw - pad_left lies in [0, W)."""
    kh, kw, sh, sw, dh, dw, ph, pw = g
    cols = np.empty((kw, 2), np.int64)
    for j in range(kw):
        off = j * dw - pw
        cols[j, 0] = min(wo, max(0, (-off + sw - 1) // sw))
        cols[j, 1] = max(cols[j, 0], min(wo, (w_ - 1 - off) // sw + 1))
    return cols


@numba.njit(**JIT)
def _fused_range(cols, lo, hi):
    """The output columns [lo3, hi3) within [lo, hi) that all three taps of a kernel row reach; empty
    (lo3 = hi3 = hi) unless the row has three taps."""
    if cols.shape[0] != 3:
        return hi, hi
    lo3 = max(lo, max(cols[0, 0], max(cols[1, 0], cols[2, 0])))
    hi3 = min(hi, min(cols[0, 1], min(cols[1, 1], cols[2, 1])))
    if lo3 >= hi3:
        return hi, hi
    return lo3, hi3


@numba.njit(**JIT)
def _forward_range(x, kernel, bias, g, n0, n1, out):
    """Samples n0:n1 of out (N, Ho, Wo, C) from x (N, H, W, C), kernel (kh*kw, C), bias (C,) (zeros without
    one). Per output position, per kernel row, one loop over the channels adds the row's taps: all three at
    once where a 3-wide row lies inside the input, else one tap at a time."""
    kh, kw, sh, sw, dh, dw, ph, pw = g
    _, h_, w_, c_ = x.shape
    _, ho, wo, _ = out.shape
    xf = x.reshape(x.size)
    of = out.reshape(out.size)
    kf = kernel.reshape(kernel.size)
    cols = _columns(g, w_, wo)
    lo3, hi3 = _fused_range(cols, 0, wo)
    for n in range(n0, n1):
        for oh in range(ho):
            for ow in range(wo):
                ob = ((n * ho + oh) * wo + ow) * c_
                for c in range(c_):
                    of[np.uint64(ob + c)] = bias[c]
                for i in range(kh):
                    ih = oh * sh - ph + i * dh
                    if ih < 0 or ih >= h_:
                        continue
                    xrow = (n * h_ + ih) * w_ * c_
                    if lo3 <= ow < hi3:
                        x0 = xrow + (ow * sw - pw) * c_
                        x1 = x0 + dw * c_
                        x2 = x1 + dw * c_
                        k0 = i * 3 * c_
                        for c in range(c_):
                            of[np.uint64(ob + c)] += (xf[np.uint64(x0 + c)] * kf[np.uint64(k0 + c)]
                                                      + xf[np.uint64(x1 + c)] * kf[np.uint64(k0 + c_ + c)]
                                                      + xf[np.uint64(x2 + c)] * kf[np.uint64(k0 + 2 * c_ + c)])
                        continue
                    for j in range(kw):
                        if ow < cols[j, 0] or ow >= cols[j, 1]:
                            continue
                        xb = xrow + (ow * sw + j * dw - pw) * c_
                        kb = (i * kw + j) * c_
                        for c in range(c_):
                            of[np.uint64(ob + c)] += xf[np.uint64(xb + c)] * kf[np.uint64(kb + c)]


@numba.njit(**JIT)
def _backward_range(x, kernel, dy, use_bias, need_dx, g, n0, n1, dk, db, dx):
    """For samples n0:n1: their kernel gradient to dk (kh*kw, C) and bias gradient to db (C,) (both
    overwritten), their input gradient to dx (N, H, W, C) when need_dx. Per output position and tap, one
    loop over the channels for each (one array written per loop: more, and LLVM's checks that the arrays
    do not overlap exceed its limit, and the loop stays scalar)."""
    kh, kw, sh, sw, dh, dw, ph, pw = g
    _, h_, w_, c_ = x.shape
    _, ho, wo, _ = dy.shape
    xf = x.reshape(x.size)
    dyf = dy.reshape(dy.size)
    dxf = dx.reshape(dx.size)
    kf = kernel.reshape(kernel.size)
    dkf = dk.reshape(dk.size)
    cols = _columns(g, w_, wo)
    dk[:] = 0
    db[:] = 0
    if need_dx:
        dx[n0:n1] = 0
    for n in range(n0, n1):
        for oh in range(ho):
            for ow in range(wo):
                ob = ((n * ho + oh) * wo + ow) * c_
                if use_bias:
                    for c in range(c_):
                        db[c] += dyf[np.uint64(ob + c)]
                for i in range(kh):
                    ih = oh * sh - ph + i * dh
                    if ih < 0 or ih >= h_:
                        continue
                    xrow = (n * h_ + ih) * w_ * c_
                    for j in range(kw):
                        if ow < cols[j, 0] or ow >= cols[j, 1]:
                            continue
                        xb = xrow + (ow * sw + j * dw - pw) * c_
                        kb = (i * kw + j) * c_
                        for c in range(c_):
                            dkf[np.uint64(kb + c)] += xf[np.uint64(xb + c)] * dyf[np.uint64(ob + c)]
                        if need_dx:
                            for c in range(c_):
                                dxf[np.uint64(xb + c)] += dyf[np.uint64(ob + c)] * kf[np.uint64(kb + c)]


# Channels (C*m) below which the stride-1 layers run a row segment at a time: with more, one position's
# channels are already a loop of many vectors, and its kernel's taps stay in L1 untiled.
ROW_CHANNELS = 64
# Values per segment of an output row in the stride-1 kernels: the kernel's taps tiled to one segment
# (kh*kw segments) stay in L1 next to the rows they meet.
SEGMENT_VALUES = 768


@numba.njit(**JIT)
def _segment(wo, c_):
    """Output columns per segment of a row of wo positions of c_ channels: the row cut into equal parts of
    at most about SEGMENT_VALUES values (whole positions)."""
    parts = max(1, -(-(wo * c_) // SEGMENT_VALUES))
    return max(1, -(-wo // parts))


@numba.njit(**JIT)
def _tiled_taps(kernel, span):
    """kernel (taps, C) -> (taps, span * C): each tap's C weights repeated for span consecutive positions.
    (Element by element, as norm._tiled.)"""
    taps, c_ = kernel.shape
    out = np.empty((taps, span * c_), kernel.dtype)
    for t in range(taps):
        for q in range(span):
            for j in range(c_):
                out[t, q * c_ + j] = kernel[t, j]
    return out


# fastmath without reassociation: the nine-tap loop must add the kernel rows in the order the row-by-row
# loops do (a ZeroPadding2D fused into the layer moves values from one loop to the other, and the two
# must round alike); contraction to FMAs stays allowed.
@numba.njit(**dict(JIT, fastmath={"nnan", "ninf", "nsz", "arcp", "contract", "afn"}))
def _forward_rows(x, kernel, bias, g, n0, n1, out):
    """_forward_range for width stride 1 (any height stride, any dilation), a segment of an output row at a
    time: with sw = 1 the positions a tap reaches along a row are contiguous, so each kernel row is one
    loop over the segment's positions and channels together (a long vector loop, where C alone is 16 or
    48 values) against the taps tiled to the segment. Every output value is the same expression as in
    _forward_range: bias, then per kernel row the three taps' sum where all three lie inside the input,
    else one tap at a time."""
    kh, kw, sh, sw, dh, dw, ph, pw = g
    _, h_, w_, c_ = x.shape
    _, ho, wo, _ = out.shape
    xf = x.reshape(x.size)
    of = out.reshape(out.size)
    cols = _columns(g, w_, wo)
    lo3, hi3 = _fused_range(cols, 0, wo)
    if lo3 >= hi3:
        lo3 = hi3 = wo
    span = _segment(wo, c_)
    kt = _tiled_taps(kernel, span)
    bt = _tiled_taps(bias.reshape(1, c_), span)[0]
    step = dw * c_
    for n in range(n0, n1):
        for oh in range(ho):
            orow = (n * ho + oh) * wo * c_
            for s in range(0, wo, span):
                e = min(wo, s + span)
                ob = orow + s * c_
                for p in range((e - s) * c_):
                    of[np.uint64(ob + p)] = bt[np.uint64(p)]
                a, b = max(s, lo3), min(e, hi3)
                first = oh * sh - ph
                if kh == 3 and a < b and first >= 0 and first + 2 * dh < h_:
                    # all nine taps inside the input: the three kernel rows in one loop, one store per value
                    # (the same additions in the same order as row by row)
                    ob = orow + a * c_
                    t0 = (a - s) * c_
                    xb0 = (n * h_ + first) * w_ * c_ + (a - pw) * c_
                    xb1 = xb0 + dh * w_ * c_
                    xb2 = xb1 + dh * w_ * c_
                    k00, k01, k02 = kt[0], kt[1], kt[2]
                    k10, k11, k12 = kt[3], kt[4], kt[5]
                    k20, k21, k22 = kt[6], kt[7], kt[8]
                    for p in range((b - a) * c_):
                        q = np.uint64(t0 + p)
                        o = of[np.uint64(ob + p)]
                        o += (xf[np.uint64(xb0 + p)] * k00[q] + xf[np.uint64(xb0 + step + p)] * k01[q]
                              + xf[np.uint64(xb0 + 2 * step + p)] * k02[q])
                        o += (xf[np.uint64(xb1 + p)] * k10[q] + xf[np.uint64(xb1 + step + p)] * k11[q]
                              + xf[np.uint64(xb1 + 2 * step + p)] * k12[q])
                        o += (xf[np.uint64(xb2 + p)] * k20[q] + xf[np.uint64(xb2 + step + p)] * k21[q]
                              + xf[np.uint64(xb2 + 2 * step + p)] * k22[q])
                        of[np.uint64(ob + p)] = o
                    rows_done = True
                else:
                    rows_done = False
                for i in range(kh):
                    ih = oh * sh - ph + i * dh
                    if ih < 0 or ih >= h_:
                        continue
                    xrow = (n * h_ + ih) * w_ * c_
                    if rows_done:
                        pass  # [a, b) done above; one tap at a time outside it
                    elif a < b:
                        k0, k1, k2 = kt[i * 3], kt[i * 3 + 1], kt[i * 3 + 2]
                        xb = xrow + (a - pw) * c_
                        ob = orow + a * c_
                        t0 = (a - s) * c_
                        for p in range((b - a) * c_):
                            q = np.uint64(t0 + p)
                            of[np.uint64(ob + p)] += (xf[np.uint64(xb + p)] * k0[q]
                                                      + xf[np.uint64(xb + step + p)] * k1[q]
                                                      + xf[np.uint64(xb + 2 * step + p)] * k2[q])
                    else:
                        a = b = e
                    # one tap at a time over the segment's columns outside [a, b), in tap order per value
                    for j in range(kw):
                        kj = kt[i * kw + j]
                        for part in range(2):
                            u, v = (s, a) if part == 0 else (b, e)
                            lo, hi = max(u, cols[j, 0]), min(v, cols[j, 1])
                            if lo >= hi:
                                continue
                            xb = xrow + (lo + j * dw - pw) * c_
                            ob = orow + lo * c_
                            t0 = (lo - s) * c_
                            for p in range((hi - lo) * c_):
                                of[np.uint64(ob + p)] += xf[np.uint64(xb + p)] * kj[np.uint64(t0 + p)]


# Without fastmath: each partial's additions stay in the order written (the same bits at any thread count,
# and in code compiled in the running process or loaded from the cache); the loops vectorise across the
# partials anyway.
@numba.njit(**dict(JIT, fastmath=False))
def _kernel_grad_rows(x, dy, use_bias, g, n0, n1, dk, db):
    """For samples n0:n1, stride 1: their kernel gradient to dk (kh*kw, C) and bias gradient to db (C,)
    (overwritten). Each tap's products x * dy go to one partial per value of a row segment (as in
    _forward_rows: one long loop per tap and segment), summed over the segment's positions at the end."""
    kh, kw, sh, sw, dh, dw, ph, pw = g
    _, h_, w_, c_ = x.shape
    _, ho, wo, _ = dy.shape
    xf = x.reshape(x.size)
    dyf = dy.reshape(dy.size)
    cols = _columns(g, w_, wo)
    span = _segment(wo, c_)
    length = span * c_
    acc = np.zeros((kh * kw, length), dy.dtype)
    bacc = np.zeros(length, dy.dtype)
    for n in range(n0, n1):
        for oh in range(ho):
            orow = (n * ho + oh) * wo * c_
            for s in range(0, wo, span):
                e = min(wo, s + span)
                if use_bias:
                    ob = orow + s * c_
                    for p in range((e - s) * c_):
                        bacc[np.uint64(p)] += dyf[np.uint64(ob + p)]
                for i in range(kh):
                    ih = oh * sh - ph + i * dh
                    if ih < 0 or ih >= h_:
                        continue
                    xrow = (n * h_ + ih) * w_ * c_
                    for j in range(kw):
                        lo, hi = max(s, cols[j, 0]), min(e, cols[j, 1])
                        if lo >= hi:
                            continue
                        aj = acc[i * kw + j]
                        xb = xrow + (lo + j * dw - pw) * c_
                        ob = orow + lo * c_
                        t0 = (lo - s) * c_
                        for p in range((hi - lo) * c_):
                            aj[np.uint64(t0 + p)] += xf[np.uint64(xb + p)] * dyf[np.uint64(ob + p)]
    for t in range(kh * kw):
        for c in range(c_):
            dk[t, c] = acc[t, c]
        for q in range(1, span):
            for c in range(c_):
                dk[t, c] += acc[t, q * c_ + c]
    for c in range(c_):
        db[c] = bacc[c]
    for q in range(1, span):
        for c in range(c_):
            db[c] += bacc[q * c_ + c]


# Without fastmath: the order of the additions is part of the result (the same bits at any thread count).
@numba.njit(**dict(JIT, fastmath=False))
def _sum_parts(dk_parts, db_parts, use_bias, dkernel, dbias):
    """dkernel (kh*kw, C) and dbias (C,) = the chunks' partials, added in chunk order."""
    chunks, taps, c_ = dk_parts.shape
    for tap in range(taps):
        for c in range(c_):
            total = dkernel.dtype.type(0)
            for t in range(chunks):
                total += dk_parts[t, tap, c]
            dkernel[tap, c] = total
    if use_bias:
        for c in range(c_):
            total = dbias.dtype.type(0)
            for t in range(chunks):
                total += db_parts[t, c]
            dbias[c] = total


def _chunks(n):
    """(samples per chunk, chunks): a function of the batch size alone, so the sums over chunks (added in
    chunk order) give the same bits at any thread count."""
    spc = max(1, -(-n // MIN_CHUNKS))
    return spc, -(-n // spc)


@numba.njit(**JIT)
def _repeat_channels(x, m, xr):
    """xr (N, H, W, C*m): channel c*m + q = x's channel c."""
    xf = x.reshape(x.size)
    rf = xr.reshape(xr.size)
    for p in range(xf.shape[0]):
        v = xf[p]
        for q in range(m):
            rf[np.uint64(p * m + q)] = v


@numba.njit(**JIT)
def _sum_copies(dxr, m, dx):
    """dx (N, H, W, C): channel c = the sum of dxr's channels c*m .. c*m + m - 1."""
    rf = dxr.reshape(dxr.size)
    df = dx.reshape(dx.size)
    for p in range(df.shape[0]):
        total = rf[np.uint64(p * m)]
        for q in range(1, m):
            total += rf[np.uint64(p * m + q)]
        df[p] = total


FORWARD, FORWARD_ROWS, BACKWARD, BACKWARD_ROWS = 0, 1, 2, 3
# Unread stand-ins for the partials' arrays in forward, by dtype: (3-D, 2-D).
_NONE = {t: (np.zeros((0, 0, 0), t), np.zeros((0, 0), t)) for t in (np.float32, np.float64)}


def _run(which, x, k, b, dy, k_turned, g, g_dx, use_bias, need_dx, spc, chunks, dk_parts, db_parts, out):
    """_chunk_range over every chunk: on the calling thread alone (without the parallel loop's compile) or
    split over Numba's threads (_split)."""
    parts = share_count(chunks)
    if parts <= 1:
        _chunk_range(which, x, k, b, dy, k_turned, g, g_dx, use_bias, need_dx, spc, 0, chunks, dk_parts, db_parts,
                     out)
    else:
        _split(which, x, k, b, dy, k_turned, g, g_dx, use_bias, need_dx, spc, chunks, parts, dk_parts, db_parts,
               out)


@numba.njit(**JIT)
def _chunk_range(which, x, k, b, dy, k_turned, g, g_dx, use_bias, need_dx, spc, c0, c1, dk_parts, db_parts, out):
    """Chunks c0:c1 of spc samples of pass `which`: FORWARD or FORWARD_ROWS (x, k, b -> out), BACKWARD or
    BACKWARD_ROWS (dy -> the chunks' partials in dk_parts, db_parts, and out = dx when need_dx; the rows'
    input gradient is _forward_rows of dy by k_turned over g_dx, right after the chunk's kernel gradient,
    while its dy is in cache)."""
    n = x.shape[0]
    if which == FORWARD_ROWS:
        _forward_rows(x, k, b, g, c0 * spc, min(n, c1 * spc), out)
    elif which == FORWARD:
        _forward_range(x, k, b, g, c0 * spc, min(n, c1 * spc), out)
    else:
        for t in range(c0, c1):
            n0, n1 = t * spc, min(n, (t + 1) * spc)
            if which == BACKWARD_ROWS:
                _kernel_grad_rows(x, dy, use_bias, g, n0, n1, dk_parts[t], db_parts[t])
                if need_dx:
                    _forward_rows(dy, k_turned, b, g_dx, n0, n1, out)
            else:
                _backward_range(x, k, dy, use_bias, need_dx, g, n0, n1, dk_parts[t], db_parts[t], out)


@numba.njit(parallel=True, **JIT)
def _split(which, x, k, b, dy, k_turned, g, g_dx, use_bias, need_dx, spc, chunks, parts, dk_parts, db_parts, out):
    """_chunk_range over `chunks` in `parts` contiguous ranges on Numba's threads (see conv._split)."""
    for t in numba.prange(parts):
        _chunk_range(which, x, k, b, dy, k_turned, g, g_dx, use_bias, need_dx, spc, chunks * t // parts,
                     chunks * (t + 1) // parts, dk_parts, db_parts, out)


def _repeated(x, m):
    """x (N, H, W, C) with each channel repeated m times, channel c*m + q = x's channel c; x itself for m = 1."""
    if m == 1:
        return x
    xr = empty("depthwise repeated input", x.shape[:3] + (x.shape[3] * m,), x.dtype)
    _repeat_channels(x, m, xr)
    return xr


def forward(x, kernel, bias, use_bias, g, out):
    """x (N, H, W, C), kernel (kh, kw, C, m), bias (C*m,) -> out (N, Ho, Wo, C*m), channel c*m + q from
    input channel c and multiplier q (TF/Keras order); all C-contiguous. Chunks of samples over the threads."""
    n, cm = x.shape[0], out.shape[3]
    kh, kw, c, m = kernel.shape
    xr = _repeated(x, m)
    k2 = np.ascontiguousarray(kernel.reshape(kh * kw, cm))
    b = bias if use_bias else np.zeros(cm, x.dtype)
    spc, chunks = _chunks(n)
    which = FORWARD_ROWS if g[3] == 1 and cm < ROW_CHANNELS else FORWARD
    _run(which, xr, k2, b, out, k2, g, g, use_bias, False, spc, chunks, *_NONE[out.dtype.type], out)


def backward(x, kernel, dy, use_bias, g, dkernel, dbias, dx, need_dx=True):
    """dy (N, Ho, Wo, C*m) -> dkernel (kh, kw, C, m), dbias (C*m,) (when use_bias), dx (N, H, W, C) (when
    need_dx). Each chunk of samples writes its own kernel and bias partials, then added in chunk order."""
    n, cm = x.shape[0], dy.shape[3]
    kh, kw, c, m = kernel.shape
    xr = _repeated(x, m)
    k2 = np.ascontiguousarray(kernel.reshape(kh * kw, cm))
    dxr = dx if m == 1 else empty("depthwise repeated input gradient", xr.shape, dx.dtype)
    spc, chunks = _chunks(n)
    dk_parts = empty("depthwise kernel gradient parts", (chunks, kh * kw, cm), dy.dtype)
    db_parts = empty("depthwise bias gradient parts", (chunks, cm), dy.dtype)

    by_rows = g[2] == 1 and g[3] == 1 and cm < ROW_CHANNELS
    g_dx, k_turned = g, k2
    if by_rows:
        # stride 1: the input gradient is the correlation of dy with the kernel turned by 180 degrees,
        # padded so that it covers x: _forward_rows with taps reversed, one write per dx value
        dh, dw = g[4], g[5]
        g_dx = (kh, kw, 1, 1, dh, dw, (kh - 1) * dh - g[6], (kw - 1) * dw - g[7])
        k_turned = np.ascontiguousarray(k2[::-1])
    no_bias = np.zeros(cm, dy.dtype)
    _run(BACKWARD_ROWS if by_rows else BACKWARD, xr, k2, no_bias, dy, k_turned, g, g_dx, use_bias, need_dx, spc,
         chunks, dk_parts, db_parts, dxr)
    _sum_parts(dk_parts, db_parts, use_bias, dkernel.reshape(kh * kw, cm), dbias)
    if need_dx and m > 1:
        _sum_copies(dxr, m, dx)
