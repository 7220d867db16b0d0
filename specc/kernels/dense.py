"""Dense: y = x @ kernel + bias over rows, and its gradients. The products go through gemm.matmul_blas
(NumPy's OpenBLAS; see there). The register-blocked Numba kernels in `gemm` are not used: BLAS was faster
for every Dense product at the benchmark sizes on 1 and 2 threads, on an AVX2 Zen 3 and on an AVX-512
Xeon, once their transposes are counted (bench/gemm.py). Every function here is njit and allocates
nothing, so a fused kernel can call them."""

from __future__ import annotations

import numba

from . import JIT
from .gemm import matmul_blas


@numba.njit(**JIT)
def add_bias(out, bias):
    """out (rows, units) += bias (units,) on every row."""
    rows, units = out.shape
    for r in range(rows):
        for j in range(units):
            out[r, j] += bias[j]


@numba.njit(**JIT)
def forward(x, kernel, bias, use_bias, out):
    """x (rows, in), kernel (in, units), bias (units,) -> out (rows, units)."""
    matmul_blas(x, kernel, out)
    if use_bias:
        add_bias(out, bias)


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
    matmul_blas(x.T, dz, dkernel)
    if use_bias:
        column_sums(dz, dbias)
    if need_dx:
        matmul_blas(dz, kernel.T, dx)
