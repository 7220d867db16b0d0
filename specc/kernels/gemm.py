"""Matrix products: `affine` / `matmul` / `matmul_serial` / `matmul_blas`, what Dense, the convolutions
and the recurrent kernels call from compiled code.

Portable (below): plain Numba around np.dot (SciPy's BLAS), any layout (operands neither BLAS axis can
read are copied), then a pass for the bias and ReLU. With the native package (native/products.py) each
call is instead a few instructions that pass the arrays' addresses and strides to one C callable per
dtype, which sends float32 products to sgemm's micro-kernels (AVX-512 or AVX2) where their layouts allow and the
rest to NumPy's or SciPy's OpenBLAS, reading transposed operands in place. From Python (eager mode runs
these) they are NumPy.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import types
from numba.extending import overload

from . import JIT, native


def matmul_blas(a, b, out):
    """out (m, n) = a (m, k) @ b (k, n) by BLAS; a and b may be transposed views.

    Compiled (the overload below): NumPy's OpenBLAS, for every product sgemm does not take (float64, and
    float32 layouts it cannot read or CPUs with neither AVX-512 nor AVX2+FMA), unless SciPy's is allowed more threads than
    NumPy's; then SciPy's (the Fortran ?gemm that np.dot inside Numba calls). One BLAS for everything,
    because two thread pools get in each other's way: after a multi-threaded product OpenBLAS's workers
    spin for a while, holding cores that the other library's workers (or the convolutions' own threads)
    then need. NumPy's is also the newer build.
    How long the workers spin is OPENBLAS_THREAD_TIMEOUT, which OpenBLAS reads once, when it loads;
    specc.runtime.prepare_process sets it, which is too late when NumPy was imported before:
    kernels.configure_threads then keeps NumPy's OpenBLAS at one thread and SciPy's (loaded after the
    setting) at n, and the comparison sends multi-threaded products there.
    Operands that BLAS cannot read in place (neither axis contiguous) are multiplied by plain loops.
    From Python (eager mode runs this) it is np.dot."""
    np.dot(a, b, out)


def affine(a, b, bias, use_bias, relu, out, threaded=True):
    """out (m, n) = a (m, k) @ b (k, n) (+ bias (n,) if use_bias), then max(out, 0) if relu; a and b may be
    transposed views.

    Compiled (the overload below): float32 products whose layouts sgemm takes (b and out contiguous
    along n; a any) run there in one pass: the epilogue adds the bias and clips while the tile is in
    registers. With `threaded`, on the threads sgemm.set_threads allows; without, on the calling thread
    (the convolutions call it from their own threads). Everything else: matmul_blas, then a pass over out.
    From Python (eager mode runs this) it is NumPy."""
    np.dot(a, b, out)
    if use_bias:
        out += bias
    if relu:
        np.maximum(out, 0, out=out)


def matmul(a, b, out):
    """out (m, n) = a (m, k) @ b (k, n): affine without bias or ReLU, threaded."""
    np.dot(a, b, out)


def matmul_serial(a, b, out):
    """matmul on the calling thread only."""
    np.dot(a, b, out)




def _check_operands(a, b, out, bias=None):
    """Typing: 2-D operands (and a 1-D bias) of one float dtype."""
    arrays = (a, b, out) if bias is None else (a, b, out, bias)
    if not all(isinstance(x, types.Array) for x in arrays):
        raise numba.errors.TypingError("matrix products take arrays")
    if a.ndim != 2 or b.ndim != 2 or out.ndim != 2 or (bias is not None and bias.ndim != 1):
        raise numba.errors.TypingError("matrix products take 2-D operands (and a 1-D bias)")
    if any(x.dtype != a.dtype for x in arrays) or a.dtype not in (types.float32, types.float64):
        raise numba.errors.TypingError(
            f"matrix products take float32 or float64 arrays of one dtype, not {[x.dtype for x in arrays]}")


def _readable(x):
    """x itself when BLAS reads it in place (C or F contiguous), else a contiguous copy. Compiled only."""


@overload(_readable, jit_options=JIT)
def _readable_njit(x):
    if x.layout in "CF":
        return lambda x: x
    return lambda x: np.ascontiguousarray(x)


def _dot_into(a, b, out):
    """out = a @ b by np.dot, into out when it is C-contiguous, else through a temporary. Compiled only."""


@overload(_dot_into, jit_options=JIT)
def _dot_into_njit(a, b, out):
    if out.layout == "C":
        return lambda a, b, out: np.dot(a, b, out)

    def through_temporary(a, b, out):
        out[...] = np.dot(a, b)

    return through_temporary


@numba.njit(**JIT)
def _product(a, b, out):
    m, k = a.shape
    n = b.shape[1]
    if b.shape[0] != k or out.shape[0] != m or out.shape[1] != n:
        raise ValueError("matrix product: the operands' shapes do not match")
    if m == 0 or n == 0:
        return
    if k == 0:  # an empty sum: BLAS implementations differ on what they accept here
        out[...] = 0
        return
    _dot_into(_readable(a), _readable(b), out)


@numba.njit(**JIT)
def _affine(a, b, bias, use_bias, relu, out):
    if use_bias and bias.shape[0] != b.shape[1]:
        raise ValueError("matrix product: the operands' shapes do not match")
    _product(a, b, out)
    if use_bias or relu:
        zero = out.dtype.type(0)
        for i in range(out.shape[0]):
            for j in range(out.shape[1]):
                v = out[i, j]
                if use_bias:
                    v += bias[j]
                out[i, j] = max(v, zero) if relu else v


def _install_portable() -> None:
    @overload(affine, jit_options=JIT)
    def _affine_njit(a, b, bias, use_bias, relu, out, threaded=True):
        _check_operands(a, b, out, bias)
        return lambda a, b, bias, use_bias, relu, out, threaded=True: _affine(a, b, bias, use_bias, relu, out)

    for function in (matmul, matmul_serial, matmul_blas):
        @overload(function, jit_options=JIT)
        def _matmul_njit(a, b, out):
            _check_operands(a, b, out)
            return lambda a, b, out: _product(a, b, out)


# (The native package imports this module only after products has loaded: kernels/native/__init__.py.)
if native.products is not None:
    native.products.install(affine, matmul, matmul_serial, matmul_blas)
else:
    _install_portable()
