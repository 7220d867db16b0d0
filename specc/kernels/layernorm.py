"""LayerNormalization over (rows, channels) arrays, the normalised axis last, split between threads.

Each row is normalised on its own: forward keeps its mean and 1 / sqrt(var + eps) (float64, one per row)
and not the normalised values, which backward recomputes from x (one array fewer written forward and
none kept at inference). Row statistics are taken in float64; backward works in x's dtype (a row's sums
and a chunk's column partials, at most CHUNK_VALUES values each: float64 there halves the vector width of
the whole pass) and adds the chunks' partials in float64.

The rows are cut into chunks whose size depends only on the shape (`chunking`); threads take contiguous
ranges of chunks (_split, on Numba's threads). Forward and dx are per row, so any split gives the same bits; the
gamma and beta gradients are summed per chunk in float64 and the chunks' partials added in chunk order,
so they too are the same bits at any thread count.
"""

from __future__ import annotations

import numba
import numpy as np

from ..workspace import empty
from . import JIT
from .conv import share_count

# Values per chunk: the chunk's partial gradients (2 x C float64) stay small against its rows.
CHUNK_VALUES = 8192
# Values per thread share below which waking a thread costs more than it saves (a normalised row costs
# a few cycles a value: 64K values are about 50 microseconds).
MIN_SHARE_VALUES = 65536


def chunking(rows: int, channels: int) -> tuple[int, int]:
    """(rows per chunk, chunks) for a (rows, channels) array: a function of the shape alone."""
    per = max(1, CHUNK_VALUES // max(channels, 1))
    return per, max(1, -(-rows // per))


FORWARD, BACKWARD = 0, 1


def _shares(rows, channels):
    """(rows per chunk, chunks, thread shares): one share for small arrays."""
    per, chunks = chunking(rows, channels)
    return per, chunks, max(1, min(share_count(chunks), rows * channels // MIN_SHARE_VALUES))


def forward(x, gamma, beta, eps, mean, inv, out, b=None, total=None):
    """x (rows, C) -> out = (x - mean) * inv * gamma + beta per row, inv = 1 / sqrt(biased var + eps);
    mean and inv (rows,) float64 are kept for backward. gamma, beta (C,) in x's dtype; out may not be x.
    With b (rows, C), of x + b instead (a residual Add before the normalisation, in the same pass), the
    sums written to `total` (rows, C): backward reads them as its x."""
    rows, c = x.shape
    none = _NONE[x.dtype.type][0]
    b = none if b is None else b
    total = none if total is None else total
    per, chunks, parts = _shares(rows, c)
    if parts <= 1:  # without the parallel loop's compile
        forward_range(x, b, total, gamma, beta, eps, per, 0, chunks, mean, inv, out)
    else:
        _split(FORWARD, x, x, b, total, gamma, beta, eps, mean, inv, False, per, chunks, parts,
               _NONE[x.dtype.type][1], out)


def backward(dy, x, mean, inv, gamma, need_dx, dgamma, dbeta, dx):
    """Gradients of `forward` from dy (rows, C): dgamma = sum over rows of dy * xhat, dbeta = sum of dy
    (C,), and with need_dx dx = inv * (g - mean(g) - xhat * mean(g * xhat)) per row, g = dy * gamma."""
    rows, c = x.shape
    per, chunks, parts = _shares(rows, c)
    grad_parts = empty("layernorm gradient parts", (chunks, 2, c), x.dtype)
    none = _NONE[x.dtype.type][0]
    if parts <= 1:
        backward_range(dy, x, mean, inv, gamma, need_dx, per, 0, chunks, grad_parts, dx)
    else:
        _split(BACKWARD, dy, x, none, none, gamma, gamma, 0.0, mean, inv, need_dx, per, chunks, parts, grad_parts,
               dx)
    sum_parts(grad_parts, dgamma, dbeta)


# Unread stand-ins by dtype: for b and total without a residual, and for the gradient partials in forward.
_NONE = {t: (np.zeros((0, 0), t), np.zeros((0, 0, 0), t)) for t in (np.float32, np.float64)}


@numba.njit(parallel=True, **JIT)
def _split(which, dy, x, b, total, gamma, beta, eps, mean, inv, need_dx, per, chunks, parts, grad_parts, out):
    """forward_range (FORWARD, out: the output) or backward_range (BACKWARD, out: dx) over `chunks` in
    `parts` contiguous ranges on Numba's threads (see conv._split)."""
    for t in numba.prange(parts):
        t0, t1 = chunks * t // parts, chunks * (t + 1) // parts
        if which == FORWARD:
            forward_range(x, b, total, gamma, beta, eps, per, t0, t1, mean, inv, out)
        else:
            backward_range(dy, x, mean, inv, gamma, need_dx, per, t0, t1, grad_parts, out)


@numba.njit(**JIT)
def forward_range(x, b, total, gamma, beta, eps, per, t0, t1, mean, inv, out):
    """`forward` for the rows of chunks t0:t1 (`per` rows each): of x, or where b has rows of x + b, each
    row's sums written first to `total`."""
    rows, c = x.shape
    add = b.shape[0] > 0
    n = np.float64(c)
    for r in range(t0 * per, min(rows, t1 * per)):
        if add:
            y = total[r]
            for j in range(c):
                y[j] = x[r, j] + b[r, j]
        else:
            y = x[r]
        m = 0.0
        for j in range(c):
            m += np.float64(y[j])
        m /= n
        v = 0.0
        for j in range(c):
            d = np.float64(y[j]) - m
            v += d * d
        iv = 1.0 / np.sqrt(v / n + eps)
        mean[r] = m
        inv[r] = iv
        # in x's dtype: (x - mean) first, so a large mean does not cancel against the scaled x
        mx, ivx = x.dtype.type(m), x.dtype.type(iv)
        for j in range(c):
            out[r, j] = (y[j] - mx) * (ivx * gamma[j]) + beta[j]


@numba.njit(**JIT)
def backward_range(dy, x, mean, inv, gamma, need_dx, per, t0, t1, parts, dx):
    """`backward` for the rows of chunks t0:t1: parts[t] = (sum of dy * xhat, sum of dy) over chunk t's
    rows (x's dtype, rows in order), and dx of those rows. Returns a value of no use (see `sink`)."""
    rows, c = x.shape
    n = x.dtype.type(c)
    sink = 0.0
    for t in range(t0, t1):
        pg = parts[t, 0]
        pb = parts[t, 1]
        pg[:] = 0
        pb[:] = 0
        for r in range(t * per, min(rows, (t + 1) * per)):
            m, iv = x.dtype.type(mean[r]), x.dtype.type(inv[r])
            s1 = x.dtype.type(0)
            s2 = x.dtype.type(0)
            for j in range(c):
                d = dy[r, j]
                h = (x[r, j] - m) * iv
                pg[j] += d * h
                pb[j] += d
                g = d * gamma[j]
                s1 += g
                s2 += g * h
            # The row sums go into the returned value also without need_dx: dead there, they would let the
            # compiler build the loop above, and round the partials, differently in the two cases.
            sink += s1 + s2
            if need_dx:
                s1 /= n
                s2 /= n
                for j in range(c):
                    h = (x[r, j] - m) * iv
                    dx[r, j] = iv * (dy[r, j] * gamma[j] - s1 - h * s2)
    return sink


# Not reassociated (no fastmath): the chunks' order must be the same in every compiled copy.
@numba.njit(**dict(JIT, fastmath=False))
def sum_parts(parts, dgamma, dbeta):
    """dgamma, dbeta (C,) = the chunks' partials (chunks, 2, C) added in chunk order, in float64."""
    chunks, _, c = parts.shape
    for j in range(c):
        g = 0.0
        b = 0.0
        for t in range(chunks):
            g += parts[t, 0, j]
            b += parts[t, 1, j]
        dgamma[j] = g
        dbeta[j] = b
