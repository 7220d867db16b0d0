"""Normalisation kernels over (rows, channels) arrays, the normalised axis last.

BatchNormalization reduces over rows per channel (`channel_*`); LayerNormalization reduces over the
channels of each row (`row_*`). Accumulators have the arrays' dtype; variances are biased (divide by n).
"""

from __future__ import annotations

import numba
import numpy as np

from . import JIT


@numba.njit(**JIT)
def channel_moments(x, mean, var):
    """x (rows, C) -> mean (C,), biased variance (C,), two passes."""
    rows, c = x.shape
    for j in range(c):
        mean[j] = 0
        var[j] = 0
    for r in range(rows):
        for j in range(c):
            mean[j] += x[r, j]
    n = x.dtype.type(rows)
    for j in range(c):
        mean[j] /= n
    for r in range(rows):
        for j in range(c):
            d = x[r, j] - mean[j]
            var[j] += d * d
    for j in range(c):
        var[j] /= n


@numba.njit(**JIT)
def channel_normalize(x, mean, inv, gamma, beta, xhat, out):
    """xhat = (x - mean) * inv, out = xhat * gamma + beta, per channel."""
    rows, c = x.shape
    for r in range(rows):
        for j in range(c):
            h = (x[r, j] - mean[j]) * inv[j]
            xhat[r, j] = h
            out[r, j] = h * gamma[j] + beta[j]


@numba.njit(**JIT)
def channel_backward(dy, xhat, gamma, inv, batch_stats, dgamma, dbeta, dx):
    """dgamma = sum(dy * xhat), dbeta = sum(dy) over rows; dx through the batch statistics when
    `batch_stats` (training), else through the fixed affine map (inference)."""
    rows, c = dy.shape
    for j in range(c):
        dgamma[j] = 0
        dbeta[j] = 0
    for r in range(rows):
        for j in range(c):
            dbeta[j] += dy[r, j]
            dgamma[j] += dy[r, j] * xhat[r, j]
    k = np.empty_like(inv)
    for j in range(c):
        k[j] = gamma[j] * inv[j]
    if batch_stats:
        n = dy.dtype.type(rows)
        mb = np.empty_like(inv)
        mg = np.empty_like(inv)
        for j in range(c):
            mb[j] = dbeta[j] / n
            mg[j] = dgamma[j] / n
        for r in range(rows):
            for j in range(c):
                dx[r, j] = k[j] * (dy[r, j] - mb[j] - xhat[r, j] * mg[j])
    else:
        for r in range(rows):
            for j in range(c):
                dx[r, j] = k[j] * dy[r, j]


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
