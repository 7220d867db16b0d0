"""Matrix products: BLAS dispatch (`matmul_blas`, used by Dense, the convolutions and the recurrent
layers), and register-blocked Numba kernels for
out = a @ b.T (`matmul_nt`, `matmul_nt_parallel`) with a transpose, kept as a measured alternative.

`matmul_nt` computes out (m, n) = a (m, k) @ b (n, k).T with both operands contiguous along k, so each
output is a dot product and LLVM vectorises the k loop (fastmath lets it reassociate the sums). On AVX2
(16 ymm registers) a 6x2 block is the largest that stays in registers: 12 accumulators + 2 rows of b +
1 row of a; 4x4 (the AVX-512 choice) spills. Every output then needs a horizontal sum, so the kernel
loses to BLAS's broadcast ("outer product") micro-kernel, most at small k; and a transpose costs about a
quarter of a 128-row product. Numba cannot express the broadcast form: its C tile would have to live in
vector registers, which LLVM builds neither from scalar accumulators (SLP does not vectorise them) nor from
a tile kept in memory (too many runtime alias checks to vectorise). bench/gemm.py has the numbers: BLAS
won every Dense product of the benchmark MLP on 1 and 2 threads, on an AVX2 Zen 3 and on an AVX-512 Xeon
(there a 4x4 block with 512-bit vectors reached ~100 GFLOP/s per core against OpenBLAS's 135-165), so
Dense uses `matmul_blas` only.
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

MR = 6  # rows of a per register block
NR = 2  # rows of b per register block
NC = 64  # rows of b per panel: a 64 x k panel of b stays in L2 (784 x 64 x 4 B = 200 KB) while all rows of
# a stream past it; without panels b (256 x 784 x 4 B = 800 KB) falls out of L2 for every row block


@numba.njit(**JIT)
def _block_6x2(a, b, out, i, j):
    """out[i:i+6, j:j+2] = a[i:i+6] @ b[j:j+2].T."""
    z = out.dtype.type(0)
    s00 = z; s01 = z; s10 = z; s11 = z; s20 = z; s21 = z  # noqa: E702
    s30 = z; s31 = z; s40 = z; s41 = z; s50 = z; s51 = z  # noqa: E702
    for p in range(a.shape[1]):
        y0 = b[j, p]
        y1 = b[j + 1, p]
        x = a[i, p]
        s00 += x * y0; s01 += x * y1  # noqa: E702
        x = a[i + 1, p]
        s10 += x * y0; s11 += x * y1  # noqa: E702
        x = a[i + 2, p]
        s20 += x * y0; s21 += x * y1  # noqa: E702
        x = a[i + 3, p]
        s30 += x * y0; s31 += x * y1  # noqa: E702
        x = a[i + 4, p]
        s40 += x * y0; s41 += x * y1  # noqa: E702
        x = a[i + 5, p]
        s50 += x * y0; s51 += x * y1  # noqa: E702
    out[i, j] = s00; out[i, j + 1] = s01  # noqa: E702
    out[i + 1, j] = s10; out[i + 1, j + 1] = s11  # noqa: E702
    out[i + 2, j] = s20; out[i + 2, j + 1] = s21  # noqa: E702
    out[i + 3, j] = s30; out[i + 3, j + 1] = s31  # noqa: E702
    out[i + 4, j] = s40; out[i + 4, j + 1] = s41  # noqa: E702
    out[i + 5, j] = s50; out[i + 5, j + 1] = s51  # noqa: E702


@numba.njit(**JIT)
def _block_1x2(a, b, out, i, j):
    """out[i, j:j+2] = a[i] @ b[j:j+2].T (the rows left over below the 6-row blocks)."""
    z = out.dtype.type(0)
    s0 = z
    s1 = z
    for p in range(a.shape[1]):
        x = a[i, p]
        s0 += x * b[j, p]
        s1 += x * b[j + 1, p]
    out[i, j] = s0
    out[i, j + 1] = s1


@numba.njit(**JIT)
def _block_1x1(a, b, out, i, j):
    """out[i, j] = a[i] @ b[j] (the last column when n is odd)."""
    s = out.dtype.type(0)
    for p in range(a.shape[1]):
        s += a[i, p] * b[j, p]
    out[i, j] = s


@numba.njit(**JIT)
def _tile_nt(a, b, out, i0, i1, j0, j1):
    """out[i0:i1, j0:j1] = a[i0:i1] @ b[j0:j1].T, in panels of NC rows of b; any sizes."""
    j_even = j0 + (j1 - j0) // NR * NR
    i_blocked = i0 + (i1 - i0) // MR * MR
    for p0 in range(j0, j_even, NC):
        p1 = min(p0 + NC, j_even)
        for i in range(i0, i_blocked, MR):
            for j in range(p0, p1, NR):
                _block_6x2(a, b, out, i, j)
        for i in range(i_blocked, i1):
            for j in range(p0, p1, NR):
                _block_1x2(a, b, out, i, j)
    if j_even < j1:
        for i in range(i0, i1):
            _block_1x1(a, b, out, i, j1 - 1)


@numba.njit(**JIT)
def matmul_nt(a, b, out):
    """out (m, n) = a (m, k) @ b (n, k).T on one thread; fastest when a and b are contiguous along k."""
    _tile_nt(a, b, out, 0, a.shape[0], 0, b.shape[0])


@numba.njit(parallel=True, **JIT)
def matmul_nt_parallel(a, b, out):
    """matmul_nt over threads. prange hands each thread a contiguous range of iterations, so no two threads
    write the same outputs: panels of NC rows of b (each stays in its core's L2) when there are at least
    two, else blocks of MR rows of a. (No numba.get_num_threads() here: it compiles to a pointer constant,
    which Numba cannot cache.)"""
    m = a.shape[0]
    n = b.shape[0]
    if n >= 2 * NC:
        panels = (n + NC - 1) // NC
        for t in numba.prange(panels):
            _tile_nt(a, b, out, 0, m, t * NC, min(n, (t + 1) * NC))
    else:
        blocks = max(1, m // MR)
        for t in numba.prange(blocks):
            _tile_nt(a, b, out, t * MR, m if t == blocks - 1 else (t + 1) * MR, 0, n)


@numba.njit(**JIT)
def transpose(a, out):
    """out (n, m) = a (m, n).T in 16 x 16 tiles, so the strided side stays within a few cache lines."""
    m, n = a.shape
    for i0 in range(0, m, 16):
        i1 = min(i0 + 16, m)
        for j0 in range(0, n, 16):
            j1 = min(j0 + 16, n)
            for j in range(j0, j1):
                for i in range(i0, i1):
                    out[j, i] = a[i, j]


@numba.njit(**JIT)
def matmul_scipy_blas(a, b, out):
    """out (m, n) = a (m, k) @ b (k, n) by np.dot inside Numba, which calls SciPy's OpenBLAS (what Dense
    used before; kept for the benchmark)."""
    np.dot(a, b, out)


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
_register(_openblas("scipy", "libscipy_openblas-*.so"),
          (("specc_scipy_blas_threads", "scipy_openblas_get_num_threads"),), (_NO_THREADS,))
_ROW_MAJOR, _NO_TRANS, _TRANS = 101, 111, 112


def set_numpy_blas_threads(n: int) -> None:
    """Caps the threads of NumPy's own OpenBLAS only (threadpoolctl would cap every BLAS)."""
    if HAVE_NUMPY_BLAS:
        _NUMPY_OPENBLAS.scipy_openblas_set_num_threads64_(ctypes.c_int(n))


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

    Compiled (the overload below): NumPy's OpenBLAS, for every product in specc (Dense, the convolutions'
    per-chunk GEMMs, the recurrent kernels), unless SciPy's is allowed more threads than NumPy's; then
    SciPy's (np.dot inside Numba). One library for everything, because two thread pools get in each
    other's way: after a multi-threaded product OpenBLAS's workers spin for a while, holding cores that
    the other library's workers (or the convolutions' own threads) then need; timed next to NumPy's, the
    1024x784 @ 784x256 product ran at 154 GFLOP/s on 2 threads through SciPy's, against 310 alone. NumPy's
    is also the newer build (bench/gemm.py: 5-12% faster on a Zen 3, within 10% either way on the Xeon).
    How long the workers
    spin is OPENBLAS_THREAD_TIMEOUT, which OpenBLAS reads once, when it loads; specc/__init__.py sets it,
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
        if sgemm.supports(a, b, out) and (not use_bias or bias.strides[0] == 4 or bias.shape[0] <= 1):
            if threaded:
                sgemm.matmul(a, b, out, False, bias, use_bias, relu)
            else:
                sgemm.matmul_rows(a, b, out, 0, a.shape[0], False, bias, use_bias, relu)
        else:
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
