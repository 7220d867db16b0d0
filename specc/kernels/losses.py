"""Loss kernels: the value of a Keras 3 loss under "sum_over_batch_size" and its gradient w.r.t. y_pred.

Arrays are 2-D (rows, last axis): a row is one value of the per-sample loss (the loss before reduction),
so a (batch, time, classes) output has batch * time rows. `weights` (rows,) holds each row's sample
weight and `inv_count` is 1 / rows, so every kernel returns

    value = sum_r weights[r] * loss_r / rows

(accumulated in float64) and writes d value / d y_pred into `grad` (the dtype of y_pred). The clipping
bounds `lo`, `hi` are epsilon and 1 - epsilon rounded to y_pred's dtype, as Keras clips in that dtype.
Where Keras clips, the gradient is zero outside the clip range (PyTorch's clamp backward).
"""

from __future__ import annotations

import math

import numba

from . import JIT
from .activations import _sigmoid  # the numerically stable scalar sigmoid, shared

# Elementwise losses (Keras takes the mean over the last axis, except kl_divergence which sums it).
MSE, MAE, HUBER, BCE, BCE_LOGITS, HINGE, KLD = range(7)


@numba.njit(**JIT)
def _sign(x):
    if x > 0:
        return 1.0
    if x < 0:
        return -1.0
    return 0.0


@numba.njit(**JIT)
def _elementwise_loss(code, t, p, delta, lo, hi):
    """(loss, d loss / d p) of one element."""
    if code == MSE:
        d = p - t
        return d * d, 2.0 * d
    if code == MAE:
        d = p - t
        return abs(d), _sign(d)
    if code == HUBER:
        d = p - t
        a = abs(d)
        if a <= delta:
            return 0.5 * d * d, d
        return delta * a - 0.5 * delta * delta, delta * _sign(d)
    if code == BCE:  # clip(p, eps, 1 - eps), then -(t log p + (1 - t) log(1 - p))
        q = min(max(p, lo), hi)
        loss = -(t * math.log(q) + (1.0 - t) * math.log(1.0 - q))
        if p < lo or p > hi:
            return loss, 0.0
        return loss, (q - t) / (q * (1.0 - q))
    if code == BCE_LOGITS:  # PyTorch's binary_cross_entropy_with_logits
        return max(p, 0.0) - p * t + math.log1p(math.exp(-abs(p))), _sigmoid(p) - t
    if code == HINGE:
        m = 1.0 - t * p
        if m > 0:
            return m, -t
        return 0.0, 0.0
    # KLD: t, p clipped to [eps, 1]; t log(t / p)
    tc = min(max(t, lo), 1.0)
    q = min(max(p, lo), 1.0)
    loss = tc * math.log(tc / q)
    if p < lo or p > 1.0:
        return loss, 0.0
    return loss, -tc / q


@numba.njit(**JIT)
def elementwise(code, y_true, y_pred, weights, row_scale, inv_count, delta, lo, hi, hinge_binary, grad):
    """Per-element losses reduced over the last axis with `row_scale` (1/n for a mean, 1 for a sum).

    hinge_binary: the labels are all 0 or 1, so hinge maps them to -1/+1 first (Keras's rule).
    """
    rows, n = y_pred.shape
    total = 0.0
    for r in range(rows):
        w = weights[r] * row_scale
        gw = w * inv_count
        acc = 0.0
        for j in range(n):
            t = y_true[r, j] * 1.0
            if hinge_binary:
                t = 2.0 * t - 1.0
            loss, d = _elementwise_loss(code, t, y_pred[r, j] * 1.0, delta, lo, hi)
            acc += loss
            grad[r, j] = d * gw
        total += w * acc
    return total * inv_count


@numba.njit(**JIT)
def categorical(y_true, y_pred, weights, inv_count, from_logits, lo, hi, grad):
    """Categorical cross-entropy -sum_j t_j log p_j over the last axis.

    from_logits: p = softmax(y_pred) through log-sum-exp. Otherwise Keras's probability path:
    p = clip(y_pred / sum(y_pred), eps, 1 - eps).
    """
    rows, n = y_pred.shape
    total = 0.0
    for r in range(rows):
        gw = weights[r] * inv_count
        loss = 0.0
        if from_logits:
            m = y_pred[r, 0] * 1.0
            for j in range(1, n):
                m = max(m, y_pred[r, j] * 1.0)
            s = 0.0
            for j in range(n):
                e = math.exp(y_pred[r, j] - m)
                grad[r, j] = e
                s += e
            lse = m + math.log(s)
            tsum = 0.0
            for j in range(n):
                t = y_true[r, j] * 1.0
                tsum += t
                loss -= t * (y_pred[r, j] - lse)
            c = gw * tsum / s
            for j in range(n):
                grad[r, j] = c * grad[r, j] - gw * y_true[r, j]
        else:
            s = 0.0
            for j in range(n):
                s += y_pred[r, j]
            if s == 0.0:  # all-zero probabilities: Keras gives NaN (0/0); treat them as clipped instead
                s = 1.0
            dot = 0.0
            for j in range(n):
                q = y_pred[r, j] / s
                qc = min(max(q, lo), hi)
                t = y_true[r, j] * 1.0
                loss -= t * math.log(qc)
                g = 0.0 if (q < lo or q > hi) else -t / qc
                dot += g * q
                grad[r, j] = g
            for j in range(n):
                grad[r, j] = gw * (grad[r, j] - dot) / s
        total += weights[r] * loss
    return total * inv_count


@numba.njit(**JIT)
def sparse_categorical(labels, y_pred, weights, inv_count, from_logits, lo, hi, grad):
    """Sparse categorical cross-entropy: `labels` (rows,) int64 class indices, already range-checked."""
    rows, n = y_pred.shape
    total = 0.0
    for r in range(rows):
        gw = weights[r] * inv_count
        k = labels[r]
        if from_logits:
            m = y_pred[r, 0] * 1.0
            for j in range(1, n):
                m = max(m, y_pred[r, j] * 1.0)
            s = 0.0
            for j in range(n):
                e = math.exp(y_pred[r, j] - m)
                grad[r, j] = e
                s += e
            loss = m + math.log(s) - y_pred[r, k]
            c = gw / s
            for j in range(n):
                grad[r, j] = c * grad[r, j]
            grad[r, k] -= gw
        else:
            s = 0.0
            for j in range(n):
                s += y_pred[r, j]
            if s == 0.0:  # all-zero probabilities: Keras gives NaN (0/0); treat them as clipped instead
                s = 1.0
            q = y_pred[r, k] / s
            qc = min(max(q, lo), hi)
            loss = -math.log(qc)
            g = 0.0 if (q < lo or q > hi) else -1.0 / qc
            dot = g * q
            for j in range(n):
                grad[r, j] = -gw * dot / s
            grad[r, k] += gw * g / s
        total += weights[r] * loss
    return total * inv_count
