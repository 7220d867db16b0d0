"""A convolution followed by 2 x 2 max pooling, computed window by window on AVX-512 or AVX2 vectors
written as LLVM IR (as sgemm.py's micro-kernel, for the same ISA), for float32 and convolutions without
padding.

Why. conv_pool.py's chunked path lays out im2col windows, multiplies them by the kernel and pools the
product from a scratch; for a layer with few taps, such as a usual first layer (28x28x1 -> 32, a 3 x 3
kernel: K = 9 taps), each of those passes costs as much as the multiply-adds themselves, and the products
have k = 9. Here the windows are never laid out and the convolution's output never leaves the registers:

- forward (`_forward_tile`): three pooling windows at a time, 12 convolution outputs x FORWARD_COLS
  filters in 24 (AVX-512) or 12 (AVX2) vector registers. Per tap, one row of the kernel and 12
  broadcasts of x, read in place through a table of the taps' offsets in x; then the 2 x 2 maximum with
  its winner, the bias and the ReLU, and only the pooled values and the winners' int8 codes are stored (a
  code marks the windows whose gradient the ReLU stops, so backward needs no copy of the output).
- backward (`_grad_tile`): the kernel gradient, up to 9 taps x one vector of filters held in registers
  while a sample's pooling windows stream through: each window's gradient is multiplied by its winner's
  taps of x (only in the lanes each output wins), read from one 4 x 4 patch for a 3 x 3 kernel on one
  channel. The bias gradient rides along.

Each convolution output is the same chain of FMAs as sgemm's (taps in the same order, from zero), and the
bias and ReLU are applied to the maximum, which gives the same value as applying them first (both are
non-decreasing): the pooled outputs are bit-for-bit those of the two layers run apart. Two outputs that
differ only until the bias rounds them equal keep the larger as winner where the layers apart keep the first.
The kernel gradient sums the same products in another order.
"""

from __future__ import annotations

import functools

import llvmlite.binding
import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic, overload

from .. import JIT
from ..conv import _sum_parts
from .internals import numba_threads as _numba_threads
from .sgemm import _F32, _I8, _I64, _V, _VI, ISA, LANES, _declare, _Emitter

WINDOWS = 3  # pooling windows per forward tile
PIXELS = 4  # convolution outputs per 2 x 2 window, in scan order: (0, 0), (0, 1), (1, 0), (1, 1)
# Filters per forward tile, by the vector ISA sgemm.py is built for: 3 x 4 outputs x 2 vectors = 24
# accumulators of AVX-512's 32 registers, x 1 vector = 12 of AVX2's 16 (with two vectors, 24 would spill).
FORWARD_COLS = {"avx512": 2 * LANES, "avx2": LANES}[ISA]
# AVX-512 routes a window's gradient to its winners with masked FMAs (the mask registers are free); AVX2 has
# neither masked FMAs nor mask registers, and there a select folded into each FMA becomes a blend per FMA:
# the gradient is zeroed once per output instead, d * [code == q], and multiplied unmasked.
MASKED_FMA = ISA == "avx512"
GRAD_ROWS = (9, 4, 1)  # taps per backward tile (a 3 x 3 kernel on one channel is 9): 9 accumulators
# Filters per backward tile: one vector. Each broadcast of x then feeds one FMA, which takes it as an
# embedded-broadcast operand; over two vectors (32 filters) the 36 broadcasts of a window are each loaded
# into a register and shared by two FMAs, and LLVM hoists them all and spills them to the stack.
GRAD_COLS = LANES
BLOCKED = 4  # the winner code of a window whose gradient the ReLU stops
_LOWEST = -3.4028234663852886e38  # the lowest float32
# CLDEMOTE (Sapphire Rapids and later) each line of pooled output the forward tile writes: the next layer
# reads it from the shared L3 anyway (a training batch's pooled output can be larger than L2), so it moves there now
# instead of pushing out of this core's L2 what the core needs next: the Python between kernels and the
# next kernel's data. Not streaming stores: they send the output to memory, which the next layer reads
# more slowly than this layer gains. Only where the CPU has it, since LLVM cannot emit it otherwise (on
# others the encoding is a no-op, but a target without the feature rejects it).
DEMOTE = bool(llvmlite.binding.get_host_cpu_features().get("cldemote")) and numba.config.CPU_NAME in (None, "host")


def _forward_tile(masked: bool):
    """An intrinsic for three 2 x 2 pooling windows over a strip of FORWARD_COLS filters, arrays by address:
        z[w, q, j]  = sum_p x[x_w + pix_q + toff[p]] * b[p*ldb + j]  (+ bias[j]), then max(0, .) if relu
        out_w[j]    = max_q z[w, q, j]
        code_w[j]   = the first q reaching it (int8), or BLOCKED where relu and out_w[j] is not > 0
    for windows w < 3, outputs q < 4 of each window at pixel offsets pix = (0, cs, rs, rs + cs), filters
    j < FORWARD_COLS (masked: j < cols). Offsets and strides count elements; toff is an int64 table of k
    taps."""

    @intrinsic
    def tile(typingctx, x0, x1, x2, cs, rs, toff, k, b, ldb, bias, use_bias, relu, o0, o1, o2, c0, c1, c2, cols):
        i64, boolean = types.int64, types.boolean
        sig = types.void(*(i64,) * 10, boolean, boolean, *(i64,) * 7)

        def codegen(context, builder, signature, args):
            (x0_, x1_, x2_, cs_, rs_, toff_, k_, b_, ldb_, bias_, use_bias_, relu_, o0_, o1_, o2_, c0_, c1_, c2_,
             cols_) = args
            e = _Emitter(builder, masked, cols_)
            vectors = FORWARD_COLS // LANES
            xs, outs, codes = (x0_, x1_, x2_), (o0_, o1_, o2_), (c0_, c1_, c2_)
            pix = (e.const(0), cs_, rs_, builder.add(rs_, cs_))

            def step(p, acc):
                t = builder.load(e.at(toff_, p, _I64), align=8)  # this tap's offset in x
                bv = [e.load(e.at(b_, builder.add(builder.mul(p, ldb_), e.const(LANES * v))), v) for v in range(vectors)]
                new = []
                for w in range(WINDOWS):
                    for q in range(PIXELS):
                        xv = e.broadcast(xs[w], builder.add(t, pix[q]))
                        new.append([builder.call(e.fma, [xv, bv[v], acc[w * PIXELS + q][v]]) for v in range(vectors)])
                return new

            totals = e.loop(k_, [[e.zero] * vectors for _ in range(WINDOWS * PIXELS)], step)

            bias_v = e.bias(bias_, use_bias_, vectors)
            # The ReLU as max(z, floor) with floor 0, or the lowest float for no ReLU: a compare and a blend
            # (select(relu, ...) per value became a branch per value). NaN stays NaN, as in sgemm's epilogue.
            floor = e.splat(builder.select(relu_, ir.Constant(_F32, 0.0), ir.Constant(_F32, _LOWEST)), _V)
            code_of = [ir.Constant(_VI, [q] * LANES) for q in range(PIXELS)]
            blocked = ir.Constant(_VI, [BLOCKED] * LANES)
            # The maximum first, then the bias and the ReLU, once per window: both are non-decreasing (in
            # float32 too), so the pooled values are those of adding and clipping first, with 4x fewer
            # operations. The first maximum in scan order wins, as in pooling._max_forward.
            for w in range(WINDOWS):
                for v in range(vectors):
                    best, code = totals[w * PIXELS][v], code_of[0]
                    for q in range(1, PIXELS):
                        z = totals[w * PIXELS + q][v]
                        better = builder.fcmp_ordered(">", z, best)
                        best = builder.select(better, z, best)
                        code = builder.select(better, code_of[q], code)
                    best = builder.fadd(best, bias_v[v])
                    best = builder.select(builder.fcmp_ordered("<", best, floor), floor, best)
                    # No gradient passes a ReLU whose output is not > 0 (0, or NaN): marked here, so backward
                    # needs no copy of the output.
                    code = builder.select(relu_, builder.select(builder.fcmp_ordered(">", best, e.zero), code, blocked),
                                          code)
                    e.store(best, e.at(outs[w], e.const(LANES * v)), v)
                    if DEMOTE and not masked:  # a whole line of out: written once, read by the next layer
                        demote = _declare(builder.module, "llvm.x86.cldemote",
                                          ir.FunctionType(ir.VoidType(), [_I8.as_pointer()]))
                        builder.call(demote, [builder.inttoptr(builder.add(outs[w], e.const(4 * LANES * v)),
                                                               _I8.as_pointer())])
                    e.store(code, e.at(codes[w], e.const(LANES * v), _I8), v, codes=True)
            return context.get_dummy_value()

        return sig, codegen

    return tile


def _grad_tile(rows: int, masked: bool, patch: bool = False):
    """An intrinsic for `rows` taps x a strip of LANES filters of the kernel gradient over m rows of n
    pooling windows (one sample's), arrays given by address; with i = a*ldr + w*ldw + j, window (a, w)'s gradient
    and winner code:
        dk[r*ldk + j] += sum_{a, w, q where code[i] == q} x[x0 + a*xrow + w*wstep + pix_q + toff[r]] * dp[i]
        db[j]         += sum_{a, w} dp[i] where code[i] != BLOCKED   (with_db)
    for r < rows, j < 16 (masked: j < cols), pixel offsets pix = (0, cs, rs, rs + cs). The tile stays in
    registers over all m * n windows.

    With `patch` (9 taps only), the taps must be those of a 3 x 3 kernel on one channel whose steps are
    the pixels' (dilation = stride), toff[r] = (r // 3) rs + (r % 3) cs: the 36 products of a window then
    take their x from the 16 values of one 4 x 4 patch, each broadcast once, where the general tile loads
    36, one per FMA, and its loads rather than its FMAs set its pace."""

    @intrinsic
    def tile(typingctx, x0, xrow, wstep, cs, rs, toff, dp, code, ldr, ldw, m, n, dk, ldk, db, with_db, cols):
        i64, boolean = types.int64, types.boolean
        sig = types.void(*(i64,) * 15, boolean, i64)

        def codegen(context, builder, signature, args):
            (x0_, xrow_, wstep_, cs_, rs_, toff_, dp_, code_, ldr_, ldw_, m_, n_, dk_, ldk_, db_, with_db_,
             cols_) = args
            e = _Emitter(builder, masked, cols_)
            vectors = GRAD_COLS // LANES
            pix = (e.const(0), cs_, rs_, builder.add(rs_, cs_))
            taps = [builder.load(e.at(toff_, e.const(r), _I64), align=8) for r in range(rows)]
            dk_ptr = [[e.at(dk_, builder.add(builder.mul(ldk_, e.const(r)), e.const(LANES * v))) for v in range(vectors)]
                      for r in range(rows)]
            # Sums start from zero and are added to dk at the end: a sample's ~700 products per lane summed
            # on their own, then added to the chunk's total (blocked summation rounds less than one long
            # running sum).
            acc0 = [[e.zero] * vectors for _ in range(rows)]
            db_ptr = [e.at(db_, e.const(LANES * v)) for v in range(vectors)]
            acc0.append([e.zero] * vectors)  # the bias gradient's partial sums
            blocked = ir.Constant(_VI, [BLOCKED] * LANES)

            def row(a, acc_a):
                x_a = builder.add(x0_, builder.mul(a, builder.mul(xrow_, e.const(4))))  # byte address
                return e.loop(n_, acc_a, lambda w, acc: window(a, x_a, w, acc))

            def window(a, x_a, w, acc):
                row = builder.add(builder.mul(a, ldr_), builder.mul(w, ldw_))
                d, codes = [], []
                for v in range(vectors):
                    at = builder.add(row, e.const(LANES * v))
                    d.append(e.load(e.at(dp_, at), v))
                    codes.append(e.load(e.at(code_, at, _I8), v, codes=True))
                x_w = builder.add(x_a, builder.mul(w, builder.mul(wstep_, e.const(4))))  # byte address
                new = [list(r) for r in acc]
                # Each output's lanes where it is the winner, as masks: with MASKED_FMA the FMAs below are
                # masked ones (LLVM folds the select into the FMA), which needs no register for the routed
                # gradient; else the gradient is routed once per output and the FMAs take all lanes.
                wins = [[builder.icmp_signed("==", codes[v], ir.Constant(_VI, [q] * LANES)) for v in range(vectors)]
                        for q in range(PIXELS)]
                if patch:  # x_w + i rs + j cs, i, j < 4: output q's tap r is (q // 2 + r // 3, q % 2 + r % 3)
                    grid = {(i, j): e.broadcast(x_w, builder.add(builder.mul(rs_, e.const(i)), builder.mul(cs_, e.const(j))))
                            for i in range(4) for j in range(4)}
                for q in range(PIXELS):
                    routed = None if MASKED_FMA else [builder.select(wins[q][v], d[v], e.zero) for v in range(vectors)]
                    for r in range(rows):
                        xv = (grid[q // 2 + r // 3, q % 2 + r % 3] if patch
                              else e.broadcast(x_w, builder.add(taps[r], pix[q])))
                        if MASKED_FMA:
                            new[r] = [builder.select(wins[q][v], builder.call(e.fma, [xv, d[v], new[r][v]]), new[r][v])
                                      for v in range(vectors)]
                        else:
                            new[r] = [builder.call(e.fma, [xv, routed[v], new[r][v]]) for v in range(vectors)]
                passed = [builder.select(builder.icmp_signed("==", codes[v], blocked), e.zero, d[v]) for v in range(vectors)]
                new[rows] = [builder.fadd(acc[rows][v], passed[v]) for v in range(vectors)]
                return new

            totals = e.loop(m_, acc0, row)
            for r in range(rows):
                for v in range(vectors):
                    e.store(builder.fadd(e.load(dk_ptr[r][v], v), totals[r][v]), dk_ptr[r][v], v)
            with builder.if_then(with_db_):
                for v in range(vectors):
                    e.store(builder.fadd(e.load(db_ptr[v], v), totals[rows][v]), db_ptr[v], v)
            return context.get_dummy_value()

        return sig, codegen

    return tile


# Instantiated once each (every variant costs compile time): full and masked strips; 9-, 4- and 1-tap
# gradient tiles, which cover any number of taps (a 3 x 3 x 3 kernel is 9 + 9 + 9), and the 9-tap tile on a
# patch for 3 x 3 kernels on one channel.
forward_full, forward_masked = _forward_tile(False), _forward_tile(True)
grad9, grad4, grad1 = (_grad_tile(r, False) for r in GRAD_ROWS)
grad9_masked, grad4_masked, grad1_masked = (_grad_tile(r, True) for r in GRAD_ROWS)
grad9_patch, grad9_patch_masked = _grad_tile(9, False, True), _grad_tile(9, True, True)




# The drivers, compiled once as C callables over addresses (as sgemm's), with a parallel version of each
# whose prange hands contiguous ranges of chunks to Numba's threads: Numba's workers wake much sooner than
# conv.in_threads's Python pool, whose cost per call would be a large share of this short forward.
_I64T = types.int64
_FORWARD_SIG = types.void(*(_I64T,) * 21)
_BACKWARD_SIG = types.void(*(_I64T,) * 20)


@numba.njit(inline="always", **JIT)
def _next_window(n, p, q, po, qo):
    """The window after (sample n, pooled row p, column q), in out's order. (Inlined: _forward_c's calls
    type p and q as the literal 0 at one site and int64 at another, two compiles of a function this small.)"""
    if q + 1 < qo:
        return n, p, q + 1
    if p + 1 < po:
        return n, p + 1, 0
    return n + 1, 0, 0


def _forward_c(x, n_, h_, w_, c_, kernel, k, f, bias, use_bias, relu, sh, sw, taps, spc, t0, t1, out, po, qo, code):
    """The pairs' forward for chunks t0:t1 of spc samples on the calling thread: x (N, H, W, C) ->
    out (N, Po, Qo, F) float32 and each window's winner code (N, Po, Qo, F) int8, all by address. Windows
    go three at a time in out's order, across rows and samples (per row, 13 windows would take 5 tiles); the
    chunk's last tile repeats its last window when fewer than 3 are left."""
    cs, rs = sw * c_, sh * w_ * c_  # elements between the windows of horizontally / vertically adjacent outputs
    for t in range(t0, t1):
        n, p, q = t * spc, 0, 0
        w = t * spc * po * qo
        end = min(t * spc + spc, n_) * po * qo
        while w < end:
            x0 = x + 4 * (((n * h_ + 2 * p * sh) * w_ + 2 * q * sw) * c_)  # window w's first output's taps
            n, p, q = _next_window(n, p, q, po, qo) if w + 1 < end else (n, p, q)
            x1 = x + 4 * (((n * h_ + 2 * p * sh) * w_ + 2 * q * sw) * c_)
            n, p, q = _next_window(n, p, q, po, qo) if w + 2 < end else (n, p, q)
            x2 = x + 4 * (((n * h_ + 2 * p * sh) * w_ + 2 * q * sw) * c_)
            w1, w2 = min(w + 1, end - 1), min(w + 2, end - 1)
            for j in range(0, f, FORWARD_COLS):
                cols = min(FORWARD_COLS, f - j)
                args = (x0, x1, x2, cs, rs, taps, k, kernel + 4 * j, f, bias + 4 * j, use_bias != 0, relu != 0,
                        out + 4 * (w * f + j), out + 4 * (w1 * f + j), out + 4 * (w2 * f + j),
                        code + w * f + j, code + w1 * f + j, code + w2 * f + j, cols)
                if cols == FORWARD_COLS:
                    forward_full(*args)
                else:
                    forward_masked(*args)
            n, p, q = _next_window(n, p, q, po, qo)
            w += WINDOWS


_forward_ext = types.ExternalFunction("specc_conv_pool_forward", _FORWARD_SIG)


def _forward_parallel_c(x, n_, h_, w_, c_, kernel, k, f, bias, use_bias, relu, sh, sw, taps, spc, chunks, parts, out,
                        po, qo, code):
    """_forward_c over all chunks, in `parts` contiguous ranges, one per thread."""
    for i in numba.prange(parts):
        _forward_ext(x, n_, h_, w_, c_, kernel, k, f, bias, use_bias, relu, sh, sw, taps, spc, chunks * i // parts,
                     chunks * (i + 1) // parts, out, po, qo, code)


_forward_parallel_ext = types.ExternalFunction("specc_conv_pool_forward_parallel", _FORWARD_SIG)


@numba.njit(**JIT)
def _grad_strip(rows, full, patch, args):
    """The gradient tile for `rows` (9, 4 or 1) taps, full or masked, on a patch (a tuple of its arguments)."""
    if patch:
        if full:
            grad9_patch(*args)
        else:
            grad9_patch_masked(*args)
    elif full:
        if rows == 9:
            grad9(*args)
        elif rows == 4:
            grad4(*args)
        else:
            grad1(*args)
    elif rows == 9:
        grad9_masked(*args)
    elif rows == 4:
        grad4_masked(*args)
    else:
        grad1_masked(*args)


def _backward_c(x, n_, h_, w_, c_, dp, code, po, qo, f, use_bias, sh, sw, taps, k, spc, patch, t0, t1, parts):
    """The kernel and bias gradients of _forward_c's pairs for chunks t0:t1, added into parts[t, :K] (K, F)
    and parts[t, K] (F,) (zeroed by the caller): per sample, taps in tiles of 9, 4 and 1, or with `patch`
    (the taps of a 3 x 3 kernel on one channel, on the pixels' grid) in one tile on a patch."""
    cs, rs = sw * c_, sh * w_ * c_
    for t in range(t0, t1):
        dk = parts + 4 * t * (k + 1) * f
        db = dk + 4 * k * f
        for n in range(t * spc, min(t * spc + spc, n_)):
            x0 = x + 4 * (n * h_ * w_ * c_)  # the sample's first window's first output's taps
            first = n * po * qo * f  # its first window in dp and code
            for j in range(0, f, GRAD_COLS):
                cols = min(GRAD_COLS, f - j)
                r = 0
                while r < k:
                    rows = 9 if r + 9 <= k else 4 if r + 4 <= k else 1
                    args = (x0, 2 * sh * w_ * c_, 2 * sw * c_, cs, rs, taps + 8 * r, dp + 4 * (first + j),
                            code + first + j, qo * f, f, po, qo, dk + 4 * (r * f + j), f, db + 4 * j,
                            use_bias != 0 and r == 0, cols)
                    _grad_strip(rows, cols == GRAD_COLS, patch != 0, args)
                    r += rows


_backward_ext = types.ExternalFunction("specc_conv_pool_backward", _BACKWARD_SIG)


def _backward_parallel_c(x, n_, h_, w_, c_, dp, code, po, qo, f, use_bias, sh, sw, taps, k, spc, patch, chunks,
                         ranges, parts):
    """_backward_c over all chunks, in `ranges` contiguous ranges, one per thread."""
    for i in numba.prange(ranges):
        _backward_ext(x, n_, h_, w_, c_, dp, code, po, qo, f, use_bias, sh, sw, taps, k, spc, patch,
                      chunks * i // ranges, chunks * (i + 1) // ranges, parts)


_backward_parallel_ext = types.ExternalFunction("specc_conv_pool_backward_parallel", _BACKWARD_SIG)


def _windows_of(x, sh, sw, taps, po, qo):
    """The taps of every output of every pooling window, (N, 2 Po, 2 Qo, K), for the NumPy versions."""
    n, h, w, c = x.shape
    origin = (np.arange(2 * po)[:, None] * sh * w + np.arange(2 * qo)[None, :] * sw) * c  # (2 Po, 2 Qo)
    return x.reshape(n, -1)[:, origin[..., None] + taps]


def forward(x, kernel, bias, use_bias, relu, sh, sw, taps, spc, out, code):
    """x (N, H, W, C), kernel (K, F), bias (F,), float32 -> out (N, Po, Qo, F) and winner codes (N, Po, Qo,
    F) int8, for a convolution without padding (strides sh, sw; taps: the kernel's offsets into x) and
    2 x 2 pooling windows with stride 2, in chunks of spc samples over Numba's threads (as many as the
    calling thread's numba.get_num_threads(), at most one per chunk). x and dp (below) may be any layout;
    the other arrays are C-contiguous.

    Compiled (the overload below): the tiles above. From Python (eager mode runs this) it is NumPy: the
    same results up to float rounding."""
    n, po, qo, f = out.shape
    z = _windows_of(x, sh, sw, taps, po, qo) @ kernel  # (N, 2 Po, 2 Qo, F)
    z = z.reshape(n, po, 2, qo, 2, f).transpose(0, 1, 3, 2, 4, 5).reshape(n, po, qo, PIXELS, f)  # scan order
    if use_bias:
        z = z + bias
    if relu:
        z = np.maximum(z, 0)
    out[...] = z.max(axis=3)
    code[...] = z.argmax(axis=3)
    if relu:
        code[~(out > 0)] = BLOCKED


def backward(x, dp, code, use_bias, sh, sw, taps, spc, parts, dkernel, dbias):
    """dkernel (K, F) and, with use_bias, dbias (F,): the kernel and bias gradients of `forward` from dp
    (N, Po, Qo, F), the gradient of its output. parts (chunks, K + 1, F) is scratch: each chunk's sums
    (kernel rows, then the bias), added up in chunk order at the end, in the same call (a second kernel
    call from Python would be slow right after this one has streamed dp through the caches).

    Compiled (the overload below): the tiles above. From Python (eager mode runs this) it is NumPy."""
    n, po, qo, f = dp.shape
    dz = np.zeros((n, 2 * po, 2 * qo, f), dp.dtype)
    for q in range(PIXELS):
        dz[:, q // 2 :: 2, q % 2 :: 2][:, :po, :qo] = np.where(code == q, dp, 0)
    dkernel[...] = np.einsum("nhwk,nhwf->kf", _windows_of(x, sh, sw, taps, po, qo), dz)
    if use_bias:
        dbias[...] = np.where(code != BLOCKED, dp, 0).sum(axis=(0, 1, 2))


@overload(forward, jit_options=JIT)
def _forward_njit(x, kernel, bias, use_bias, relu, sh, sw, taps, spc, out, code):
    ready()  # the code compiled here calls the cfuncs

    def impl(x, kernel, bias, use_bias, relu, sh, sw, taps, spc, out, code):
        x = np.ascontiguousarray(x)  # no copy when it is (decided when compiled, from the type's layout)
        n, h, w, c = x.shape
        _, po, qo, f = out.shape
        chunks = -(-n // spc)
        parts = min(_numba_threads(), chunks)
        args = (x.ctypes.data, n, h, w, c, kernel.ctypes.data, kernel.shape[0], f, bias.ctypes.data, int(use_bias),
                int(relu), sh, sw, taps.ctypes.data, spc)
        if parts > 1:
            _forward_parallel_ext(*args, chunks, parts, out.ctypes.data, po, qo, code.ctypes.data)
        else:
            _forward_ext(*args, 0, chunks, out.ctypes.data, po, qo, code.ctypes.data)

    return impl


@overload(backward, jit_options=JIT)
def _backward_njit(x, dp, code, use_bias, sh, sw, taps, spc, parts, dkernel, dbias):
    ready()  # the code compiled here calls the cfuncs

    def impl(x, dp, code, use_bias, sh, sw, taps, spc, parts, dkernel, dbias):
        x, dp = np.ascontiguousarray(x), np.ascontiguousarray(dp)
        n, h, w, c = x.shape
        _, po, qo, f = dp.shape
        k = taps.shape[0]
        chunks = parts.shape[0]
        ranges = min(_numba_threads(), chunks)
        parts[...] = 0
        patch = k == 9 and c == 1  # the taps of a 3 x 3 kernel on one channel, on the pixels' grid?
        for r in range(k):
            patch = patch and taps[r] == (r // 3) * sh * w + (r % 3) * sw
        args = (x.ctypes.data, n, h, w, c, dp.ctypes.data, code.ctypes.data, po, qo, f, int(use_bias), sh, sw,
                taps.ctypes.data, k, spc, int(patch))
        if ranges > 1:
            _backward_parallel_ext(*args, chunks, ranges, parts.ctypes.data)
        else:
            _backward_ext(*args, 0, chunks, parts.ctypes.data)
        _sum_parts(parts[:, :k], dbias, parts[:, k], True, use_bias, dkernel)  # in chunk order; the bias is row K

    return impl


@functools.cache
def ready() -> tuple:
    """Compiles (or loads from the cache) the four cfuncs above and gives compiled code their addresses:
    before anything calling them compiles or loads (the overloads below, conv_pool's entry points). Not at
    import: a model without a convolution + pooling pair would compile them (two parallel loops) for
    nothing. Each loop's range function first, as the loop calls it. The cfuncs, kept."""
    compiled = []
    for name, function, sig, parallel in (
        ("specc_conv_pool_forward", _forward_c, _FORWARD_SIG, False),
        ("specc_conv_pool_forward_parallel", _forward_parallel_c, _FORWARD_SIG, True),
        ("specc_conv_pool_backward", _backward_c, _BACKWARD_SIG, False),
        ("specc_conv_pool_backward_parallel", _backward_parallel_c, _BACKWARD_SIG, True),
    ):
        cfunc = numba.cfunc(sig, parallel=parallel, **JIT)(function)
        llvmlite.binding.add_symbol(name, cfunc.address)
        compiled.append(cfunc)
    return tuple(compiled)


# What conv_pool calls: compiled, these run the overloads; in eager mode (their py_func), the NumPy versions.
@numba.njit(**JIT)
def _run_forward(x, kernel, bias, use_bias, relu, sh, sw, taps, spc, out, code):
    forward(x, kernel, bias, use_bias, relu, sh, sw, taps, spc, out, code)


@numba.njit(**JIT)
def _run_backward(x, dp, code, use_bias, sh, sw, taps, spc, parts, dkernel, dbias):
    backward(x, dp, code, use_bias, sh, sw, taps, spc, parts, dkernel, dbias)


def run_forward(x, kernel, bias, use_bias, relu, sh, sw, taps, spc, out, code):
    """_run_forward, with the cfuncs it calls ready first (its machine code, compiled or loaded from the
    cache, needs their addresses); eager mode has put the Python version in its place and compiles nothing."""
    if hasattr(_run_forward, "py_func"):
        ready()
    _run_forward(x, kernel, bias, use_bias, relu, sh, sw, taps, spc, out, code)


def run_backward(x, dp, code, use_bias, sh, sw, taps, spc, parts, dkernel, dbias):
    """_run_backward, as run_forward."""
    if hasattr(_run_backward, "py_func"):
        ready()
    _run_backward(x, dp, code, use_bias, sh, sw, taps, spc, parts, dkernel, dbias)


@intrinsic
def axpy_pair(typingctx, v, dk, x, dx, k, n):
    """dk[e] += v * x[e] and dx[e] += v * k[e] for e < n, float32 arrays given by address (v a float32):
    conv_pool._codes_backward_range's update of a kernel row's gradient and its input gradient from one
    winner. Whole vectors, then one masked vector for the tail; no run-time alias checks (a Numba loop over
    four arrays has them, and they cost as much as a 96-element update)."""
    i64 = types.int64
    sig = types.void(types.float32, i64, i64, i64, i64, i64)

    def codegen(context, builder, signature, args):
        v_, dk_, x_, dx_, k_, n_ = args
        e = _Emitter(builder, False, None)
        scale = e.splat(v_, _V)
        lanes = e.const(LANES)

        def update(tail, offset):
            for target, source in ((dk_, x_), (dx_, k_)):
                ptr = tail.at(target, offset)
                tail.store(builder.call(e.fma, [scale, tail.load(tail.at(source, offset), 0), tail.load(ptr, 0)]),
                           ptr, 0)

        def step(i, state):
            update(e, builder.mul(i, lanes))
            return state

        whole = builder.sdiv(n_, lanes)
        e.loop(whole, [], step)
        rest = builder.sub(n_, builder.mul(whole, lanes))
        with builder.if_then(builder.icmp_signed(">", rest, e.const(0))):
            update(_Emitter(builder, True, rest), builder.mul(whole, lanes))
        return context.get_dummy_value()

    return sig, codegen
