"""Dense: y = x @ kernel + bias over rows. np.dot inside njit calls BLAS (through SciPy)."""

from __future__ import annotations

import numba
import numpy as np

from . import JIT


@numba.njit(**JIT)
def forward(x, kernel, bias, use_bias, out):
    """x (rows, in), kernel (in, units), bias (units,) -> out (rows, units)."""
    np.dot(x, kernel, out)
    if use_bias:
        rows, units = out.shape
        for r in range(rows):
            for j in range(units):
                out[r, j] += bias[j]


@numba.njit(**JIT)
def column_sums(a, out):
    """out (cols,) = a (rows, cols) summed over its rows: the bias gradient of Dense and convolutions.
    An explicit loop: `a.sum(axis=0)` inside njit costs far more compile time."""
    rows, cols = a.shape
    for j in range(cols):
        out[j] = 0
    for r in range(rows):
        for j in range(cols):
            out[j] += a[r, j]


@numba.njit(**JIT)
def backward(x, kernel, dz, use_bias, need_dx, dkernel, dbias, dx):
    """dz (rows, units) -> dkernel (in, units) = x.T @ dz, dbias = sum over rows, dx = dz @ kernel.T."""
    np.dot(x.T, dz, dkernel)
    if use_bias:
        column_sums(dz, dbias)
    if need_dx:
        np.dot(dz, kernel.T, dx)
