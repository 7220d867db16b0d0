"""Dense: y = x @ kernel + bias over rows, and its gradients. In float32 on an AVX-512 or AVX2 CPU all three
products run on sgemm: the forward with the bias (and a ReLU, for callers that fuse it) added in the
product's epilogue, the kernel gradient reading x.T in place, the input gradient packing kernel.T strip by
strip; other dtypes go to BLAS (gemm.affine decides). Every function here is njit and allocates nothing,
so a fused kernel can call them."""

from __future__ import annotations

import numba

from . import JIT
from .gemm import affine, matmul


@numba.njit(**JIT)
def forward(x, kernel, bias, use_bias, out):
    """x (rows, in), kernel (in, units), bias (units,) -> out (rows, units)."""
    affine(x, kernel, bias, use_bias, False, out)


@numba.njit(**JIT)
def forward_relu(x, kernel, bias, use_bias, out):
    """max(forward, 0) in one pass over out."""
    affine(x, kernel, bias, use_bias, True, out)


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
    """dz (rows, units) -> dkernel (in, units) = x.T @ dz, dbias = sum over rows, dx = dz @ kernel.T.
    `kernel` is read only when need_dx (callers without an input gradient may pass any array)."""
    matmul(x.T, dz, dkernel)
    if use_bias:
        column_sums(dz, dbias)
    if need_dx:
        matmul(dz, kernel.T, dx)
