"""Optimizer steps: one fused kernel per optimizer over the flat trainable buffer.

Every kernel takes the parameters, their gradients and the optimizer's state arrays (all flat, the same
length and dtype; an unused state array may be empty), plus `offsets`: variable k is
params[offsets[k]:offsets[k + 1]]. In one pass per variable a kernel applies Keras's order of
operations for each element:

    g = clip(grad)                     clipnorm (per variable), clipvalue or global_clipnorm
    w = w * decay                      decay = 1 - weight_decay * lr (1 when there is none)
    w = w - update(g, state)           the optimizer's own rule

Each kernel walks the variables and hands each one's slices to an element loop over range(n): loops
from 0 over a view vectorise, where a loop over range(start, stop) of the flat arrays does not (Numba
cannot rule out negative indices there).

Scalars that depend only on the step number (bias corrections, the learning rate) are computed by the
caller in float64 and passed in; pass them as Python floats/bools so each dtype compiles once. The element
loops cast them to the parameters' dtype first: the update then runs in float32 for a float32 model, as
Keras's and PyTorch's do, and faster than float64 arithmetic (vector sqrt and division are twice as
wide, and there are no conversions). Complements like 1 - beta_2 are taken in float64 and rounded once:
float32(1) - float32(0.999) is 1.3e-5 off 0.001, a bias in every step.
"""

from __future__ import annotations

import math

import numba

# kernels/__init__ starts Numba's thread pool, which the cached machine code of the parallel loops below
# needs before it loads.
from . import JIT

NO_CLIP, CLIPNORM, CLIPVALUE, GLOBAL_CLIPNORM = range(4)
PARALLEL_MIN_SIZE = 1 << 16  # elements of a variable below which SGD's and Adam's updates stay on one thread

# "No clip" bound: finite (fastmath assumes there are no infinities) in float32 as well as float64, since
# the element loops compute in the parameters' dtype.
_HUGE = 3.4028234663852886e38


@numba.njit(**JIT)
def _sum_squares(g):
    s = 0.0
    for i in range(g.shape[0]):
        s += g[i] * g[i]
    return s


@numba.njit(**JIT)
def _global_scale(clip_mode, clip, grads):
    """Keras's clip_by_global_norm factor: clip * min(1 / norm, 1 / clip), 1 for a zero norm."""
    if clip_mode != GLOBAL_CLIPNORM:
        return 1.0
    norm = math.sqrt(_sum_squares(grads))
    if norm == 0.0:
        return 1.0
    return clip * min(1.0 / norm, 1.0 / clip)


@numba.njit(**JIT)
def _clipping(clip_mode, clip, global_scale, g):
    """(scale, lo, hi) for one variable's gradient g: g -> min(max(g * scale, lo), hi).

    clipnorm is per variable, Keras's g * clip / max(norm, clip); clipvalue bounds each element."""
    scale = global_scale
    if clip_mode == CLIPNORM:
        scale = clip / max(math.sqrt(_sum_squares(g)), clip)
    if clip_mode == CLIPVALUE:
        return scale, -clip, clip
    return scale, -_HUGE, _HUGE


# --- SGD ------------------------------------------------------------------------------------------------


@numba.njit(**JIT)
def _sgd(w, grad, scale, lo, hi, decay, lr, momentum, nesterov, m):
    t = w.dtype.type
    scale, lo, hi, decay, lr, momentum = t(scale), t(lo), t(hi), t(decay), t(lr), t(momentum)
    for i in range(w.shape[0]):
        g = min(max(grad[i] * scale, lo), hi)
        if momentum != 0.0:
            mi = m[i] * momentum - g * lr
            m[i] = mi
            if nesterov:
                w[i] = w[i] * decay + mi * momentum - g * lr
            else:
                w[i] = w[i] * decay + mi
        else:
            w[i] = w[i] * decay - g * lr


@numba.njit(parallel=True, **JIT)
def _sgd_parallel(w, grad, scale, lo, hi, decay, lr, momentum, nesterov, m, parts):
    """_sgd over `parts` threads, each on a contiguous slice (m is empty without momentum)."""
    n = w.shape[0]
    for t in numba.prange(parts):
        a, b = n * t // parts, n * (t + 1) // parts
        _sgd(w[a:b], grad[a:b], scale, lo, hi, decay, lr, momentum, nesterov, m[a:b] if momentum != 0.0 else m)


@numba.njit(**JIT)
def sgd(params, grads, offsets, clip_mode, clip, decay, lr, momentum, nesterov, m):
    """On the calling thread; sgd_threaded splits large variables between threads."""
    gs = _global_scale(clip_mode, clip, grads)
    for k in range(offsets.shape[0] - 1):
        a, b = offsets[k], offsets[k + 1]
        scale, lo, hi = _clipping(clip_mode, clip, gs, grads[a:b])
        _sgd(params[a:b], grads[a:b], scale, lo, hi, decay, lr, momentum, nesterov, m[a:b] if momentum != 0.0 else m)


@numba.njit(**JIT)
def sgd_threaded(params, grads, offsets, clip_mode, clip, decay, lr, momentum, nesterov, m, threads):
    """sgd with each variable of >= PARALLEL_MIN_SIZE elements split between `threads` threads. A kernel
    of its own (the caller picks one, see uses_threads) so models without such variables, or one thread,
    never compile the parallel loop."""
    gs = _global_scale(clip_mode, clip, grads)
    for k in range(offsets.shape[0] - 1):
        a, b = offsets[k], offsets[k + 1]
        scale, lo, hi = _clipping(clip_mode, clip, gs, grads[a:b])
        mk = m[a:b] if momentum != 0.0 else m
        if b - a >= PARALLEL_MIN_SIZE:
            _sgd_parallel(params[a:b], grads[a:b], scale, lo, hi, decay, lr, momentum, nesterov, mk, threads)
        else:
            _sgd(params[a:b], grads[a:b], scale, lo, hi, decay, lr, momentum, nesterov, mk)


def uses_threads(largest: int, threads: int) -> bool:
    """Whether the *_threaded kernels would split a variable, the largest having `largest` elements."""
    return threads > 1 and largest >= PARALLEL_MIN_SIZE


# --- Adam / AdamW -----------------------------------------------------------------------------------------


@numba.njit(**JIT)
def _adam(w, grad, scale, lo, hi, decay, alpha, beta_1, beta_2, epsilon, m, v):
    t = w.dtype.type
    one_minus_beta_1 = t(1.0 - beta_1)
    one_minus_beta_2 = t(1.0 - beta_2)
    scale, lo, hi, decay = t(scale), t(lo), t(hi), t(decay)
    alpha, beta_1, beta_2, epsilon = t(alpha), t(beta_1), t(beta_2), t(epsilon)
    for i in range(w.shape[0]):
        g = min(max(grad[i] * scale, lo), hi)
        mi = beta_1 * m[i] + one_minus_beta_1 * g
        vi = beta_2 * v[i] + one_minus_beta_2 * g * g
        m[i] = mi
        v[i] = vi
        w[i] = w[i] * decay - mi * alpha / (math.sqrt(vi) + epsilon)


@numba.njit(parallel=True, **JIT)
def _adam_parallel(w, grad, scale, lo, hi, decay, alpha, beta_1, beta_2, epsilon, m, v, parts):
    """_adam over `parts` threads, each on a contiguous slice."""
    n = w.shape[0]
    for t in numba.prange(parts):
        a, b = n * t // parts, n * (t + 1) // parts
        _adam(w[a:b], grad[a:b], scale, lo, hi, decay, alpha, beta_1, beta_2, epsilon, m[a:b], v[a:b])


@numba.njit(**JIT)
def _amsgrad(w, grad, scale, lo, hi, decay, alpha, beta_1, beta_2, epsilon, m, v, v_hat):
    t = w.dtype.type
    one_minus_beta_1 = t(1.0 - beta_1)
    one_minus_beta_2 = t(1.0 - beta_2)
    scale, lo, hi, decay = t(scale), t(lo), t(hi), t(decay)
    alpha, beta_1, beta_2, epsilon = t(alpha), t(beta_1), t(beta_2), t(epsilon)
    for i in range(w.shape[0]):
        g = min(max(grad[i] * scale, lo), hi)
        mi = beta_1 * m[i] + one_minus_beta_1 * g
        vi = beta_2 * v[i] + one_minus_beta_2 * g * g
        m[i] = mi
        v[i] = vi
        vh = max(v_hat[i], vi)
        v_hat[i] = vh
        w[i] = w[i] * decay - mi * alpha / (math.sqrt(vh) + epsilon)


@numba.njit(**JIT)
def adam(params, grads, offsets, clip_mode, clip, decay, alpha, beta_1, beta_2, epsilon, m, v):
    """alpha = lr * sqrt(1 - beta_2^t) / (1 - beta_1^t); w -= alpha * m / (sqrt(v) + epsilon). On the
    calling thread; adam_threaded splits large variables, amsgrad is the AMSGrad variant (each compiles
    only when used)."""
    gs = _global_scale(clip_mode, clip, grads)
    for k in range(offsets.shape[0] - 1):
        a, b = offsets[k], offsets[k + 1]
        scale, lo, hi = _clipping(clip_mode, clip, gs, grads[a:b])
        _adam(params[a:b], grads[a:b], scale, lo, hi, decay, alpha, beta_1, beta_2, epsilon, m[a:b], v[a:b])


@numba.njit(**JIT)
def adam_threaded(params, grads, offsets, clip_mode, clip, decay, alpha, beta_1, beta_2, epsilon, m, v, threads):
    """adam with each variable of >= PARALLEL_MIN_SIZE elements split between `threads` threads (see
    sgd_threaded)."""
    gs = _global_scale(clip_mode, clip, grads)
    for k in range(offsets.shape[0] - 1):
        a, b = offsets[k], offsets[k + 1]
        scale, lo, hi = _clipping(clip_mode, clip, gs, grads[a:b])
        if b - a >= PARALLEL_MIN_SIZE:
            _adam_parallel(params[a:b], grads[a:b], scale, lo, hi, decay, alpha, beta_1, beta_2, epsilon, m[a:b],
                           v[a:b], threads)
        else:
            _adam(params[a:b], grads[a:b], scale, lo, hi, decay, alpha, beta_1, beta_2, epsilon, m[a:b], v[a:b])


@numba.njit(**JIT)
def amsgrad(params, grads, offsets, clip_mode, clip, decay, alpha, beta_1, beta_2, epsilon, m, v, v_hat):
    """adam with AMSGrad's running maximum of v, v_hat, in the denominator."""
    gs = _global_scale(clip_mode, clip, grads)
    for k in range(offsets.shape[0] - 1):
        a, b = offsets[k], offsets[k + 1]
        scale, lo, hi = _clipping(clip_mode, clip, gs, grads[a:b])
        _amsgrad(params[a:b], grads[a:b], scale, lo, hi, decay, alpha, beta_1, beta_2, epsilon, m[a:b], v[a:b],
                 v_hat[a:b])


# --- RMSprop ------------------------------------------------------------------------------------------------


@numba.njit(**JIT)
def _rmsprop(w, grad, scale, lo, hi, decay, lr, rho, momentum, epsilon, centered, velocity, mom, average_grad):
    t = w.dtype.type
    one_minus_rho = t(1.0 - rho)
    scale, lo, hi, decay = t(scale), t(lo), t(hi), t(decay)
    lr, rho, momentum, epsilon = t(lr), t(rho), t(momentum), t(epsilon)
    for i in range(w.shape[0]):
        g = min(max(grad[i] * scale, lo), hi)
        vi = rho * velocity[i] + one_minus_rho * g * g
        velocity[i] = vi
        denominator = vi + epsilon
        if centered:
            ag = rho * average_grad[i] + one_minus_rho * g
            average_grad[i] = ag
            denominator -= ag * ag
        increment = lr * g / math.sqrt(denominator)
        if momentum > 0.0:
            increment += momentum * mom[i]
            mom[i] = increment
        w[i] = w[i] * decay - increment


@numba.njit(**JIT)
def rmsprop(params, grads, offsets, clip_mode, clip, decay, lr, rho, momentum, epsilon, centered,
            velocity, mom, average_grad):
    gs = _global_scale(clip_mode, clip, grads)
    for k in range(offsets.shape[0] - 1):
        a, b = offsets[k], offsets[k + 1]
        scale, lo, hi = _clipping(clip_mode, clip, gs, grads[a:b])
        _rmsprop(params[a:b], grads[a:b], scale, lo, hi, decay, lr, rho, momentum, epsilon, centered,
                 velocity[a:b], mom[a:b] if momentum > 0.0 else mom, average_grad[a:b] if centered else average_grad)


# --- Adagrad ------------------------------------------------------------------------------------------------


@numba.njit(**JIT)
def _adagrad(w, grad, scale, lo, hi, decay, lr, epsilon, accumulator):
    t = w.dtype.type
    scale, lo, hi, decay, lr, epsilon = t(scale), t(lo), t(hi), t(decay), t(lr), t(epsilon)
    for i in range(w.shape[0]):
        g = min(max(grad[i] * scale, lo), hi)
        acc = accumulator[i] + g * g
        accumulator[i] = acc
        w[i] = w[i] * decay - lr * g / math.sqrt(acc + epsilon)


@numba.njit(**JIT)
def adagrad(params, grads, offsets, clip_mode, clip, decay, lr, epsilon, accumulator):
    gs = _global_scale(clip_mode, clip, grads)
    for k in range(offsets.shape[0] - 1):
        a, b = offsets[k], offsets[k + 1]
        scale, lo, hi = _clipping(clip_mode, clip, gs, grads[a:b])
        _adagrad(params[a:b], grads[a:b], scale, lo, hi, decay, lr, epsilon, accumulator[a:b])


# --- Adadelta -----------------------------------------------------------------------------------------------


@numba.njit(**JIT)
def _adadelta(w, grad, scale, lo, hi, decay, lr, rho, epsilon, accumulated_grad, accumulated_delta_var):
    t = w.dtype.type
    one_minus_rho = t(1.0 - rho)
    scale, lo, hi, decay, lr, rho, epsilon = t(scale), t(lo), t(hi), t(decay), t(lr), t(rho), t(epsilon)
    for i in range(w.shape[0]):
        g = min(max(grad[i] * scale, lo), hi)
        ag = rho * accumulated_grad[i] + one_minus_rho * g * g
        accumulated_grad[i] = ag
        delta = -math.sqrt(accumulated_delta_var[i] + epsilon) * g / math.sqrt(ag + epsilon)
        accumulated_delta_var[i] = rho * accumulated_delta_var[i] + one_minus_rho * delta * delta
        w[i] = w[i] * decay + lr * delta


@numba.njit(**JIT)
def adadelta(params, grads, offsets, clip_mode, clip, decay, lr, rho, epsilon, accumulated_grad,
             accumulated_delta_var):
    gs = _global_scale(clip_mode, clip, grads)
    for k in range(offsets.shape[0] - 1):
        a, b = offsets[k], offsets[k + 1]
        scale, lo, hi = _clipping(clip_mode, clip, gs, grads[a:b])
        _adadelta(params[a:b], grads[a:b], scale, lo, hi, decay, lr, rho, epsilon, accumulated_grad[a:b],
                  accumulated_delta_var[a:b])


# --- Nadam --------------------------------------------------------------------------------------------------


@numba.njit(**JIT)
def _nadam(w, grad, scale, lo, hi, decay, lr, beta_1, beta_2, epsilon, c_m, c_g, c_v, m, v):
    t = w.dtype.type
    one_minus_beta_1 = t(1.0 - beta_1)
    one_minus_beta_2 = t(1.0 - beta_2)
    scale, lo, hi, decay, lr = t(scale), t(lo), t(hi), t(decay), t(lr)
    beta_1, beta_2, epsilon, c_m, c_g, c_v = t(beta_1), t(beta_2), t(epsilon), t(c_m), t(c_g), t(c_v)
    for i in range(w.shape[0]):
        g = min(max(grad[i] * scale, lo), hi)
        mi = beta_1 * m[i] + one_minus_beta_1 * g
        vi = beta_2 * v[i] + one_minus_beta_2 * g * g
        m[i] = mi
        v[i] = vi
        w[i] = w[i] * decay - lr * (c_m * mi + c_g * g) / (math.sqrt(c_v * vi) + epsilon)


@numba.njit(**JIT)
def nadam(params, grads, offsets, clip_mode, clip, decay, lr, beta_1, beta_2, epsilon, c_m, c_g, c_v, m, v):
    """m_hat = c_m * m + c_g * g with c_m = u_{t+1} / (1 - prod u_..t+1), c_g = (1 - u_t) / (1 - prod u_..t);
    v_hat = c_v * v with c_v = 1 / (1 - beta_2^t); w -= lr * m_hat / (sqrt(v_hat) + epsilon)."""
    gs = _global_scale(clip_mode, clip, grads)
    for k in range(offsets.shape[0] - 1):
        a, b = offsets[k], offsets[k + 1]
        scale, lo, hi = _clipping(clip_mode, clip, gs, grads[a:b])
        _nadam(params[a:b], grads[a:b], scale, lo, hi, decay, lr, beta_1, beta_2, epsilon, c_m, c_g, c_v, m[a:b],
               v[a:b])
