"""Normalisation kernels over (rows, channels) arrays, the normalised axis last.

BatchNormalization reduces over rows per channel (`batch_*`); LayerNormalization's kernels, which reduce
over the channels of each row, are in kernels/layernorm.py. Variances are biased (divide by n).

BatchNormalization in training is two passes over memory each way, with the activation that follows it
(none, ReLU or ReLU6) applied in the same pass:

    forward:  sums of x - x[0] and of its squares -> mean, variance;  out = act(x * a + b)
    backward: sums of dz and of dz * (x - mean), dz = dy through act;  dx from dz, x and the sums

(the activation's derivative from x * a + b, recomputed: backward reads dy and x only)

where a = gamma / sqrt(var + eps) and b = beta - mean * a. The normalised values are not stored: backward
recomputes them from x. The rows are cut into chunks that depend only on the shape; each chunk sums its
rows in the data's dtype, and the chunks' partials are added in float64 in chunk order, so the statistics
and the gamma/beta gradients are the same bits at any thread count, and no float32 sum runs over more
than one chunk (a running float32 sum over a whole 32x32x32 batch loses about 3 digits). Shifting by the
first row keeps the one-pass variance from cancelling when the mean is large against the spread.
"""

from __future__ import annotations

import numba
import numpy as np

from . import JIT
from .conv import share_count

# Activations fused into BatchNormalization's passes (layers/fusion.py), by code.
ACT_NONE, ACT_RELU, ACT_RELU6 = 0, 1, 2
# Rows per chunk: about 64 KB of x per chunk (its partial sums, 2 x C float64, are then a small part).
CHUNK_VALUES = 16384
# Values per tile of a pass (whole rows: TILE_VALUES // C of them, at least one).
TILE_VALUES = 512


def batch_chunking(rows: int, channels: int) -> tuple[int, int]:
    """(rows per chunk, chunks) for a (rows, channels) array: a function of the shape alone."""
    per = max(1, CHUNK_VALUES // max(channels, 1))
    return per, max(1, -(-rows // per))


@numba.njit(**JIT)
def _tiled(v, reps):
    """v (C,) repeated `reps` times: (reps * C,), matching `reps` consecutive rows of a (rows, C) array.
    Element by element: an array assigned to a slice compiles Numba's shape-mismatch message (string
    formatting) into this kernel and every kernel that calls it."""
    c = v.shape[0]
    out = np.empty(reps * c, v.dtype)
    for g in range(reps):
        for q in range(c):
            out[g * c + q] = v[q]
    return out


# Every pass runs over a chunk's rows as one flat run of values, TILE_ROWS rows (TILE_ROWS * C values) at a
# time, against per-channel values tiled to the same length: one long vector loop, where a loop over the C
# channels of one row (16 or 48 of them) would run mostly in its scalar remainder. The sums go to TILE_ROWS
# partials per channel, added at the end of the chunk in a fixed order.
@numba.njit(**JIT)
def _tile_rows(c):
    return max(1, TILE_VALUES // c)


# Sums without fastmath: reassociated, LLVM could order them differently in code compiled in the running
# process and code loaded from the cache (see conv._sum_parts); they vectorise across the tile anyway.
# Within a chunk the sums run in the data's dtype, across chunks in float64 (batch_moments, and the layer's
# sum over the chunks).
@numba.njit(**dict(JIT, fastmath=False))
def _fold(a, c, t, s):
    """s[t, j] = sum over the tile's rows g of a[g * C + j], in order of g, in float64."""
    for j in range(c):
        s[t, j] = a[j]
    for g in range(1, a.shape[0] // c):
        for j in range(c):
            s[t, j] += a[g * c + j]


@numba.njit(**dict(JIT, fastmath=False))
def batch_sums_range(x, shift, per, t0, t1, s1, s2):
    """For chunks t0:t1 of `per` rows of x (rows, C): s1[t] = sum of x - shift, s2[t] = sum of its squares,
    per channel; shift (C,) has x's dtype, s1 and s2 are float64."""
    rows, c = x.shape
    xf = x.reshape(rows * c)
    length = _tile_rows(c) * c
    sh = _tiled(shift, _tile_rows(c))
    a = np.empty(length, x.dtype)
    b = np.empty(length, x.dtype)
    for t in range(t0, t1):
        a[:] = 0
        b[:] = 0
        end = min(rows, (t + 1) * per) * c
        for q in range(t * per * c, end, length):
            for p in range(min(length, end - q)):
                d = xf[np.uint64(q + p)] - sh[p]
                a[p] += d
                b[p] += d * d
        _fold(a, c, t, s1)
        _fold(b, c, t, s2)


@numba.njit(**dict(JIT, fastmath=False))
def batch_moments(s1, s2, shift, rows, mean, var):
    """mean, biased variance (C,) from the chunks' partial sums, added in chunk order (float64)."""
    chunks, c = s1.shape
    n = np.float64(rows)
    for j in range(c):
        a = 0.0
        b = 0.0
        for t in range(chunks):
            a += s1[t, j]
            b += s2[t, j]
        m = a / n
        mean[j] = shift[j] + m
        var[j] = max(b / n - m * m, 0.0)


@numba.njit(**JIT)
def batch_affine_range(x, scale, offset, act, per, t0, t1, out):
    """out = act(x * scale + offset) per channel, for chunks t0:t1 of `per` rows."""
    rows, c = x.shape
    xf = x.reshape(rows * c)
    of = out.reshape(rows * c)
    length = _tile_rows(c) * c
    sc = _tiled(scale, _tile_rows(c))
    off = _tiled(offset, _tile_rows(c))
    zero = x.dtype.type(0)
    six = x.dtype.type(6)
    end = min(rows, t1 * per) * c
    for q in range(t0 * per * c, end, length):
        m = min(length, end - q)
        if act == ACT_RELU:
            for p in range(m):
                of[np.uint64(q + p)] = max(xf[np.uint64(q + p)] * sc[p] + off[p], zero)
        elif act == ACT_RELU6:
            for p in range(m):
                of[np.uint64(q + p)] = min(max(xf[np.uint64(q + p)] * sc[p] + off[p], zero), six)
        else:
            for p in range(m):
                of[np.uint64(q + p)] = xf[np.uint64(q + p)] * sc[p] + off[p]


@numba.njit(**JIT)
def _pre_activation(x, scale, offset):
    """x * scale + offset: the fused activation's input, recomputed in backward (compiled with fastmath, as
    forward's, so both may contract it to one FMA), so the mask is read from x instead of one more array."""
    return x * scale + offset


@numba.njit(**dict(JIT, fastmath=False))
def batch_grad_sums_range(dy, x, mean, scale, offset, act, per, t0, t1, s1, s2):
    """For chunks t0:t1: s1[t] = sum of dz, s2[t] = sum of dz * (x - mean) (float64 (chunks, C); within a
    chunk in dy's dtype), dz = dy through the fused activation, which passes where its input
    x * scale + offset is in (0, inf) (ReLU) or (0, 6) (ReLU6). (One loop per activation: the branch stays
    out of the loops.)"""
    rows, c = x.shape
    xf = x.reshape(rows * c)
    dyf = dy.reshape(rows * c)
    reps = _tile_rows(c)
    length = reps * c
    mt, st, ot = _tiled(mean, reps), _tiled(scale, reps), _tiled(offset, reps)
    a = np.empty(length, dy.dtype)
    b = np.empty(length, dy.dtype)
    zero = x.dtype.type(0)
    six = x.dtype.type(6)
    for t in range(t0, t1):
        a[:] = 0
        b[:] = 0
        end = min(rows, (t + 1) * per) * c
        for q in range(t * per * c, end, length):
            m = min(length, end - q)
            if act == ACT_RELU:
                for p in range(m):
                    v = xf[np.uint64(q + p)]
                    d = dyf[np.uint64(q + p)] if _pre_activation(v, st[p], ot[p]) > zero else zero
                    a[p] += d
                    b[p] += d * (v - mt[p])
            elif act == ACT_RELU6:
                for p in range(m):
                    v = xf[np.uint64(q + p)]
                    d = dyf[np.uint64(q + p)] if zero < _pre_activation(v, st[p], ot[p]) < six else zero
                    a[p] += d
                    b[p] += d * (v - mt[p])
            else:
                for p in range(m):
                    d = dyf[np.uint64(q + p)]
                    a[p] += d
                    b[p] += d * (xf[np.uint64(q + p)] - mt[p])
        _fold(a, c, t, s1)
        _fold(b, c, t, s2)


@numba.njit(**JIT)
def batch_dx_range(dy, x, mean, scale, offset, k, c0, c1, act, per, t0, t1, dx):
    """dx = k * dz + c0 - c1 * (x - mean) for chunks t0:t1, dz = dy through the fused activation (as in
    batch_grad_sums_range). With the batch statistics (training) dx = k * (dz - mean(dz) - xhat *
    mean(dz * xhat)), xhat = (x - mean) * inv, which is this with c0 = -k * mean(dz) and c1 = k * inv *
    mean(dz * xhat); with fixed statistics c0 = c1 = 0. (x - mean) first: c1 * x - c1 * mean would cancel
    when the mean is large.)"""
    rows, c = x.shape
    xf = x.reshape(rows * c)
    dyf = dy.reshape(rows * c)
    dxf = dx.reshape(rows * c)
    reps = _tile_rows(c)
    length = reps * c
    mt, kt, c0t, c1t = _tiled(mean, reps), _tiled(k, reps), _tiled(c0, reps), _tiled(c1, reps)
    st, ot = _tiled(scale, reps), _tiled(offset, reps)
    zero = x.dtype.type(0)
    six = x.dtype.type(6)
    end = min(rows, t1 * per) * c
    for q in range(t0 * per * c, end, length):
        m = min(length, end - q)
        if act == ACT_RELU:
            for p in range(m):
                i = np.uint64(q + p)
                v = xf[i]
                d = dyf[i] if _pre_activation(v, st[p], ot[p]) > zero else zero
                dxf[i] = kt[p] * d + c0t[p] - c1t[p] * (v - mt[p])
        elif act == ACT_RELU6:
            for p in range(m):
                i = np.uint64(q + p)
                v = xf[i]
                d = dyf[i] if zero < _pre_activation(v, st[p], ot[p]) < six else zero
                dxf[i] = kt[p] * d + c0t[p] - c1t[p] * (v - mt[p])
        else:
            for p in range(m):
                i = np.uint64(q + p)
                dxf[i] = kt[p] * dyf[i] + c0t[p] - c1t[p] * (xf[i] - mt[p])


# The passes above split between threads: one parallel loop over `parts` contiguous ranges of the chunks
# for any of the four passes (SUMS, AFFINE, GRAD_SUMS, DX); one function, as each parallel loop is long to
# compile. A chunk's results do not depend on the thread that computes it, so this gives the same bits as
# one thread. (Not conv.in_threads: a Python thread pool's dispatch costs ~80 us here, most of a small
# BatchNormalization pass's time.)
SUMS, AFFINE, GRAD_SUMS, DX = 0, 1, 2, 3
_NO_SUMS = np.zeros((0, 0))  # float64, as the sums: for a pass that writes none


def batch_pass(which, dy, x, center, scale, offset, k, c0, c1, act, per, chunks, s1=_NO_SUMS, s2=_NO_SUMS,
               out=None):
    """Pass `which` over every chunk, arguments as batch_split's (out, unwritten by the sums' passes,
    defaults to x): split over the threads, or with one share the pass's range function itself, which
    keeps a one-thread run from compiling the parallel loop."""
    parts = share_count(chunks)
    if parts > 1:
        batch_split(which, dy, x, center, scale, offset, k, c0, c1, act, per, chunks, parts, s1, s2,
                    x if out is None else out)
    elif which == SUMS:
        batch_sums_range(x, center, per, 0, chunks, s1, s2)
    elif which == AFFINE:
        batch_affine_range(x, scale, offset, act, per, 0, chunks, out)
    elif which == GRAD_SUMS:
        batch_grad_sums_range(dy, x, center, scale, offset, act, per, 0, chunks, s1, s2)
    else:
        batch_dx_range(dy, x, center, scale, offset, k, c0, c1, act, per, 0, chunks, out)


@numba.njit(parallel=True, **JIT)
def batch_split(which, dy, x, center, scale, offset, k, c0, c1, act, per, chunks, parts, s1, s2, out):
    """Pass `which` over all chunks: SUMS (center = shift, into s1, s2), AFFINE (into out), GRAD_SUMS
    (center = mean, into s1, s2) or DX (into out); arguments a pass does not read may be any arrays of
    the same types (dy is read by the backward passes only)."""
    for t in numba.prange(parts):
        t0, t1 = chunks * t // parts, chunks * (t + 1) // parts
        if which == SUMS:
            batch_sums_range(x, center, per, t0, t1, s1, s2)
        elif which == AFFINE:
            batch_affine_range(x, scale, offset, act, per, t0, t1, out)
        elif which == GRAD_SUMS:
            batch_grad_sums_range(dy, x, center, scale, offset, act, per, t0, t1, s1, s2)
        else:
            batch_dx_range(dy, x, center, scale, offset, k, c0, c1, act, per, t0, t1, out)
