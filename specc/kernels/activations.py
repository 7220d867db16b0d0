"""Elementwise activations and softmax, forward and backward, selected by an integer code.

One kernel per direction (not one per activation) keeps the number of compiled functions, and so the
cold-start compile time, small. Arrays are viewed 2-D (rows, last axis) because softmax needs the last
axis; the elementwise activations ignore the split.
"""

from __future__ import annotations

import math

import numba
import numpy as np

from . import JIT

NAMES = ("linear", "relu", "relu6", "leaky_relu", "elu", "selu", "gelu", "sigmoid", "hard_sigmoid", "tanh",
         "softmax", "log_softmax", "softplus", "softsign", "silu", "exponential")
CODE = {name: i for i, name in enumerate(NAMES)}
LINEAR, SOFTMAX, LOG_SOFTMAX = CODE["linear"], CODE["softmax"], CODE["log_softmax"]
RELU, SIGMOID, TANH = CODE["relu"], CODE["sigmoid"], CODE["tanh"]

SELU_ALPHA = 1.6732632423543772
SELU_SCALE = 1.0507009873554805
LEAKY_SLOPE = 0.2  # Keras 3's leaky_relu default negative_slope
INV_SQRT_2 = 0.7071067811865476
INV_SQRT_2PI = 0.3989422804014327


@numba.njit(**JIT)
def _sigmoid(x):
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    e = math.exp(x)
    return e / (1.0 + e)


@numba.njit(**JIT)
def _scalar_forward(code, x):
    if code == 1:
        return max(x, 0.0)
    if code == 2:
        return min(max(x, 0.0), 6.0)
    if code == 3:
        return x if x > 0 else LEAKY_SLOPE * x
    if code == 4:
        return x if x > 0 else math.expm1(x)
    if code == 5:
        return SELU_SCALE * (x if x > 0 else SELU_ALPHA * math.expm1(x))
    if code == 6:  # Keras 3's default gelu is exact (approximate=False)
        return 0.5 * x * (1.0 + math.erf(x * INV_SQRT_2))
    if code == 7:
        return _sigmoid(x)
    if code == 8:  # Keras 3: relu6(x + 3) / 6
        return min(max(x / 6.0 + 0.5, 0.0), 1.0)
    if code == 9:
        return math.tanh(x)
    if code == 12:
        return max(x, 0.0) + math.log1p(math.exp(-abs(x)))
    if code == 13:
        return x / (1.0 + abs(x))
    if code == 14:
        return x * _sigmoid(x)
    if code == 15:
        return math.exp(x)
    return x


@numba.njit(**JIT)
def _scalar_derivative(code, x, y):
    """d activation / dx at pre-activation x with output y."""
    if code == 1:
        return 1.0 if x > 0 else 0.0
    if code == 2:
        return 1.0 if 0 < x < 6 else 0.0
    if code == 3:
        return 1.0 if x > 0 else LEAKY_SLOPE
    if code == 4:
        return 1.0 if x > 0 else y + 1.0
    if code == 5:
        return SELU_SCALE if x > 0 else y + SELU_SCALE * SELU_ALPHA
    if code == 6:
        return 0.5 * (1.0 + math.erf(x * INV_SQRT_2)) + x * math.exp(-0.5 * x * x) * INV_SQRT_2PI
    if code == 7:
        return y * (1.0 - y)
    if code == 8:
        return 1.0 / 6.0 if -3.0 < x < 3.0 else 0.0
    if code == 9:
        return 1.0 - y * y
    if code == 12:
        return _sigmoid(x)
    if code == 13:
        d = 1.0 + abs(x)
        return 1.0 / (d * d)
    if code == 14:
        s = _sigmoid(x)
        return s * (1.0 + x * (1.0 - s))
    if code == 15:
        return y
    return 1.0


@numba.njit(**JIT)
def softmax(log, z, y):
    """y = softmax(z) (log_softmax with `log`) over each row; z, y: (rows, features). A kernel of its own
    too, so a model whose only activation outside its layers' products is a softmax (a classifier's last
    Dense) compiles this instead of every activation in `forward` (~0.5 s of a cold start)."""
    rows, n = z.shape
    for r in range(rows):
        m = z[r, 0]
        for j in range(1, n):
            m = max(m, z[r, j])
        s = z.dtype.type(0)
        for j in range(n):
            s += math.exp(z[r, j] - m)
        if not log:
            inv = 1.0 / s
            for j in range(n):
                y[r, j] = math.exp(z[r, j] - m) * inv
        else:
            lse = m + math.log(s)
            for j in range(n):
                y[r, j] = z[r, j] - lse


@numba.njit(**JIT)
def forward(code, z, y):
    """y = act(z); z, y: (rows, features)."""
    rows, n = z.shape
    if code == SOFTMAX or code == LOG_SOFTMAX:
        softmax(code == LOG_SOFTMAX, z, y)
        return
    # The common activations get their own loops: choosing the function per element (the generic loop
    # below) keeps LLVM from vectorising, which made ReLU ~7x slower than NumPy on a CNN-sized tensor.
    zero = z.dtype.type(0)
    one = z.dtype.type(1)
    if code == RELU:
        for r in range(rows):
            for j in range(n):
                y[r, j] = max(z[r, j], zero)
    elif code == SIGMOID:
        for r in range(rows):
            for j in range(n):
                y[r, j] = one / (one + math.exp(-z[r, j]))
    elif code == TANH:
        for r in range(rows):
            for j in range(n):
                y[r, j] = math.tanh(z[r, j])
    else:
        for r in range(rows):
            for j in range(n):
                y[r, j] = _scalar_forward(code, z[r, j])


@numba.njit(**JIT)
def backward(code, z, y, dy, dz):
    """dz = dy * act'(z); z, y, dy, dz: (rows, features). dz may alias dy."""
    rows, n = z.shape
    if code == SOFTMAX:
        for r in range(rows):
            dot = z.dtype.type(0)
            for j in range(n):
                dot += dy[r, j] * y[r, j]
            for j in range(n):
                dz[r, j] = y[r, j] * (dy[r, j] - dot)
        return
    if code == LOG_SOFTMAX:
        for r in range(rows):
            total = z.dtype.type(0)
            for j in range(n):
                total += dy[r, j]
            for j in range(n):
                dz[r, j] = dy[r, j] - math.exp(y[r, j]) * total
        return
    if dy.ctypes.data != dz.ctypes.data:
        for r in range(rows):
            for j in range(n):
                dz[r, j] = dy[r, j]
    scale_by_derivative(code, z, y, dz)


@numba.njit(**JIT)
def scale_by_derivative(code, z, y, dz):
    """dz *= act'(z) in place, for the elementwise activations. In place on purpose: a loop that reads dy
    and writes dz, when they are the same array, fails LLVM's run-time overlap check and runs scalar (the
    ReLU's branch then mispredicts half the time: 128 x 256 values took ~90 us instead of ~6)."""
    rows, n = z.shape
    zero = z.dtype.type(0)
    one = z.dtype.type(1)
    if code == RELU:
        for r in range(rows):
            for j in range(n):
                dz[r, j] = dz[r, j] if z[r, j] > zero else zero
    elif code == SIGMOID:
        for r in range(rows):
            for j in range(n):
                dz[r, j] = dz[r, j] * y[r, j] * (one - y[r, j])
    elif code == TANH:
        for r in range(rows):
            for j in range(n):
                dz[r, j] = dz[r, j] * (one - y[r, j] * y[r, j])
    else:
        for r in range(rows):
            for j in range(n):
                dz[r, j] = dz[r, j] * _scalar_derivative(code, z[r, j], y[r, j])


def as_rows(a: np.ndarray) -> np.ndarray:
    """(..., features) -> (rows, features) view."""
    return a.reshape(-1, a.shape[-1]) if a.ndim != 2 else a
