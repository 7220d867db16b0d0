"""Scaled dot-product attention with Keras's masks, forward and backward, fused per (sample, head).

One compiled call runs a contiguous range of the (sample, head) pairs: its products are single-threaded
sgemm/BLAS calls that read the projections in place as (N, L, heads, size) views (no transposed copies;
NumPy's batched matmul on such views runs its own loops, not BLAS), and the masked softmax of each query
row runs between them. `attention_forward` / `attention_backward` split the pairs between Numba's threads
(pairs_split); each pair is computed whole by one thread and writes only its own blocks, so the
results are the same bits at any thread count. The projections themselves are the dense kernels'
products, called by the layer (layers/attention.py).

Keras's masked softmax puts -1e9 where the mask is 0, takes the softmax and then zeroes those positions
(layers.Softmax with a mask): a row with every key masked gives all zeros, not a uniform distribution.
Here masked keys are left out of the sum, which is the same to float precision, and a fully masked row
is zeros too. `masked_softmax` is that softmax alone, over (n, T, S) scores.
"""

from __future__ import annotations

import math

import numba
import numpy as np
from numba import types
from numba.extending import overload

from . import JIT
from .activations import F32, _exp, _exp_parts32, _fmax
from .conv import one_blas_thread, share_count
from .gemm import matmul_serial

# Pairs below which the split does not pay for waking a thread: (T * S * (dk + dv)) multiply-adds per pair
# forward, about twice that backward. A function of the shape only (any split gives the same bits).
MIN_SHARE_MACS = 65536


@numba.njit(**JIT)
def masked_softmax(scores, mask, heads, probs):
    """probs[i, t, :] = softmax of scores[i, t, :] over the keys the mask allows (zeros elsewhere).
    scores, probs: (n, T, S); mask: (m, T, S) uint8 with m = 1 (shared) or n // heads (per sample).
    Branch-free inner loops with activations._exp (exp as arithmetic, for x <= 0), so they vectorise."""
    n, rows, keys = scores.shape
    for i in range(n):
        b = 0 if mask.shape[0] == 1 else i // heads
        for t in range(rows):
            m = -np.inf
            allowed = 0
            for s in range(keys):
                m = max(m, np.float64(scores[i, t, s]) if mask[b, t, s] != 0 else -np.inf)
                allowed += mask[b, t, s] != 0
            # every key masked: counted, because under fastmath a comparison with -inf is not reliable
            if allowed == 0:
                for s in range(keys):
                    probs[i, t, s] = 0.0
                continue
            total = 0.0
            for s in range(keys):
                e = _exp(np.float64(scores[i, t, s]) - m) * (mask[b, t, s] != 0)
                probs[i, t, s] = e
                total += e
            inv = 1.0 / total
            for s in range(keys):
                probs[i, t, s] = probs[i, t, s] * inv


_EXP_FLOOR32 = F32(-87.0)  # exp(-87) is a normal float32; below, the weights are clamped to it


@numba.njit(**JIT)
def _exp_weight32(y):
    """exp(y) for float32 y <= 0 (above 0 taken as 0) in float32 arithmetic, to a few float32 ulps: the
    softmax's weights. Below -87 it returns exp(-87), which no row sum (at least 1) can see."""
    s, m = _exp_parts32(min(max(y, _EXP_FLOOR32), F32(0.0)))
    return s + s * m


def _weight(x):
    """exp(x) for x <= 0 in x's own precision: activations._exp for float64 (to float64's precision),
    _exp_weight32 for float32. Compiled only (the overload below), but for run_eagerly."""
    return math.exp(min(x, 0.0))


@overload(_weight, jit_options=JIT)
def _weight_compiled(x):
    if x == types.float32:
        return lambda x: _exp_weight32(x)
    return lambda x: _exp(x)


def _shares(q, k, v):
    """How many thread shares the (sample, head) pairs of these operands are split into."""
    n, rows, heads, dk = q.shape
    per_pair = rows * k.shape[1] * (dk + v.shape[3])
    return min(share_count(n * heads), max(1, n * heads * per_pair // MIN_SHARE_MACS))


FORWARD, BACKWARD = 0, 1
_NO_MASK = np.ones((1, 1, 1), np.uint8)


@numba.njit(parallel=True, **JIT)
def pairs_split(which, q, k, v, mask, use_mask, scale, keep, use_keep, store, probs, c, dq, dk, dv, parts):
    """forward_range (which == FORWARD, c = ctx) or backward_range (BACKWARD, c = dctx) over every
    (sample, head) pair, in `parts` contiguous ranges on Numba's threads. One function for both passes, as
    a parallel loop is long to compile; arguments a pass does not read may be any arrays of the same types.
    On Numba's threads rather than conv.in_threads's Python pool: its dispatch (~80 us) is a large share of
    a small model's attention, and the model's products can then keep their threads too."""
    pairs = q.shape[0] * q.shape[2]
    for t in numba.prange(parts):
        p0, p1 = pairs * t // parts, pairs * (t + 1) // parts
        if which == FORWARD:
            forward_range(q, k, v, mask, use_mask, scale, keep, use_keep, store, probs, c, p0, p1)
        else:
            backward_range(q, k, v, probs, keep, use_keep, c, scale, dq, dk, dv, p0, p1)


def attention_forward(q, k, v, mask, use_mask, scale, keep, use_keep, store, probs, ctx):
    """Scaled dot-product attention of every (sample, head): scores, masked softmax, context.

    q: (N, T, H, dk), k: (N, S, H, dk), v: (N, S, H, dv), any strides with the last axis contiguous
    (column blocks of the projections' (N * L, H * size) outputs); mask: (m, T, S) uint8, m = 1 or N,
    read only with use_mask; keep: (N, H, T, S) dropout factors, read only with use_keep.
    Outputs: probs (N, H, T, S), the softmax before dropout (backward needs it), unused with `store`
    False (inference: each thread keeps one (T, S) scratch); ctx (N, T, H, dv), the probabilities (after
    dropout) times the values: the output projection's operand as (N * T, H * dv).
    The two products per (sample, head) are sgemm/BLAS calls on the strided blocks in place; each softmax
    row is taken in the operands' precision (exp as arithmetic, so the loops vectorise; sums of at most
    `keys` terms of at most 1)."""
    parts = _shares(q, k, v)
    if parts <= 1:  # without the parallel loop's compile
        forward_range(q, k, v, mask, use_mask, scale, keep, use_keep, store, probs, ctx, 0, q.shape[0] * q.shape[2])
        return
    with one_blas_thread():  # each thread may call BLAS (float64): a threaded BLAS would oversubscribe the cores
        pairs_split(FORWARD, q, k, v, mask, use_mask, scale, keep, use_keep, store, probs, ctx, q, k, v, parts)


@numba.njit(**JIT)
def forward_range(q, k, v, mask, use_mask, scale, keep, use_keep, store, probs, ctx, p0, p1):
    """attention_forward for the (sample, head) pairs p0:p1 (pair = sample * heads + head)."""
    rows, heads = q.shape[1], q.shape[2]
    keys = k.shape[1]
    dt = q.dtype
    z = np.empty((rows, keys), dt)
    dropped = np.empty((rows, keys), dt)
    scratch = np.empty((rows, keys), dt)
    low = dt.type(-1e30)  # a finite floor: fastmath does not keep comparisons with -inf reliable
    zero = dt.type(0.0)
    for pair in range(p0, p1):
        b, h = pair // heads, pair % heads
        mb = 0 if mask.shape[0] == 1 else b
        p = probs[b, h] if store else scratch  # (T, S)
        matmul_serial(q[b, :, h, :], k[b, :, h, :].T, z)  # (T, S) unscaled scores
        # Each row shifted by its maximum, then the weights over the whole block in one loop: a loop over
        # one row of a few dozen keys is too short for LLVM's vector body, and exp would run scalar.
        for t in range(rows):
            m = low  # the row's largest score (of the keys the mask allows); activations._fmax vectorises
            if use_mask:
                for s in range(keys):
                    m = _fmax(m, z[t, s] if mask[mb, t, s] != 0 else low)
            else:
                for s in range(keys):
                    m = _fmax(m, z[t, s])
            top = m * scale  # scale > 0
            for s in range(keys):
                z[t, s] = z[t, s] * scale - top
        zf, pf = z.ravel(), p.ravel()
        if use_mask:
            allowed = mask[mb].ravel()
            for i in range(zf.size):
                pf[i] = _weight(zf[i]) if allowed[i] != 0 else zero
        else:
            for i in range(zf.size):
                pf[i] = _weight(zf[i])
        for t in range(rows):
            total = zero
            for s in range(keys):
                total += p[t, s]
            # a fully masked row (total 0) gives zeros, as Keras's masked softmax
            inv = dt.type(1.0) / total if total > zero else zero
            for s in range(keys):
                p[t, s] *= inv
        if use_keep:
            for t in range(rows):
                for s in range(keys):
                    dropped[t, s] = p[t, s] * keep[b, h, t, s]
        matmul_serial(dropped if use_keep else p, v[b, :, h, :], ctx[b, :, h, :])


def attention_backward(q, k, v, probs, keep, use_keep, dctx, scale, dq, dk, dv):
    """The gradients of attention_forward: from dctx (N, T, H, dv) (the loss's gradient at ctx) to
    dq (N, T, H, dk), dk (N, S, H, dk), dv (N, S, H, dv); operands as there (any strides, last axis
    contiguous). Per (sample, head): dprobs = dctx v^T (times the dropout factors), dv = dropped^T dctx,
    the softmax's gradient dscores = probs * (dprobs - sum over keys of dprobs * probs) * scale (masked
    keys have probability 0 and so no gradient), dq = dscores k, dk = dscores^T q: four BLAS products."""
    parts = _shares(q, k, v)
    if parts <= 1:
        backward_range(q, k, v, probs, keep, use_keep, dctx, scale, dq, dk, dv, 0, q.shape[0] * q.shape[2])
        return
    with one_blas_thread():
        pairs_split(BACKWARD, q, k, v, _NO_MASK, False, scale, keep, use_keep, True, probs, dctx, dq, dk, dv, parts)


@numba.njit(**JIT)
def backward_range(q, k, v, probs, keep, use_keep, dctx, scale, dq, dk, dv, p0, p1):
    """attention_backward for the (sample, head) pairs p0:p1 (pair = sample * heads + head)."""
    rows, heads = q.shape[1], q.shape[2]
    keys = k.shape[1]
    dt = q.dtype
    dprobs = np.empty((rows, keys), dt)
    dropped = np.empty((rows, keys), dt)
    for pair in range(p0, p1):
        b, h = pair // heads, pair % heads
        p = probs[b, h]  # (T, S)
        if use_keep:
            for t in range(rows):
                for s in range(keys):
                    dropped[t, s] = p[t, s] * keep[b, h, t, s]
        matmul_serial((dropped if use_keep else p).T, dctx[b, :, h, :], dv[b, :, h, :])
        matmul_serial(dctx[b, :, h, :], v[b, :, h, :].T, dprobs)
        for t in range(rows):
            if use_keep:
                for s in range(keys):
                    dprobs[t, s] *= keep[b, h, t, s]
            dot = 0.0
            for s in range(keys):
                dot += np.float64(dprobs[t, s]) * np.float64(p[t, s])
            for s in range(keys):
                dprobs[t, s] = np.float64(p[t, s]) * (np.float64(dprobs[t, s]) - dot) * scale
        matmul_serial(dprobs, k[b, :, h, :], dq[b, :, h, :])
        matmul_serial(dprobs.T, q[b, :, h, :], dk[b, :, h, :])
