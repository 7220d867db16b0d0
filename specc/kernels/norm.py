"""Normalisation kernels over (rows, channels) arrays, the normalised axis last.

BatchNormalization reduces over rows per channel (`batch_*`); LayerNormalization reduces over the
channels of each row (`row_*`). Variances are biased (divide by n).

BatchNormalization in training is two passes over memory each way, with the activation that follows it
(none, ReLU or ReLU6) applied in the same pass:

    forward:  sums of x - x[0] and of its squares -> mean, variance;  out = act(x * a + b)
    backward: sums of dz and of dz * (x - mean), dz = dy through act;  dx from dz, x and the sums

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

# Activations fused into BatchNormalization's passes (layers/fusion.py), by code.
ACT_NONE, ACT_RELU, ACT_RELU6 = 0, 1, 2
# Rows per chunk: about 64 KB of x per chunk (its partial sums, 2 x C float64, are then a small part).
CHUNK_VALUES = 16384


def batch_chunking(rows: int, channels: int) -> tuple[int, int]:
    """(rows per chunk, chunks) for a (rows, channels) array: a function of the shape alone."""
    per = max(1, CHUNK_VALUES // max(channels, 1))
    return per, max(1, -(-rows // per))


# Sums without fastmath: reassociated, LLVM could order them differently in code compiled in the running
# process and code loaded from the cache (see conv._sum_parts); they vectorise across channels anyway.
# Within a chunk the sums run in the data's dtype (a float32 vector holds 16 channels, a float64 one 8), across
# chunks in float64 (batch_moments, and the layer's sum over the chunks).
@numba.njit(**dict(JIT, fastmath=False))
def batch_sums_range(x, shift, per, t0, t1, s1, s2):
    """For chunks t0:t1 of `per` rows of x (rows, C): s1[t] = sum of x - shift, s2[t] = sum of its squares,
    per channel; shift (C,) has x's dtype, s1 and s2 are float64."""
    rows, c = x.shape
    a = np.empty(c, x.dtype)
    b = np.empty(c, x.dtype)
    for t in range(t0, t1):
        a[:] = 0
        b[:] = 0
        for r in range(t * per, min(rows, (t + 1) * per)):
            for j in range(c):
                d = x[r, j] - shift[j]
                a[j] += d
                b[j] += d * d
        for j in range(c):
            s1[t, j] = a[j]
            s2[t, j] = b[j]


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
    zero = x.dtype.type(0)
    six = x.dtype.type(6)
    for r in range(t0 * per, min(rows, t1 * per)):
        if act == ACT_RELU:
            for j in range(c):
                out[r, j] = max(x[r, j] * scale[j] + offset[j], zero)
        elif act == ACT_RELU6:
            for j in range(c):
                out[r, j] = min(max(x[r, j] * scale[j] + offset[j], zero), six)
        else:
            for j in range(c):
                out[r, j] = x[r, j] * scale[j] + offset[j]


@numba.njit(**dict(JIT, fastmath=False))
def batch_grad_sums_range(dy, out, x, mean, act, per, t0, t1, s1, s2):
    """For chunks t0:t1: s1[t] = sum of dz, s2[t] = sum of dz * (x - mean) (float64 (chunks, C); within a
    chunk in dy's dtype), dz = dy through the fused activation, which passes where its output `out` is in
    (0, inf) (ReLU) or (0, 6) (ReLU6). (One loop per activation: the branch stays out of the loops.)"""
    rows, c = x.shape
    a = np.empty(c, dy.dtype)
    b = np.empty(c, dy.dtype)
    zero = out.dtype.type(0)
    six = out.dtype.type(6)
    for t in range(t0, t1):
        a[:] = 0
        b[:] = 0
        r0, r1 = t * per, min(rows, (t + 1) * per)
        if act == ACT_RELU:
            for r in range(r0, r1):
                for j in range(c):
                    d = dy[r, j] if out[r, j] > zero else zero
                    a[j] += d
                    b[j] += d * (x[r, j] - mean[j])
        elif act == ACT_RELU6:
            for r in range(r0, r1):
                for j in range(c):
                    d = dy[r, j] if zero < out[r, j] < six else zero
                    a[j] += d
                    b[j] += d * (x[r, j] - mean[j])
        else:
            for r in range(r0, r1):
                for j in range(c):
                    d = dy[r, j]
                    a[j] += d
                    b[j] += d * (x[r, j] - mean[j])
        for j in range(c):
            s1[t, j] = a[j]
            s2[t, j] = b[j]


@numba.njit(**JIT)
def batch_dx_range(dy, out, x, mean, k, c0, c1, act, per, t0, t1, dx):
    """dx = k * dz + c0 - c1 * (x - mean) for chunks t0:t1, dz = dy through the fused activation. With the
    batch statistics (training) dx = k * (dz - mean(dz) - xhat * mean(dz * xhat)), xhat = (x - mean) * inv,
    which is this with c0 = -k * mean(dz) and c1 = k * inv * mean(dz * xhat); with fixed statistics
    c0 = c1 = 0. (x - mean) first: c1 * x - c1 * mean would cancel when the mean is large.)"""
    rows, c = x.shape
    zero = out.dtype.type(0)
    six = out.dtype.type(6)
    r0, r1 = t0 * per, min(rows, t1 * per)
    if act == ACT_RELU:
        for r in range(r0, r1):
            for j in range(c):
                d = dy[r, j] if out[r, j] > zero else zero
                dx[r, j] = k[j] * d + c0[j] - c1[j] * (x[r, j] - mean[j])
    elif act == ACT_RELU6:
        for r in range(r0, r1):
            for j in range(c):
                d = dy[r, j] if zero < out[r, j] < six else zero
                dx[r, j] = k[j] * d + c0[j] - c1[j] * (x[r, j] - mean[j])
    else:
        for r in range(r0, r1):
            for j in range(c):
                dx[r, j] = k[j] * dy[r, j] + c0[j] - c1[j] * (x[r, j] - mean[j])


@numba.njit(**JIT)
def row_normalize(x, gamma, beta, eps, xhat, inv, out):
    """Per row: xhat = (x - mean) / sqrt(var + eps), out = xhat * gamma + beta; inv (rows,) kept."""
    rows, c = x.shape
    n = x.dtype.type(c)
    one = x.dtype.type(1)
    for r in range(rows):
        m = x.dtype.type(0)
        for j in range(c):
            m += x[r, j]
        m /= n
        v = x.dtype.type(0)
        for j in range(c):
            d = x[r, j] - m
            v += d * d
        v /= n
        iv = one / np.sqrt(v + eps)
        inv[r] = iv
        for j in range(c):
            h = (x[r, j] - m) * iv
            xhat[r, j] = h
            out[r, j] = h * gamma[j] + beta[j]


@numba.njit(**JIT)
def row_backward(dy, xhat, gamma, inv, dgamma, dbeta, dx):
    rows, c = dy.shape
    n = dy.dtype.type(c)
    for j in range(c):
        dgamma[j] = 0
        dbeta[j] = 0
    for r in range(rows):
        s1 = dy.dtype.type(0)
        s2 = dy.dtype.type(0)
        for j in range(c):
            dbeta[j] += dy[r, j]
            dgamma[j] += dy[r, j] * xhat[r, j]
            gj = dy[r, j] * gamma[j]
            s1 += gj
            s2 += gj * xhat[r, j]
        s1 /= n
        s2 /= n
        for j in range(c):
            dx[r, j] = inv[r] * (dy[r, j] * gamma[j] - s1 - xhat[r, j] * s2)
