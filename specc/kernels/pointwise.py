"""Elementwise kernels of the parameterised activation layers (ReLU with its max_value, negative_slope and
threshold; ELU with its alpha). The fixed-argument activations live in activations.py; these take the
layer's arguments as values, so one compiled loop serves every ReLU of a model (MobileNet's ReLU(6) and
plain ReLU alike).

Arrays are flat and contiguous (the layer reshapes); outputs are preallocated by the caller.
"""

from __future__ import annotations

import math

import numba
import numpy as np

from . import JIT


@numba.njit(**JIT)
def relu_forward(x, negative_slope, max_value, threshold, y):
    """Keras 3's relu: x where x > threshold (else 0), clipped at max_value (max_value < 0: no clip),
    minus negative_slope * max(threshold - x, 0). x, y: (n,)."""
    for i in range(x.size):
        v = np.float64(x[i])
        p = v if v > threshold else 0.0
        if max_value >= 0.0 and p > max_value:
            p = max_value
        y[i] = p - negative_slope * max(threshold - v, 0.0)


@numba.njit(**JIT)
def relu_backward(x, negative_slope, max_value, threshold, dy, dx):
    """dx = dy * (1 on threshold < x < max_value, negative_slope below threshold, else 0); the slope at
    max_value itself is 1, as the clip's in the reference backends."""
    for i in range(x.size):
        v = np.float64(x[i])
        d = 0.0
        if v > threshold and (max_value < 0.0 or v <= max_value):
            d = 1.0
        elif v < threshold:
            d = negative_slope
        dx[i] = np.float64(dy[i]) * d


@numba.njit(**JIT)
def elu_forward(x, alpha, y):
    """x for x > 0, alpha * (exp(x) - 1) otherwise. x, y: (n,)."""
    for i in range(x.size):
        v = np.float64(x[i])
        y[i] = v if v > 0.0 else alpha * math.expm1(v)


@numba.njit(**JIT)
def elu_backward(x, alpha, dy, dx):
    for i in range(x.size):
        v = np.float64(x[i])
        dx[i] = np.float64(dy[i]) * (1.0 if v > 0.0 else alpha * math.exp(v))
