"""Scaled dot-product attention's softmax over keys, with Keras's masks, forward and backward.

The products around it (scores = Q K^T, output = P V and their gradients) are batched matrix products that
NumPy hands to BLAS; what needs a loop of its own is the masked softmax of each query row and its
gradient. Scores are laid out (batch * heads, queries, keys); the mask is (batch or 1, queries, keys)
with 1 where a query may attend to a key, shared by the `heads` consecutive score matrices of a sample.

Keras's masked softmax puts -1e9 where the mask is 0, takes the softmax and then zeroes those positions
(layers.Softmax with a mask): a row with every key masked gives all zeros, not a uniform distribution.
Here masked keys are left out of the sum, which is the same to float precision, and a fully masked row
is zeros too.
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
def softmax_backward(probs, dprobs, dscores):
    """dscores = probs * (dprobs - sum over keys of dprobs * probs), row by row; masked keys have
    probability 0 and so get no gradient. All (n, T, S); dscores may alias dprobs."""
    n, rows, keys = probs.shape
    for i in range(n):
        for t in range(rows):
            dot = 0.0
            for s in range(keys):
                dot += np.float64(dprobs[i, t, s]) * np.float64(probs[i, t, s])
            for s in range(keys):
                dscores[i, t, s] = np.float64(probs[i, t, s]) * (np.float64(dprobs[i, t, s]) - dot)
