"""Scaled dot-product attention with Keras's masks, forward and backward, fused per (sample, head).

Per (sample, head) the matrices are small (queries x keys, a head's width of 8 to 64), so the scores, the
masked softmax and the context are one loop nest over each query row: no (batch * heads) batched
products (NumPy runs those on strided views with its own loops, not BLAS) and no transposed copies of
the projections, which the kernels read in place as (N, L, heads, size) views. The projections
themselves are BLAS products in the layer (layers/attention.py).

Keras's masked softmax puts -1e9 where the mask is 0, takes the softmax and then zeroes those positions
(layers.Softmax with a mask): a row with every key masked gives all zeros, not a uniform distribution.
Here masked keys are left out of the sum, which is the same to float precision, and a fully masked row
is zeros too. `masked_softmax` is that softmax alone, over (n, T, S) scores.
"""

from __future__ import annotations

import numba
import numpy as np

from . import JIT
from .activations import _exp


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


@numba.njit(**JIT)
def attention_forward(q, k, v, mask, use_mask, scale, keep, use_keep, probs, ctx):
    """Scaled dot-product attention of every (sample, head), fused: scores, masked softmax, context.

    q: (N, T, H, dk), k: (N, S, H, dk), v: (N, S, H, dv), any strides (column blocks of the projections'
    (N * L, H * size) outputs, so no transposes are made); mask: (m, T, S) uint8, m = 1 or N, read only
    with use_mask; keep: (N, H, T, S) dropout factors, read only with use_keep.
    Outputs: probs (N, H, T, S), the softmax before dropout (backward needs it); ctx (N, T, H, dv), the
    probabilities (after dropout) times the values: the output projection's operand as (N * T, H * dv).
    Each softmax row is taken in float64, in a row buffer whose loops have no branch (so they vectorise)."""
    n, rows, heads, depth = q.shape
    keys = k.shape[1]
    width = v.shape[3]
    k_t = np.empty((depth, keys), q.dtype)  # this head's keys, transposed: the score loop runs over keys
    v_h = np.empty((keys, width), q.dtype)  # this head's values, contiguous
    z = np.empty(keys, np.float64)
    p = np.empty(keys, q.dtype)
    acc = np.empty(width, q.dtype)
    for b in range(n):
        mb = 0 if mask.shape[0] == 1 else b
        for h in range(heads):
            for s in range(keys):
                for j in range(depth):
                    k_t[j, s] = k[b, s, h, j]
                for j in range(width):
                    v_h[s, j] = v[b, s, h, j]
            for t in range(rows):
                for s in range(keys):
                    z[s] = 0.0
                for j in range(depth):
                    qj = np.float64(q[b, t, h, j] * scale)
                    for s in range(keys):
                        z[s] += qj * np.float64(k_t[j, s])
                top = -1e300  # a finite floor: fastmath does not keep comparisons with -inf reliable
                if use_mask:
                    for s in range(keys):
                        top = max(top, z[s] if mask[mb, t, s] != 0 else -1e300)
                else:
                    for s in range(keys):
                        top = max(top, z[s])
                total = 0.0
                if use_mask:
                    for s in range(keys):
                        e = _exp(z[s] - top) * (mask[mb, t, s] != 0)
                        z[s] = e
                        total += e
                else:
                    for s in range(keys):
                        e = _exp(z[s] - top)
                        z[s] = e
                        total += e
                # a fully masked row (total 0) gives zeros, as Keras's masked softmax
                inv = 1.0 / total if total > 0.0 else 0.0
                for s in range(keys):
                    probs[b, h, t, s] = z[s] * inv
                if use_keep:
                    for s in range(keys):
                        p[s] = probs[b, h, t, s] * keep[b, h, t, s]
                else:
                    for s in range(keys):
                        p[s] = probs[b, h, t, s]
                for j in range(width):
                    acc[j] = 0.0
                for s in range(keys):
                    ps = p[s]
                    for j in range(width):
                        acc[j] += ps * v_h[s, j]
                for j in range(width):
                    ctx[b, t, h, j] = acc[j]


@numba.njit(**JIT)
def attention_backward(q, k, v, probs, keep, use_keep, dctx, scale, dq, dk, dv):
    """The gradients of attention_forward: from dctx (N, T, H, dv) (the loss's gradient at ctx) to
    dq (N, T, H, dk), dk (N, S, H, dk), dv (N, S, H, dv), all any strides; shapes and operands as there.
    Per query row t of a (sample, head): dprobs = dctx[t] . v (times the dropout factors), the softmax's
    gradient dscores = probs * (dprobs - sum(dprobs * probs)) (masked keys have probability 0 and so no
    gradient), then dq[t] = scale * dscores . k, and dk, dv summed over the rows in buffers."""
    n, rows, heads, depth = q.shape
    keys = k.shape[1]
    width = v.shape[3]
    dt = q.dtype
    k_h = np.empty((keys, depth), dt)
    v_t = np.empty((width, keys), dt)  # transposed: the dprobs loop runs over keys
    dk_h = np.empty((keys, depth), dt)
    dv_h = np.empty((keys, width), dt)
    dp = np.empty(keys, np.float64)
    pd = np.empty(keys, dt)
    ds = np.empty(keys, dt)
    qt = np.empty(depth, dt)
    gt = np.empty(width, dt)
    acc = np.empty(depth, dt)
    for b in range(n):
        for h in range(heads):
            for s in range(keys):
                for j in range(depth):
                    k_h[s, j] = k[b, s, h, j]
                    dk_h[s, j] = 0.0
                for j in range(width):
                    v_t[j, s] = v[b, s, h, j]
                    dv_h[s, j] = 0.0
            for t in range(rows):
                for s in range(keys):
                    dp[s] = 0.0
                for j in range(width):
                    gt[j] = dctx[b, t, h, j]
                    g = np.float64(gt[j])
                    for s in range(keys):
                        dp[s] += g * np.float64(v_t[j, s])
                if use_keep:
                    for s in range(keys):
                        pd[s] = probs[b, h, t, s] * keep[b, h, t, s]
                        dp[s] *= keep[b, h, t, s]
                else:
                    for s in range(keys):
                        pd[s] = probs[b, h, t, s]
                for s in range(keys):  # dv[s] += dropped probs[t, s] * dctx[t]
                    ps = pd[s]
                    for j in range(width):
                        dv_h[s, j] += ps * gt[j]
                dot = 0.0
                for s in range(keys):
                    dot += dp[s] * np.float64(probs[b, h, t, s])
                for s in range(keys):
                    ds[s] = np.float64(probs[b, h, t, s]) * (dp[s] - dot) * scale
                for j in range(depth):
                    acc[j] = 0.0
                    qt[j] = q[b, t, h, j]
                for s in range(keys):
                    d = ds[s]
                    for j in range(depth):
                        acc[j] += d * k_h[s, j]
                        dk_h[s, j] += d * qt[j]
                for j in range(depth):
                    dq[b, t, h, j] = acc[j]
            for s in range(keys):
                for j in range(depth):
                    dk[b, s, h, j] = dk_h[s, j]
                for j in range(width):
                    dv[b, s, h, j] = dv_h[s, j]
