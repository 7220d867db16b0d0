"""Matrix products: `affine` / `matmul` / `matmul_serial` (what Dense, the convolutions and the recurrent
kernels call), which send float32 products to sgemm's AVX-512 micro-kernels where their layouts allow,
and everything else to BLAS through `matmul_blas`.

The register-blocked Numba kernels that used to live here (dot-product form over a transposed operand)
were removed once sgemm existed: Numba could not keep a tile of the output in vector registers, so they
reached ~100 GFLOP/s per core against OpenBLAS's 150-165; sgemm writes that loop in LLVM IR instead.
"""

from __future__ import annotations

import ctypes
import glob
import importlib.util
import os

import llvmlite.binding
import numba
import numpy as np
from numba import types
from numba.extending import overload

from . import JIT, sgemm


# NumPy's wheels bundle their own OpenBLAS (libscipy_openblas64_, 0.3.31 here), which bench/gemm.py measured
# 5-12% faster than the one in SciPy's wheels (0.3.30) that np.dot inside Numba reaches through
# scipy.linalg.cython_blas at the Dense sizes on a Zen 3 (within 10% either way on an AVX-512 Xeon).
# Its CBLAS ?gemm is registered with LLVM under a name of our own, so compiled kernels call it by symbol
# name and stay cacheable (the address is resolved when the cached code is loaded, after this module has
# registered it). 64-bit integer interface. SciPy's thread count is registered too: matmul_blas compares
# the two (see there).
def _openblas(package: str, pattern: str):
    """ctypes handle of the OpenBLAS a wheel bundles in <site-packages>/<package>.libs, or None."""
    spec = importlib.util.find_spec(package)
    for directory in (spec.submodule_search_locations or []) if spec else []:
        for path in glob.glob(os.path.join(directory, "..", package + ".libs", pattern)):
            try:
                return ctypes.CDLL(path)  # loaded already (NumPy) or now: the same handle threadpoolctl limits
            except OSError:
                pass
    return None


def _register(lib, symbols, stand_ins) -> bool:
    """Registers lib's functions under our names, or the stand-ins if lib lacks any of them."""
    try:
        addresses = [ctypes.cast(getattr(lib, theirs), ctypes.c_void_p).value for _, theirs in symbols]
        found = lib is not None
    except AttributeError:
        found = False
    if not found:
        addresses = [ctypes.cast(fn, ctypes.c_void_p).value for fn in stand_ins]
    for (ours, _), address in zip(symbols, addresses):
        llvmlite.binding.add_symbol(ours, address)
    return found


# Stand-ins for a NumPy or SciPy built without its own OpenBLAS (MKL, Accelerate, system BLAS), so machine
# code cached while they had it still links: a NumPy thread count of 0 sends every call to np.dot, so the
# gemm stand-ins are never reached; a SciPy thread count of 0 never wins the comparison in matmul_blas.
_NO_GEMM = ctypes.CFUNCTYPE(None)(lambda: None)
_NO_THREADS = ctypes.CFUNCTYPE(ctypes.c_int32)(lambda: 0)

_NUMPY_OPENBLAS = _openblas("numpy", "libscipy_openblas64_*.so")
HAVE_NUMPY_BLAS = _register(
    _NUMPY_OPENBLAS,
    (("specc_numpy_sgemm", "scipy_cblas_sgemm64_"), ("specc_numpy_dgemm", "scipy_cblas_dgemm64_"),
     ("specc_numpy_blas_threads", "scipy_openblas_get_num_threads64_")),
    (_NO_GEMM, _NO_GEMM, _NO_THREADS))
_SCIPY_OPENBLAS = _openblas("scipy", "libscipy_openblas-*.so")
HAVE_SCIPY_BLAS = _register(_SCIPY_OPENBLAS, (("specc_scipy_blas_threads", "scipy_openblas_get_num_threads"),),
                            (_NO_THREADS,))
_ROW_MAJOR, _NO_TRANS, _TRANS = 101, 111, 112


def set_numpy_blas_threads(n: int) -> None:
    """Caps the threads of NumPy's own OpenBLAS only (threadpoolctl would cap every BLAS)."""
    if HAVE_NUMPY_BLAS:
        _NUMPY_OPENBLAS.scipy_openblas_set_num_threads64_(ctypes.c_int(n))


class OneOpenblasThread:
    """A context in which NumPy's and SciPy's bundled OpenBLAS run on one thread, restored on exit: four
    calls into them (~1 us), where threadpoolctl's limit took ~25 us to enter and leave (it inspects every
    loaded library each time), twice per training step of a convolutional model. Only where both are
    found (conv.one_blas_thread falls back to threadpoolctl)."""

    def __enter__(self):
        self._before = (_NUMPY_OPENBLAS.scipy_openblas_get_num_threads64_(),
                        _SCIPY_OPENBLAS.scipy_openblas_get_num_threads())
        _NUMPY_OPENBLAS.scipy_openblas_set_num_threads64_(ctypes.c_int(1))
        _SCIPY_OPENBLAS.scipy_openblas_set_num_threads(ctypes.c_int(1))
        return self

    def __exit__(self, *exc):
        _NUMPY_OPENBLAS.scipy_openblas_set_num_threads64_(ctypes.c_int(self._before[0]))
        _SCIPY_OPENBLAS.scipy_openblas_set_num_threads(ctypes.c_int(self._before[1]))


def _cblas_signature(real):
    # cblas_?gemm(order, trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)
    i32, i64, ptr = types.int32, types.int64, types.voidptr
    return types.void(i32, i32, i32, i64, i64, i64, real, ptr, i64, ptr, i64, real, ptr, i64)


_numpy_sgemm = types.ExternalFunction("specc_numpy_sgemm", _cblas_signature(types.float32))
_numpy_dgemm = types.ExternalFunction("specc_numpy_dgemm", _cblas_signature(types.float64))
_numpy_blas_threads = types.ExternalFunction("specc_numpy_blas_threads", types.int32())
_scipy_blas_threads = types.ExternalFunction("specc_scipy_blas_threads", types.int32())


def matmul_blas(a, b, out):
    """out (m, n) = a (m, k) @ b (k, n) by BLAS; a and b may be transposed views.

    Compiled (the overload below): NumPy's OpenBLAS, for every product sgemm does not take (float64, and
    float32 layouts it cannot read or CPUs without AVX-512), unless SciPy's is allowed more threads than
    NumPy's; then SciPy's (np.dot inside Numba). One BLAS for everything, because two thread pools get in
    each other's way: after a multi-threaded product OpenBLAS's workers spin for a while, holding cores that
    the other library's workers (or the convolutions' own threads) then need; timed next to NumPy's, the
    1024x784 @ 784x256 product ran at 154 GFLOP/s on 2 threads through SciPy's, against 310 alone. NumPy's
    is also the newer build (bench/gemm.py: 5-12% faster on a Zen 3, within 10% either way on the Xeon).
    How long the workers spin is OPENBLAS_THREAD_TIMEOUT, which OpenBLAS reads once, when it loads; specc/__init__.py sets it,
    which is too late when NumPy was imported before specc: kernels.configure_threads then keeps NumPy's
    OpenBLAS at one thread and SciPy's (loaded after the setting) at n, and the comparison sends
    multi-threaded products there.
    From Python (eager mode runs this) it is np.dot, as before."""
    np.dot(a, b, out)


@numba.njit(**JIT)
def _blas_operand(x):
    """How CBLAS (row-major) can read a 2-D operand in place: (transposed?, leading dimension), or
    (False, -1) when neither axis is contiguous (then the caller falls back to np.dot, which copies)."""
    rows, cols = x.shape
    row_step = x.strides[0] // x.itemsize
    col_step = x.strides[1] // x.itemsize
    if (col_step == 1 or cols == 1) and (row_step >= cols or rows == 1):
        return False, row_step if rows > 1 else max(cols, 1)
    if (row_step == 1 or rows == 1) and (col_step >= rows or cols == 1):
        return True, col_step if cols > 1 else max(rows, 1)
    return False, -1


@numba.njit(**JIT)
def _assign(out, value):
    out[:, :] = value


@overload(matmul_blas, jit_options=JIT)
def _matmul_blas_njit(a, b, out):
    if out.layout != "C":  # Numba's np.dot(a, b, out) needs a C-contiguous out: a temporary (no caller of ours)
        return lambda a, b, out: _assign(out, np.dot(a, b))
    if not HAVE_NUMPY_BLAS or a.dtype != b.dtype or a.dtype != out.dtype or a.dtype not in (types.float32, types.float64):
        return lambda a, b, out: np.dot(a, b, out)
    gemm = _numpy_sgemm if a.dtype == types.float32 else _numpy_dgemm

    def impl(a, b, out):
        m, k = a.shape
        n = b.shape[1]
        trans_a, lda = _blas_operand(a)
        trans_b, ldb = _blas_operand(b)
        trans_c, ldc = _blas_operand(out)
        threads = _numpy_blas_threads()
        if (threads < 1 or threads < _scipy_blas_threads() or lda < 0 or ldb < 0 or ldc < 0 or trans_c
                or m == 0 or n == 0 or k == 0):
            np.dot(a, b, out)
            return
        gemm(_ROW_MAJOR, _TRANS if trans_a else _NO_TRANS, _TRANS if trans_b else _NO_TRANS, m, n, k,
             out.dtype.type(1), a.ctypes.data, lda, b.ctypes.data, ldb, out.dtype.type(0), out.ctypes.data, ldc)

    return impl



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
        np.maximum(out, 0, out)


def matmul(a, b, out):
    """out (m, n) = a (m, k) @ b (k, n): affine without bias or ReLU, threaded."""
    np.dot(a, b, out)


def matmul_serial(a, b, out):
    """matmul on the calling thread only."""
    np.dot(a, b, out)


@numba.njit(**JIT)
def _bias_relu(out, bias, use_bias, relu):
    """out (rows, units) += bias (units,) on every row if use_bias, then max(out, 0) if relu."""
    rows, units = out.shape
    zero = out.dtype.type(0)
    for r in range(rows):
        for j in range(units):
            v = out[r, j] + bias[j] if use_bias else out[r, j]
            out[r, j] = max(v, zero) if relu else v


@overload(affine, jit_options=JIT)
def _affine_njit(a, b, bias, use_bias, relu, out, threaded=True):
    if not all(x.dtype == types.float32 for x in (a, b, bias, out)):
        def generic(a, b, bias, use_bias, relu, out, threaded=True):
            matmul_blas(a, b, out)
            if use_bias or relu:
                _bias_relu(out, bias, use_bias, relu)

        return generic

    def impl(a, b, bias, use_bias, relu, out, threaded=True):
        if not sgemm.run(a, b, out, False, bias, use_bias, relu, 0, a.shape[0], threaded):
            matmul_blas(a, b, out)
            if use_bias or relu:
                _bias_relu(out, bias, use_bias, relu)

    return impl


@overload(matmul, jit_options=JIT)
def _matmul_njit(a, b, out):
    return lambda a, b, out: affine(a, b, out[0], False, False, out)  # out[0]: a bias that is not read


@overload(matmul_serial, jit_options=JIT)
def _matmul_serial_njit(a, b, out):
    return lambda a, b, out: affine(a, b, out[0], False, False, out, False)
