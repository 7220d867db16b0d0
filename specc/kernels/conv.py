"""Convolutions, channels_last: im2col + GEMM for Conv1D/Conv2D (and, as their adjoint, Conv2DTranspose);
DepthwiseConv2D has its own direct loops in kernels/depthwise.py.

Every window is described by one geometry tuple `g = (kh, kw, sh, sw, dh, dw, pad_top, pad_left)`: kernel
size, strides, dilation and the padding before each axis (padding after needs no number: reads past the
end are zeros and writes past it are dropped). A 1-D layer runs as 2-D with H = 1 and a 1 x k kernel, so
the same compiled code serves both.

im2col lays the window of output position (n, oh, ow) out as one row of `cols`, taps in (i, j, c) order,
which is exactly the order of a Keras kernel (kh, kw, C, F) reshaped to (kh*kw*C, F). Reading x[n, ih, iw, :]
copies C contiguous values, so the copy is cache friendly in channels_last; the convolution itself is then
one matrix product (gemm.affine: sgemm in float32 on AVX-512 or AVX2, else BLAS).

The batch is cut into chunks of whole samples, shared between threads: each chunk lays out only its own
windows, in a scratch that stays in cache, and runs its own single-threaded GEMM, instead of one im2col of
the whole batch (tens of MB) followed by one multi-threaded GEMM. Sums over the batch (kernel and bias
gradients) go to per-chunk partials added in chunk order, so results are bit-for-bit the same at any
thread count. A pointwise geometry (1 x 1 kernel, stride 1, no padding) takes the same path: its "windows"
are a copy of x, cheap next to the GEMM.

In float32 where the native package loaded its vector tiles (AVX-512, or AVX2 with FMA), the chunk
kernels `_forward_rows` and `_backward_rows` hand the layers those tiles take to native/conv_tiles.py
(`_direct_forward`, `_direct_backward`): a direct convolution of each chunk's zero-padded samples, with no
windows laid out, and for stride 1 the input gradient as the direct convolution of the padded output
gradient by the flipped kernel. The chunking, the per-chunk partial sums and their order are the same.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools

import numba
import numpy as np
from numba import types
from numba.extending import overload

from ..workspace import empty, shared_scratch
from . import JIT, native, thread_count
from .blas import HAVE_NUMPY_BLAS, HAVE_SCIPY_BLAS, OneOpenblasThread
from .gemm import affine, matmul_serial

# Samples per chunk: as many as keep a chunk's windows and outputs ((rows, K) + (rows, F)) within about
# CHUNK_BYTES, so the GEMM reads windows that were just written and the bias pass finds the GEMM's output
# in cache, and whose outputs alone stay within OUT_CHUNK_BYTES, since a layer with few input channels has
# small windows but a wide output; but at least MIN_CHUNKS chunks per batch, so two threads share the work
# evenly. The chunking depends on the shapes only, never on the thread count, so results are the same at
# any thread count. (How the two sizes were chosen: bench/results/HISTORY.md.)
CHUNK_BYTES = 1024 * 1024
OUT_CHUNK_BYTES = 384 * 1024
MIN_CHUNKS = 16
# Below this many channels the windows are laid out tap-major, cols_t (K, rows): each tap's row is then a
# contiguous copy of an input row (for C = 1) instead of C-element pieces; BLAS reads it transposed.
TAP_MAJOR_BELOW_C = 4
# Below this many filters the row-major kernel gradient is computed transposed (_kernel_gradient_row_major).
FEW_FILTERS = 32
@numba.njit(**JIT)
def _valid_outputs(wo, stride, offset, w):
    """The range [lo, hi) of output positions ow whose input position ow*stride + offset is in [0, w)."""
    lo = max(0, -(offset // stride))
    hi = min(wo, -((offset - w) // stride))
    return lo, max(lo, hi)


@numba.njit(**JIT)
def _im2col(x, n0, n1, g, ho, wo, cols):
    """Samples n0:n1 of x (N, H, W, C) -> cols (rows, kh*kw*C), row (n - n0)*Ho*Wo + oh*Wo + ow; taps
    that fall in the padding read 0."""
    kh, kw, sh, sw, dh, dw, ph, pw = g
    _, h_, w_, c_ = x.shape
    zero = x.dtype.type(0)
    r = 0
    for n in range(n0, n1):
        for oh in range(ho):
            for ow in range(wo):
                for i in range(kh):
                    ih = oh * sh - ph + i * dh
                    for j in range(kw):
                        iw = ow * sw - pw + j * dw
                        base = (i * kw + j) * c_
                        if 0 <= ih < h_ and 0 <= iw < w_:
                            for c in range(c_):
                                cols[r, base + c] = x[n, ih, iw, c]
                        else:
                            for c in range(c_):
                                cols[r, base + c] = zero
                r += 1


@numba.njit(**JIT)
def _col2im(cols, n0, n1, g, ho, wo, x):
    """The adjoint of _im2col: cols (rows, kh*kw*C) summed into samples n0:n1 of x (N, H, W, C), which
    are zeroed first; padding dropped."""
    kh, kw, sh, sw, dh, dw, ph, pw = g
    _, h_, w_, c_ = x.shape
    x[n0:n1] = 0
    r = 0
    for n in range(n0, n1):
        for oh in range(ho):
            for ow in range(wo):
                for i in range(kh):
                    ih = oh * sh - ph + i * dh
                    if ih < 0 or ih >= h_:
                        continue
                    for j in range(kw):
                        iw = ow * sw - pw + j * dw
                        if iw < 0 or iw >= w_:
                            continue
                        base = (i * kw + j) * c_
                        for c in range(c_):
                            x[n, ih, iw, c] += cols[r, base + c]
                r += 1


@numba.njit(**JIT)
def _im2col_t(x, n0, n1, g, ho, wo, cols_t):
    """_im2col tap-major: samples n0:n1 of x (N, H, W, C) -> cols_t (kh*kw*C, rows). Each tap's row is a
    strided copy of x, read through its flat view so that with C = 1 and stride 1 the copy is contiguous
    and vectorises (indexing x[n, ih, iw, c] does not)."""
    kh, kw, sh, sw, dh, dw, ph, pw = g
    n_, h_, w_, c_ = x.shape
    zero = x.dtype.type(0)
    per = ho * wo
    flat = x.reshape(n_ * h_ * w_ * c_)
    step = sw * c_  # between the inputs of neighbouring outputs
    for i in range(kh):
        for j in range(kw):
            lo, hi = _valid_outputs(wo, sw, j * dw - pw, w_)
            for c in range(c_):
                row = cols_t[(i * kw + j) * c_ + c]  # (rows,)
                for n in range(n0, n1):
                    for oh in range(ho):
                        ih = oh * sh - ph + i * dh
                        r = (n - n0) * per + oh * wo
                        if ih < 0 or ih >= h_:
                            for ow in range(wo):
                                row[r + ow] = zero
                            continue
                        for ow in range(lo):
                            row[r + ow] = zero
                        base = ((n * h_ + ih) * w_ + j * dw - pw) * c_ + c  # x[n, ih, ow*sw + j*dw - pw, c] at ow = 0
                        if step == 1:
                            dst = row[r + lo : r + hi]
                            src = flat[base + lo : base + hi]
                            for q in range(hi - lo):
                                dst[q] = src[q]
                        else:
                            for ow in range(lo, hi):
                                row[r + ow] = flat[base + ow * step]
                        for ow in range(hi, wo):
                            row[r + ow] = zero


@numba.njit(**JIT)
def _col2im_t(cols_t, n0, n1, g, ho, wo, x):
    """The adjoint of _im2col_t: cols_t (kh*kw*C, rows) summed into samples n0:n1 of x (N, H, W, C),
    which are zeroed first."""
    kh, kw, sh, sw, dh, dw, ph, pw = g
    _, h_, w_, c_ = x.shape
    x[n0:n1] = 0
    per = ho * wo
    for i in range(kh):
        for j in range(kw):
            lo, hi = _valid_outputs(wo, sw, j * dw - pw, w_)
            for c in range(c_):
                row = cols_t[(i * kw + j) * c_ + c]  # (rows,)
                for n in range(n0, n1):
                    for oh in range(ho):
                        ih = oh * sh - ph + i * dh
                        if ih < 0 or ih >= h_:
                            continue
                        r = (n - n0) * per + oh * wo
                        for ow in range(lo, hi):
                            x[n, ih, ow * sw - pw + j * dw, c] += row[r + ow]


def _direct_forward(x, kernel, bias, use_bias, relu, g, n0, n1, ho, wo, scratch, o):
    """_forward_rows by direct convolution tiles, reading x in place (no windows laid out), where they take
    the layer: True when done, else False and nothing done.

    Compiled (the overload below): native.conv_tiles.forward_rows for float32 where it loaded (AVX-512 or
    AVX2), else False. From Python (eager mode) False."""
    return False


def _direct_backward(x, kernel, d, need_dk, need_dx, g, n0, n1, ho, wo, t, scratch, dk_parts, dx):
    """_backward_rows's kernel and input gradients by direct convolution tiles, where they take the layer:
    True when done, else False and nothing done. Compiled: native.conv_tiles.backward_rows as above."""
    return False


@overload(_direct_forward, jit_options=JIT, inline="always")
def _direct_forward_njit(x, kernel, bias, use_bias, relu, g, n0, n1, ho, wo, scratch, o):
    tiles = native.conv_tiles
    if tiles is None or x.dtype != types.float32:
        return lambda x, kernel, bias, use_bias, relu, g, n0, n1, ho, wo, scratch, o: False
    tiles.ready()  # the code compiled here calls the tiles' cfuncs
    return lambda x, kernel, bias, use_bias, relu, g, n0, n1, ho, wo, scratch, o: tiles.forward_rows(
        x, kernel, bias, use_bias, relu, g, n0, n1, ho, wo, scratch, o)


@overload(_direct_backward, jit_options=JIT, inline="always")
def _direct_backward_njit(x, kernel, d, need_dk, need_dx, g, n0, n1, ho, wo, t, scratch, dk_parts, dx):
    tiles = native.conv_tiles
    if tiles is None or x.dtype != types.float32:
        return lambda x, kernel, d, need_dk, need_dx, g, n0, n1, ho, wo, t, scratch, dk_parts, dx: False
    tiles.ready()  # the code compiled here calls the tiles' cfuncs
    return lambda x, kernel, d, need_dk, need_dx, g, n0, n1, ho, wo, t, scratch, dk_parts, dx: tiles.backward_rows(
        x, kernel, d, need_dk, need_dx, g, n0, n1, ho, wo, t, scratch, dk_parts, dx)


# inline="always" (at Numba's level, before typing): their callers take their code into their own bodies
# rather than linking it compiled, one level of calls less at which the tiles' machine code is compiled
# again. Not into a parallel loop's own body: its analyses would then run over that code.
@numba.njit(inline="always", **JIT)
def _forward_rows(x, kernel, bias, use_bias, relu, g, n0, n1, ho, wo, scratch, o):
    """The convolution of samples n0:n1 of x (N, H, W, C) on the calling thread -> o ((n1 - n0)*Ho*Wo, F),
    row (n - n0)*Ho*Wo + oh*Wo + ow; scratch (>= rows * K,) holds their windows (or, on the direct
    tiles, the samples padded)."""
    if _direct_forward(x, kernel, bias, use_bias, relu, g, n0, n1, ho, wo, scratch, o):
        return
    c_ = x.shape[3]
    k = kernel.shape[0]
    r = (n1 - n0) * ho * wo
    if c_ < TAP_MAJOR_BELOW_C:
        cols_t = scratch[: k * r].reshape(k, r)  # this chunk's windows
        _im2col_t(x, n0, n1, g, ho, wo, cols_t)
        affine(cols_t.T, kernel, bias, use_bias, relu, o, False)
    else:
        cols = scratch[: r * k].reshape(r, k)  # this chunk's windows
        _im2col(x, n0, n1, g, ho, wo, cols)
        affine(cols, kernel, bias, use_bias, relu, o, False)


@numba.njit(inline="always", **JIT)
def _backward_rows(x, kernel, d, use_bias, need_dk, need_dx, g, n0, n1, ho, wo, t, scratch, dk_parts, db_parts,
                   dx):
    """From d ((n1 - n0)*Ho*Wo, F), the gradient of the convolution's output for samples n0:n1 (rows as
    _forward_rows writes them), on the calling thread: their kernel and bias gradients to dk_parts[t] (K, F)
    and db_parts[t] (F,), their input gradient to those samples of dx. scratch (>= rows * K,) holds their
    windows, then the windows' gradients: tap-major below TAP_MAJOR_BELOW_C channels, as _forward_rows lays
    them out. (A run-time branch: both layouts compile into one body, where a layout passed as a type made
    every caller up to the parallel loop compile twice in a model with an RGB input.)"""
    f = d.shape[1]
    k = kernel.shape[0]
    r = (n1 - n0) * ho * wo
    if use_bias:
        db = db_parts[t]
        db[:] = 0
        for i in range(r):
            for q in range(f):
                db[q] += d[i, q]
    if (need_dk or need_dx) and _direct_backward(x, kernel, d, need_dk, need_dx, g, n0, n1, ho, wo, t, scratch,
                                                 dk_parts, dx):
        return
    tap_major = x.shape[3] < TAP_MAJOR_BELOW_C
    if need_dk:
        if tap_major:
            _kernel_gradient_tap_major(x, d, n0, n1, g, ho, wo, scratch[: k * r], dk_parts[t])
        else:
            _kernel_gradient_row_major(x, d, n0, n1, g, ho, wo, scratch[: k * r], dk_parts[t])
    if need_dx:
        if tap_major:
            _input_gradient_tap_major(kernel, d, n0, n1, g, ho, wo, scratch[: k * r], dx)
        else:
            _input_gradient_row_major(kernel, d, n0, n1, g, ho, wo, scratch[: k * r], dx)


@numba.njit(**JIT)
def _forward_range(x, kernel, bias, use_bias, relu, g, spc, t0, t1, scratch, out):
    """conv_forward for chunks t0:t1 of spc samples each, with this thread's scratch."""
    n_, ho, wo, f = out.shape
    per = ho * wo
    rows = out.reshape(n_ * per, f)
    for t in range(t0, t1):
        n0 = t * spc
        n1 = min(n0 + spc, n_)
        _forward_rows(x, kernel, bias, use_bias, relu, g, n0, n1, ho, wo, scratch, rows[n0 * per : n1 * per])


@numba.njit(**JIT)
def _kernel_gradient_tap_major(x, d, n0, n1, g, ho, wo, scratch, dk):
    """dk (K, F) = the windows of samples n0:n1 of x, laid out tap-major in scratch, times d (rows, F)."""
    cols_t = scratch.reshape(dk.shape[0], d.shape[0])  # (K, rows)
    _im2col_t(x, n0, n1, g, ho, wo, cols_t)
    matmul_serial(cols_t, d, dk)


@numba.njit(**JIT)
def _kernel_gradient_row_major(x, d, n0, n1, g, ho, wo, scratch, dk):
    """dk (K, F) = cols.T @ d; with few filters as (d.T @ cols).T, whose product has the long K axis
    as its contiguous output row instead of F (a 16-filter layer's kernel gradient took 1.7x as long)."""
    cols = scratch.reshape(d.shape[0], dk.shape[0])  # (rows, K)
    _im2col(x, n0, n1, g, ho, wo, cols)
    k, f = dk.shape
    if f < FEW_FILTERS:
        dk_t = np.empty((f, k), dk.dtype)
        matmul_serial(d.T, cols, dk_t)
        for i in range(k):
            for j in range(f):
                dk[i, j] = dk_t[j, i]
    else:
        matmul_serial(cols.T, d, dk)


@numba.njit(**JIT)
def _input_gradient_tap_major(kernel, d, n0, n1, g, ho, wo, scratch, dx):
    """Samples n0:n1 of dx (N, H, W, C) = the windows' gradients d (rows, F) times kernel.T, laid out
    tap-major in scratch, summed back into place."""
    dcols_t = scratch.reshape(kernel.shape[0], d.shape[0])  # (K, rows)
    matmul_serial(kernel, d.T, dcols_t)
    _col2im_t(dcols_t, n0, n1, g, ho, wo, dx)


@numba.njit(**JIT)
def _input_gradient_row_major(kernel, d, n0, n1, g, ho, wo, scratch, dx):
    dcols = scratch.reshape(d.shape[0], kernel.shape[0])  # (rows, K)
    matmul_serial(d, kernel.T, dcols)
    _col2im(dcols, n0, n1, g, ho, wo, dx)


@numba.njit(**JIT)
def _backward_range(x, kernel, dy, relu_out, relu, use_bias, need_dk, need_dx, g, spc, t0, t1, scratch,
                    dz_scratch, dk_parts, db_parts, dx):
    """conv_backward for chunks t0:t1 (chunk t: samples t*spc up to (t+1)*spc) on the calling thread, with
    this thread's scratch (see _backward_rows); with relu, dz_scratch (>= rows * F,) holds a chunk's dy
    through the ReLU (relu_out, the layer's output, is > 0 where it passes). One function for the range
    and the chunk: each level of calls compiles its callees' code again."""
    n_, ho, wo, f = dy.shape
    per = ho * wo
    for t in range(t0, t1):
        n0 = t * spc
        n1 = min(n0 + spc, n_)
        r = (n1 - n0) * per
        d = dy.reshape(n_ * per, f)[n0 * per : n1 * per]
        if relu:
            a = relu_out.reshape(n_ * per, f)[n0 * per : n1 * per]
            dz = dz_scratch[: r * f].reshape(r, f)
            zero = dz.dtype.type(0)
            for i in range(r):
                for q in range(f):
                    dz[i, q] = d[i, q] if a[i, q] > zero else zero
            d = dz
        _backward_rows(x, kernel, d, use_bias, need_dk, need_dx, g, n0, n1, ho, wo, t, scratch, dk_parts, db_parts,
                       dx)


# Without fastmath: its reassociation lets LLVM reorder these sums, and not always the same way (code
# compiled in the running process and code loaded from Numba's cache gave different bits). Summed strictly
# in chunk order, the result is the same bits whatever compiled it, at any thread count.
@numba.njit(**dict(JIT, fastmath=False))
def _sum_parts(dk_parts, dbias, db_parts, need_dk, use_bias, dkernel):
    """dkernel (K, F) and dbias (F,) = their per-chunk partials summed in chunk order, 0 + part 0 + part 1
    + ...: row by row, a vector loop over F per part. (Loops: the array expressions
    `dkernel += dk_parts[t]` compile to more code.)"""
    if need_dk:
        k, f = dkernel.shape
        zero = dkernel.dtype.type(0)
        for i in range(k):
            row = dkernel[i]  # in L1 while every part is added
            for j in range(f):
                row[j] = zero
            for t in range(dk_parts.shape[0]):
                part = dk_parts[t, i]
                for j in range(f):
                    row[j] += part[j]
    if use_bias:
        for j in range(dbias.shape[0]):
            total = dbias.dtype.type(0)
            for t in range(db_parts.shape[0]):
                total += db_parts[t, j]
            dbias[j] = total


# The two entry points split the chunks between Numba's threads (_split): each takes a contiguous range.
# With one share they call the range function itself, so a one-thread run never compiles the parallel
# loop. (A Python thread pool, in_threads below, took ~80 us a dispatch, and its threads and Numba's, which
# BatchNormalization and the products use, took each other's cores.)


def tiles_ready(dtype) -> None:
    """Before a float32 kernel that may reach the direct tiles compiles or runs: their entry points loaded.
    Not in eager mode (api/eager.py has put this module's Python functions in place of its kernels), which
    compiles nothing."""
    if native.conv_tiles is not None and dtype == np.float32 and hasattr(_backward_range, "py_func"):
        native.conv_tiles.ready()


def conv_forward(x, kernel, bias, use_bias, g, out, relu=False):
    """x (N, H, W, C), kernel (kh*kw*C, F), bias (F,) -> out (N, Ho, Wo, F), all C-contiguous; with relu,
    max(out, 0).

    Chunks of samples in parallel: each chunk lays its windows out in its own scratch (rows, kh*kw*C),
    tap-major for few channels, and multiplies them by the kernel with one single-threaded product whose
    epilogue adds the bias (and applies the ReLU) while each tile is in registers (gemm.affine).
    Conv2DTranspose's backward uses this too, for d(input) = im2col(dy) @ kernel.
    """
    n, ho, wo, f = out.shape
    spc, chunks = _chunking(n, ho * wo, kernel.shape[0], f, x.itemsize)
    scratch = _scratch(chunks, spc * ho * wo * kernel.shape[0], x.dtype)
    tiles_ready(x.dtype)
    parts = share_count(chunks)
    if parts <= 1:  # without the parallel loop's compile
        _forward_range(x, kernel, bias, use_bias, relu, g, spc, 0, chunks, scratch[0], out)
        return
    none = _NONE[x.dtype.type]
    with one_blas_thread():
        _split(False, x, kernel, bias, out, out, relu, use_bias, False, False, g, spc, chunks, parts, scratch,
               none[1], none[0], none[1], out)


def conv_backward(x, kernel, dy, use_bias, need_dk, need_dx, g, dkernel, dbias, dx, relu_out=None):
    """dy (N, Ho, Wo, F) -> dkernel (kh*kw*C, F) = im2col(x).T @ dy, dbias (F,) = the sum of dy over
    positions, dx (N, H, W, C) = col2im(dy @ kernel.T); all C-contiguous. With relu_out (the output of a
    conv_forward with relu), dy is the gradient of that output and is taken through the ReLU first, chunk
    by chunk.

    Chunks of samples as in conv_forward: each chunk recomputes its windows of x (cheaper than keeping
    every window from forward: they are kh*kw times the input) and writes its own partial kernel and
    bias gradients, which are then summed in chunk order, so the result does not depend on the thread
    count. x is read only when need_dk. Conv2DTranspose's forward is the dx part alone (dy = its input,
    dx = its output); its kernel gradient is the dkernel part with x = its output gradient and dy = its
    input.
    """
    n, ho, wo, f = dy.shape
    k = kernel.shape[0]
    spc, chunks = _chunking(n, ho * wo, k, f, dy.itemsize)
    dk_parts = shared_scratch("kernel gradient parts", (chunks if need_dk else 0, k, f), dy.dtype)
    db_parts = empty("bias gradient parts", (chunks if use_bias else 0, f), dy.dtype)
    scratch = _scratch(chunks, spc * ho * wo * k, dy.dtype)
    relu = relu_out is not None
    dz_scratch = shared_scratch("relu gradient",
                                (share_count(chunks) if relu else 1, spc * ho * wo * f if relu else 0), dy.dtype)
    relu_out = relu_out if relu else dy  # unread without relu
    tiles_ready(dy.dtype)
    parts = share_count(chunks)
    if parts <= 1:
        _backward_range(x, kernel, dy, relu_out, relu, use_bias, need_dk, need_dx, g, spc, 0, chunks, scratch[0],
                        dz_scratch[0], dk_parts, db_parts, dx)
    else:
        with one_blas_thread():
            _split(True, x, kernel, dbias, dy, relu_out, relu, use_bias, need_dk, need_dx, g, spc, chunks, parts,
                   scratch, dz_scratch, dk_parts, db_parts, dx)
    _sum_parts(dk_parts, dbias, db_parts, need_dk, use_bias, dkernel)


# Unread stand-ins for the arguments of _split that forward does not take, by dtype: (3-D, 2-D) arrays.
_NONE = {t: (np.zeros((0, 0, 0), t), np.zeros((1, 0), t)) for t in (np.float32, np.float64)}


@numba.njit(parallel=True, **JIT)
def _split(backward, x, kernel, bias, dy, relu_out, relu, use_bias, need_dk, need_dx, g, spc, chunks, parts,
           scratch, dz_scratch, dk_parts, db_parts, out):
    """_forward_range (out: the output) or _backward_range (out: dx) over `chunks` in `parts` contiguous
    ranges on Numba's threads, range t with scratch[t]. One function for both passes, as a parallel loop is
    long to compile; arguments a pass does not read may be any arrays of the same types. On Numba's threads
    rather than a Python pool: its dispatch (~80 us) is a large share of a small layer, and its threads and
    Numba's (BatchNormalization's, the products') would take each other's cores."""
    for t in numba.prange(parts):
        t0, t1 = chunks * t // parts, chunks * (t + 1) // parts
        if backward:
            z = np.int64(t) if dz_scratch.shape[0] > 1 else np.int64(0)  # one row without the ReLU
            _backward_range(x, kernel, dy, relu_out, relu, use_bias, need_dk, need_dx, g, spc, t0, t1, scratch[t],
                            dz_scratch[z], dk_parts, db_parts, out)
        else:
            _forward_range(x, kernel, bias, use_bias, relu, g, spc, t0, t1, scratch[t], out)


def _scratch(chunks, size, dtype):
    """One window buffer of `size` elements per thread share, shared by every layer of a workspace."""
    return shared_scratch("windows", (share_count(chunks), size), dtype)


def _chunking(n, rows_per_sample, k, f, itemsize):
    """(samples per chunk, chunks): as many samples as keep a chunk's windows and outputs within about
    CHUNK_BYTES, but at least MIN_CHUNKS chunks; and at most as many chunks as keep the kernel (K, F),
    which every chunk's product reads again, small next to the rows they multiply, and so the kernel
    gradient's partials (chunks, K, F) within the batch's windows and outputs (N*rows, K + F); at least
    two where the batch has two samples to share. A kernel large against the batch's rows (a late ResNet
    stage: 2x2 positions, K = 4608) would otherwise be streamed from memory by 16 chunks of a few rows."""
    by_cache = min(CHUNK_BYTES // max(rows_per_sample * (k + f) * itemsize, 1),
                   OUT_CHUNK_BYTES // max(rows_per_sample * f * itemsize, 1))
    by_balance = -(-n // MIN_CHUNKS)
    spc = max(1, min(by_cache, by_balance))
    most = max(2, n * rows_per_sample * (k + f) // max(k * f, 1))
    spc = max(spc, -(-n // most))
    return spc, -(-n // spc)


def share_count(chunks):
    """How many contiguous shares (one per thread at most) a split of `chunks` runs in."""
    return max(1, min(thread_count(), chunks))


def in_threads(chunks, run):
    """run(share, t0, t1) over contiguous, equal shares of range(chunks), one per Numba thread (the count
    `configure_threads` set; share indexes 0 .. share_count(chunks) - 1, e.g. for per-thread scratch);
    the calling thread takes the first share. For work that runs Python in each share (the recurrent
    layers' timestep loop); a compiled kernel splits on Numba's threads instead (see _split)."""
    threads = share_count(chunks)
    if threads <= 1:
        run(0, 0, chunks)
        return
    bounds = [chunks * i // threads for i in range(threads + 1)]
    futures = [_pool().submit(run, i, bounds[i], bounds[i + 1]) for i in range(1, threads)]
    run(0, bounds[0], bounds[1])
    for future in futures:
        future.result()


@functools.cache
def _pool():
    return concurrent.futures.ThreadPoolExecutor(max(1, numba.config.NUMBA_NUM_THREADS - 1), "specc-conv")


def one_blas_thread():
    """A context in which BLAS runs on one thread: the convolutions call BLAS from every thread at once, and
    a multi-threaded BLAS would then oversubscribe the cores (and serialise on OpenBLAS's lock). Limited at
    one thread too, so every GEMM is computed the same way at any thread count. NumPy's and SciPy's own
    OpenBLAS directly (blas.OneOpenblasThread, a few calls); any other BLAS through threadpoolctl, which
    is slower to enter and leave."""
    if HAVE_NUMPY_BLAS and HAVE_SCIPY_BLAS:
        return OneOpenblasThread()
    controller = _blas_controller()
    return contextlib.nullcontext() if controller is None else controller.limit(limits=1, user_api="blas")


@functools.cache
def _blas_controller():
    try:
        import scipy.linalg.cython_blas  # noqa: F401 - the BLAS Numba's np.dot calls must be loaded to be found
        from threadpoolctl import ThreadpoolController
    except ImportError:  # pragma: no cover - threadpoolctl comes with scikit-learn
        return None
    return ThreadpoolController()
