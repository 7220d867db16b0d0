"""Elementwise kernels over flat arrays: the fused Add + ReLU step (layers/fusion.py's AddAct)."""

from __future__ import annotations

import numba

from . import JIT


@numba.njit(**JIT)
def add_relu(a, b, out):
    """out = max(a + b, 0); all (n,). out may be a."""
    zero = out.dtype.type(0)
    for i in range(out.shape[0]):
        out[i] = max(a[i] + b[i], zero)


@numba.njit(**JIT)
def relu_backward(dy, out, dx):
    """dx = dy where the ReLU's output is positive, else 0; all (n,)."""
    zero = dx.dtype.type(0)
    for i in range(dx.shape[0]):
        dx[i] = dy[i] if out[i] > zero else zero
