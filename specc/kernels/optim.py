"""Optimizer steps: one fused kernel per optimizer over the flat trainable buffer.

Every kernel takes the parameters, their gradients and the optimizer's state arrays (all flat, the same
length and dtype; an unused state array may be empty), plus `offsets`: variable k is
params[offsets[k]:offsets[k + 1]]. In one pass per variable a kernel applies Keras's order of
operations for each element:

    g = clip(grad)                     clipnorm (per variable), clipvalue or global_clipnorm
    w = w * decay                      decay = 1 - weight_decay * lr (1 when there is none)
    w = w - update(g, state)           the optimizer's own rule

Scalars that depend only on the step number (bias corrections, the learning rate) are computed by the
caller in float64 and passed in.
"""

from __future__ import annotations

import math

import numba

from . import JIT

NO_CLIP, CLIPNORM, CLIPVALUE, GLOBAL_CLIPNORM = range(4)


@numba.njit(**JIT)
def _global_scale(clip_mode, clip, grads):
    """Keras's clip_by_global_norm factor: clip * min(1 / norm, 1 / clip), 1 for a zero norm."""
    if clip_mode != GLOBAL_CLIPNORM:
        return 1.0
    s = 0.0
    for i in range(grads.shape[0]):
        s += grads[i] * grads[i]
    norm = math.sqrt(s)
    if norm == 0.0:
        return 1.0
    return clip * min(1.0 / norm, 1.0 / clip)


@numba.njit(**JIT)
def _variable_scale(clip_mode, clip, global_scale, grads, a, b):
    """Keras's per-variable clipnorm factor clip / max(norm, clip), or the global factor."""
    if clip_mode != CLIPNORM:
        return global_scale
    s = 0.0
    for i in range(a, b):
        s += grads[i] * grads[i]
    return clip / max(math.sqrt(s), clip)


@numba.njit(**JIT)
def _clipped(g, scale, clip_mode, clip):
    g = g * scale
    if clip_mode == CLIPVALUE:
        g = min(max(g, -clip), clip)
    return g


@numba.njit(**JIT)
def sgd(params, grads, offsets, clip_mode, clip, decay, lr, momentum, nesterov, m):
    gs = _global_scale(clip_mode, clip, grads)
    for k in range(offsets.shape[0] - 1):
        a, b = offsets[k], offsets[k + 1]
        scale = _variable_scale(clip_mode, clip, gs, grads, a, b)
        for i in range(a, b):
            g = _clipped(grads[i], scale, clip_mode, clip)
            w = params[i] * decay
            if momentum != 0.0:
                mi = m[i] * momentum - g * lr
                m[i] = mi
                if nesterov:
                    w += mi * momentum - g * lr
                else:
                    w += mi
            else:
                w -= g * lr
            params[i] = w


@numba.njit(**JIT)
def adam(params, grads, offsets, clip_mode, clip, decay, alpha, beta_1, beta_2, epsilon, amsgrad, m, v, v_hat):
    """alpha = lr * sqrt(1 - beta_2^t) / (1 - beta_1^t); w -= alpha * m / (sqrt(v) + epsilon)."""
    gs = _global_scale(clip_mode, clip, grads)
    for k in range(offsets.shape[0] - 1):
        a, b = offsets[k], offsets[k + 1]
        scale = _variable_scale(clip_mode, clip, gs, grads, a, b)
        for i in range(a, b):
            g = _clipped(grads[i], scale, clip_mode, clip)
            mi = beta_1 * m[i] + (1.0 - beta_1) * g
            vi = beta_2 * v[i] + (1.0 - beta_2) * g * g
            m[i] = mi
            v[i] = vi
            if amsgrad:
                vi = max(v_hat[i] * 1.0, vi)
                v_hat[i] = vi
            params[i] = params[i] * decay - mi * alpha / (math.sqrt(vi) + epsilon)


@numba.njit(**JIT)
def rmsprop(params, grads, offsets, clip_mode, clip, decay, lr, rho, momentum, epsilon, centered,
            velocity, mom, average_grad):
    gs = _global_scale(clip_mode, clip, grads)
    for k in range(offsets.shape[0] - 1):
        a, b = offsets[k], offsets[k + 1]
        scale = _variable_scale(clip_mode, clip, gs, grads, a, b)
        for i in range(a, b):
            g = _clipped(grads[i], scale, clip_mode, clip)
            vi = rho * velocity[i] + (1.0 - rho) * g * g
            velocity[i] = vi
            denominator = vi + epsilon
            if centered:
                ag = rho * average_grad[i] + (1.0 - rho) * g
                average_grad[i] = ag
                denominator -= ag * ag
            increment = lr * g / math.sqrt(denominator)
            if momentum > 0.0:
                increment += momentum * mom[i]
                mom[i] = increment
            params[i] = params[i] * decay - increment


@numba.njit(**JIT)
def adagrad(params, grads, offsets, clip_mode, clip, decay, lr, epsilon, accumulator):
    gs = _global_scale(clip_mode, clip, grads)
    for k in range(offsets.shape[0] - 1):
        a, b = offsets[k], offsets[k + 1]
        scale = _variable_scale(clip_mode, clip, gs, grads, a, b)
        for i in range(a, b):
            g = _clipped(grads[i], scale, clip_mode, clip)
            acc = accumulator[i] + g * g
            accumulator[i] = acc
            params[i] = params[i] * decay - lr * g / math.sqrt(acc + epsilon)


@numba.njit(**JIT)
def adadelta(params, grads, offsets, clip_mode, clip, decay, lr, rho, epsilon, accumulated_grad,
             accumulated_delta_var):
    gs = _global_scale(clip_mode, clip, grads)
    for k in range(offsets.shape[0] - 1):
        a, b = offsets[k], offsets[k + 1]
        scale = _variable_scale(clip_mode, clip, gs, grads, a, b)
        for i in range(a, b):
            g = _clipped(grads[i], scale, clip_mode, clip)
            ag = rho * accumulated_grad[i] + (1.0 - rho) * g * g
            accumulated_grad[i] = ag
            delta = -math.sqrt(accumulated_delta_var[i] + epsilon) * g / math.sqrt(ag + epsilon)
            accumulated_delta_var[i] = rho * accumulated_delta_var[i] + (1.0 - rho) * delta * delta
            params[i] = params[i] * decay + lr * delta


@numba.njit(**JIT)
def nadam(params, grads, offsets, clip_mode, clip, decay, lr, beta_1, beta_2, epsilon, c_m, c_g, c_v, m, v):
    """m_hat = c_m * m + c_g * g with c_m = u_{t+1} / (1 - prod u_..t+1), c_g = (1 - u_t) / (1 - prod u_..t);
    v_hat = c_v * v with c_v = 1 / (1 - beta_2^t); w -= lr * m_hat / (sqrt(v_hat) + epsilon)."""
    gs = _global_scale(clip_mode, clip, grads)
    for k in range(offsets.shape[0] - 1):
        a, b = offsets[k], offsets[k + 1]
        scale = _variable_scale(clip_mode, clip, gs, grads, a, b)
        for i in range(a, b):
            g = _clipped(grads[i], scale, clip_mode, clip)
            mi = beta_1 * m[i] + (1.0 - beta_1) * g
            vi = beta_2 * v[i] + (1.0 - beta_2) * g * g
            m[i] = mi
            v[i] = vi
            m_hat = c_m * mi + c_g * g
            params[i] = params[i] * decay - lr * m_hat / (math.sqrt(c_v * vi) + epsilon)
