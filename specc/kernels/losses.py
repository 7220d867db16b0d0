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
import numpy as np

from . import JIT
from .activations import _argmax, _exp  # a row's first maximum; exp(x <= 0) in float64, vectorised

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
    """(loss, d loss / d p) of one element; t, p float64."""
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
    if code == BCE_LOGITS:  # PyTorch's binary_cross_entropy_with_logits, from e = exp(-|p|) in (0, 1]:
        e = _exp(-abs(p))  # d/dp = sigmoid(p) - t as (1 - t) sigmoid(p) - t sigmoid(-p), which keeps
        up = (1.0 if p >= 0 else e) / (1.0 + e)  # its digits where sigmoid(p) rounds to t = 1
        down = (e if p >= 0 else 1.0) / (1.0 + e)
        return max(p, 0.0) - p * t + math.log1p(e), (1.0 - t) * up - t * down
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
            t = np.float64(y_true[r, j])
            if hinge_binary:
                t = 2.0 * t - 1.0
            loss, d = _elementwise_loss(code, t, np.float64(y_pred[r, j]), delta, lo, hi)
            acc += loss
            grad[r, j] = d * gw
        total += w * acc
    return total * inv_count


@numba.njit(**JIT)
def _logits_row(z, r, grad):
    """For row r of the logits z: (top, m, rest) with m = z[r, top] the row's (first) maximum and rest the
    sum of exp(z - m) over the other columns, whose exp(z - m) go to grad[r] (1 at top). Then
    log-sum-exp = m + log1p(rest) and softmax = grad[r] / (1 + rest), and 1 - softmax at top is
    rest / (1 + rest): none of them loses the digits of a probability that rounds to 1."""
    n = z.shape[1]
    top = _argmax(z, r)
    m = np.float64(z[r, top])
    rest = 0.0
    for j in range(n):
        e = 1.0 if j == top else _exp(np.float64(z[r, j]) - m)
        grad[r, j] = e
        rest += 0.0 if j == top else e
    return top, m, rest


@numba.njit(**JIT)
def categorical(y_true, y_pred, weights, inv_count, from_logits, lo, hi, grad):
    """Categorical cross-entropy -sum_j t_j log p_j over the last axis.

    from_logits: p = softmax(y_pred), with (see _logits_row) -log p_j = (m - z_j) + log1p(rest) and the
    gradient tsum p_j - t_j, at the top column (tsum - t_top (1 + rest)) / (1 + rest) =
    (sum of the other t - t_top rest) / (1 + rest). Otherwise Keras's probability path:
    p = clip(y_pred / sum(y_pred), eps, 1 - eps).
    """
    rows, n = y_pred.shape
    total = 0.0
    for r in range(rows):
        gw = weights[r] * inv_count
        loss = 0.0
        if from_logits:
            top, m, rest = _logits_row(y_pred, r, grad)
            log_s = math.log1p(rest)
            t_rest = 0.0
            for j in range(n):
                t = np.float64(y_true[r, j])
                t_rest += 0.0 if j == top else t
                loss += t * (m - np.float64(y_pred[r, j]))
            t_top = np.float64(y_true[r, top])
            tsum = t_top + t_rest
            loss += tsum * log_s
            c = gw * tsum / (1.0 + rest)
            for j in range(n):
                grad[r, j] = c * grad[r, j] - gw * np.float64(y_true[r, j])
            grad[r, top] = gw * (t_rest - t_top * rest) / (1.0 + rest)
        else:
            s = 0.0
            for j in range(n):
                s += np.float64(y_pred[r, j])
            if s == 0.0:  # all-zero probabilities: Keras gives NaN (0/0); treat them as clipped instead
                s = 1.0
            dot = 0.0  # d loss / d p_j = (g_j - sum_i g_i q_i) / s, g_i = d loss / d q_i (0 where clipped)
            for j in range(n):
                q = np.float64(y_pred[r, j]) / s
                qc = min(max(q, lo), hi)
                t = np.float64(y_true[r, j])
                loss -= t * math.log(qc)
                dot += 0.0 if (q < lo or q > hi) else -t / qc * q
            for j in range(n):  # g again, not kept in grad: its float32 rounding is all of g_j - dot at q ~ 1
                q = np.float64(y_pred[r, j]) / s
                g = 0.0 if (q < lo or q > hi) else -np.float64(y_true[r, j]) / min(max(q, lo), hi)
                grad[r, j] = gw * (g - dot) / s
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
        if from_logits:  # categorical's, with t one-hot at k
            top, m, rest = _logits_row(y_pred, r, grad)
            loss = (m - np.float64(y_pred[r, k])) + math.log1p(rest)
            c = gw / (1.0 + rest)
            for j in range(n):
                grad[r, j] = c * grad[r, j]
            if k == top:
                grad[r, k] = -c * rest
            else:
                grad[r, k] = c * _exp(np.float64(y_pred[r, k]) - m) - gw
        else:
            s = 0.0
            for j in range(n):
                s += np.float64(y_pred[r, j])
            if s == 0.0:  # all-zero probabilities: Keras gives NaN (0/0); treat them as clipped instead
                s = 1.0
            q = np.float64(y_pred[r, k]) / s
            qc = min(max(q, lo), hi)
            loss = -math.log(qc)
            g = 0.0 if (q < lo or q > hi) else -1.0 / qc
            dot = g * q
            for j in range(n):
                grad[r, j] = -gw * dot / s
            grad[r, k] = gw * (g - dot) / s  # in float64: g (1 - q) cancels where q ~ 1
        total += weights[r] * loss
    return total * inv_count
