"""Direct (implicit-GEMM) convolution tiles for float32 on AVX-512 or AVX2 vectors written as LLVM IR, as
sgemm.py's micro-kernel, for the same ISA.

Why. conv.py's portable path lays every window out (im2col: kh*kw times the input) and multiplies the
windows by the kernel with sgemm, whose 14 x 32 register tile leaves half of every vector idle for a
16-filter layer; its backward multiplies by kernel.T with k = F (a short product) and sums the windows'
gradients back into place (col2im). Here no window is laid out: the tiles read the (zero-padded) input
in place through a table of the taps' offsets.

- forward (`_forward_tile`): `rows` consecutive outputs of one output row x one strip of STRIP = 16
  filters (one 512-bit vector, or two 256-bit ones), in registers; per tap one kernel row and `rows`
  broadcasts of x; then the bias and the ReLU, and the store.
- input gradient, for stride 1: the same tile on the output gradient padded by (kh - 1) dh - pad, with
  the kernel flipped and its two channel axes swapped (kh*kw*F, C).
- kernel gradient (`_grad_tile`): `taps` consecutive taps (channels, then kernel columns) x one strip of
  filters held in registers while a sample's outputs stream through: per output one vector of its
  gradient and `taps` broadcasts of x at constant offsets.

The forward tile sums each output's products in tap order from zero, as sgemm does; the kernel gradient
sums a sample's products per tile, then adds them to the chunk's partial, so results are the same at any
thread count.
"""

from __future__ import annotations

import functools

import llvmlite.binding
import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

from .. import JIT
from .sgemm import _F32, _I64, ISA, LANES, _Emitter

STRIP = 16  # filters (forward) or channels (input gradient) per tile: the narrow layers this is for
VECTORS = STRIP // LANES
# Outputs per forward tile by ISA: rows x VECTORS accumulators + VECTORS kernel vectors within the
# vector registers (16 + 1 of AVX-512's 32, 6 x 2 + 2 + 1 of AVX2's 16); then smaller tiles for the rest
# of an output row.
FORWARD_ROWS = {"avx512": (16, 8, 4, 2, 1), "avx2": (6, 4, 2, 1)}[ISA]
# Channels per kernel-gradient tile, likewise.
GRAD_TAPS = {"avx512": (16, 8, 4, 2, 1), "avx2": (6, 4, 2, 1)}[ISA]
# On AVX-512, strips of 32 filters (two vectors; 14 x 2 accumulators, as sgemm's tile) for wider layers, so
# that each broadcast of x feeds two FMAs; AVX2 has no registers to spare for it.
WIDE = 2 * LANES if ISA == "avx512" else 0
WIDE_ROWS = (14, 8, 4, 2, 1)
# Forward takes layers up to this many filters, or, strided, up to STRIP (sgemm's tile runs wider strided
# layers faster: their outputs' inputs are not neighbours).
MAX_FILTERS = 64
_LOWEST = -3.4028234663852886e38  # the lowest float32: the ReLU's floor when there is no ReLU


def _forward_tile(rows: int, masked: bool, fixed_cs: int = 0, vectors: int = VECTORS):
    """An intrinsic for `rows` outputs x a strip of filters, float32 arrays given by address:
        out[r*ldo + j] = sum_p x[x0 + r*cs + toff[p]] * b[p*ldb + j]  (+ bias[j]), then max(0, .) if relu
    for r < rows, j < vectors*LANES (masked: j < cols); toff is an int64 table of k taps; offsets count
    elements. With `fixed_cs`, cs must be that constant: the rows' broadcasts are then one address plus constant
    displacements, where a run-time cs needs a register per row (16 of them spill)."""

    @intrinsic
    def tile(typingctx, x0, cs, toff, k, b, ldb, bias, use_bias, relu, out, ldo, cols):
        i64, boolean = types.int64, types.boolean
        sig = types.void(*(i64,) * 7, boolean, boolean, i64, i64, i64)

        def codegen(context, builder, signature, args):
            x0_, cs_, toff_, k_, b_, ldb_, bias_, use_bias_, relu_, out_, ldo_, cols_ = args
            e = _Emitter(builder, masked, cols_)
            pix = [e.const(r * fixed_cs) if fixed_cs else builder.mul(cs_, e.const(r)) for r in range(rows)]

            def step(p, acc):
                t = builder.load(e.at(toff_, p, _I64), align=8)
                row = builder.mul(p, ldb_)
                bv = [e.load(e.at(b_, builder.add(row, e.const(LANES * v))), v) for v in range(vectors)]
                new = []
                for r in range(rows):
                    xv = e.broadcast(x0_, builder.add(t, pix[r]))
                    new.append([builder.call(e.fma, [xv, bv[v], acc[r][v]]) for v in range(vectors)])
                return new

            totals = e.loop(k_, [[e.zero] * vectors for _ in range(rows)], step)
            bias_v = e.bias(bias_, use_bias_, vectors)
            # max(z, floor): floor 0 for the ReLU, else the lowest float (NaN stays NaN, as in sgemm).
            floor = e.splat(builder.select(relu_, ir.Constant(_F32, 0.0), ir.Constant(_F32, _LOWEST)), totals[0][0].type)
            for r in range(rows):
                o_row = builder.mul(ldo_, e.const(r))
                for v in range(vectors):
                    value = builder.fadd(totals[r][v], bias_v[v])
                    value = builder.select(builder.fcmp_ordered("<", value, floor), floor, value)
                    e.store(value, e.at(out_, builder.add(o_row, e.const(LANES * v))), v)
            return context.get_dummy_value()

        return sig, codegen

    return tile


def _grad_tile(taps: int, masked: bool):
    """An intrinsic for `taps` consecutive kernel rows x a strip of filters of the kernel gradient over
    m x n outputs, float32 arrays given by address:
        dk[r*ldk + j] += sum_{a < m, w < n} x[x0 + a*xrow + w*cs + r] * d[d0 + a*ldr + w*ldd + j]
    for r < taps, j < STRIP (masked: j < cols); offsets count elements."""

    @intrinsic
    def tile(typingctx, x0, xrow, cs, d0, ldr, ldd, m, n, dk, ldk, cols):
        sig = types.void(*(types.int64,) * 11)

        def codegen(context, builder, signature, args):
            x0_, xrow_, cs_, d0_, ldr_, ldd_, m_, n_, dk_, ldk_, cols_ = args
            e = _Emitter(builder, masked, cols_)
            four = e.const(4)
            x_step, d_step = builder.mul(cs_, four), builder.mul(ldd_, four)  # bytes per output

            def row(a, acc):
                x_a = builder.add(x0_, builder.mul(a, builder.mul(xrow_, four)))
                d_a = builder.add(d0_, builder.mul(a, builder.mul(ldr_, four)))
                state = [[x_a, d_a]] + acc
                return e.loop(n_, state, output)[1:]

            def output(w, state):
                (x_w, d_w), acc = state[0], state[1:]
                d = [e.load(e.at(d_w, e.const(LANES * v)), v) for v in range(VECTORS)]
                new = [[builder.add(x_w, x_step), builder.add(d_w, d_step)]]
                for r in range(taps):
                    xv = e.broadcast(x_w, e.const(r))
                    new.append([builder.call(e.fma, [xv, d[v], acc[r][v]]) for v in range(VECTORS)])
                return new

            totals = e.loop(m_, [[e.zero] * VECTORS for _ in range(taps)], row)
            for r in range(taps):
                for v in range(VECTORS):
                    ptr = e.at(dk_, builder.add(builder.mul(ldk_, e.const(r)), e.const(LANES * v)))
                    e.store(builder.fadd(e.load(ptr, v), totals[r][v]), ptr, v)
            return context.get_dummy_value()

        return sig, codegen

    return tile


# Five sizes each (AVX2's last one repeated), as module-level names: compiled code calls them by name.
_ROWS5 = FORWARD_ROWS + (1,) * (5 - len(FORWARD_ROWS))
_TAPS5 = GRAD_TAPS + (1,) * (5 - len(GRAD_TAPS))
_f0, _f1, _f2, _f3, _f4 = (_forward_tile(r, False) for r in _ROWS5)
# The full-size tile for the steps between outputs of the usual layers (C or F of 16, 32, 64 at stride 1).
STEPS = (16, 32, 64)
_s16, _s32, _s64 = (_forward_tile(FORWARD_ROWS[0], False, cs) for cs in STEPS)
if WIDE:
    _w0, _w1, _w2, _w3, _w4 = (_forward_tile(r, False, 0, 2) for r in WIDE_ROWS)
    _ws16, _ws32, _ws64 = (_forward_tile(WIDE_ROWS[0], False, cs, 2) for cs in STEPS)
else:  # never called (WIDE is 0), but typed
    _w0, _w1, _w2, _w3, _w4 = _f0, _f1, _f2, _f3, _f4
    _ws16, _ws32, _ws64 = _s16, _s32, _s64


@numba.njit(**JIT)
def _wide_strip(i, cs, args):
    """The wide forward tile WIDE_ROWS[i] (for the full-size one, the one for this cs, if any)."""
    if i == 0:
        if cs == 16:
            _ws16(*args)
        elif cs == 32:
            _ws32(*args)
        elif cs == 64:
            _ws64(*args)
        else:
            _w0(*args)
    elif i == 1:
        _w1(*args)
    elif i == 2:
        _w2(*args)
    elif i == 3:
        _w3(*args)
    else:
        _w4(*args)
_m0, _m1, _m2, _m3, _m4 = (_forward_tile(r, True) for r in _ROWS5)
_g0, _g1, _g2, _g3, _g4 = (_grad_tile(t, False) for t in _TAPS5)
_h0, _h1, _h2, _h3, _h4 = (_grad_tile(t, True) for t in _TAPS5)


@numba.njit(**JIT)
def _forward_strip(i, full, step, args):
    """The forward tile FORWARD_ROWS[i], full or masked, on a tuple of its arguments (for the full-size
    tile, the one for this step between outputs, if any)."""
    if full:
        if i == 0:
            if step == 16:
                _s16(*args)
            elif step == 32:
                _s32(*args)
            elif step == 64:
                _s64(*args)
            else:
                _f0(*args)
        elif i == 1:
            _f1(*args)
        elif i == 2:
            _f2(*args)
        elif i == 3:
            _f3(*args)
        else:
            _f4(*args)
    elif i == 0:
        _m0(*args)
    elif i == 1:
        _m1(*args)
    elif i == 2:
        _m2(*args)
    elif i == 3:
        _m3(*args)
    else:
        _m4(*args)


@numba.njit(**JIT)
def _grad_strip(i, full, args):
    """The gradient tile GRAD_TAPS[i], full or masked, on a tuple of its arguments."""
    if full:
        if i == 0:
            _g0(*args)
        elif i == 1:
            _g1(*args)
        elif i == 2:
            _g2(*args)
        elif i == 3:
            _g3(*args)
        else:
            _g4(*args)
    elif i == 0:
        _h0(*args)
    elif i == 1:
        _h1(*args)
    elif i == 2:
        _h2(*args)
    elif i == 3:
        _h3(*args)
    else:
        _h4(*args)


@numba.njit(**JIT)
def _pick(sizes, left):
    """The index of the largest of `sizes` (decreasing, ending at 1) that is <= left."""
    i = 0
    while sizes[i] > left:
        i += 1
    return i


@numba.njit(**JIT)
def _tap_offsets(kh, kw, dh, dw, wp, c):
    """The offsets (elements) of a window's taps (i, j, c) in an image of width wp and c channels."""
    toff = np.empty(kh * kw * c, np.int64)
    for i in range(kh):
        for j in range(kw):
            for q in range(c):
                toff[(i * kw + j) * c + q] = (i * dh * wp + j * dw) * c + q
    return toff


@numba.njit(**JIT)
def _pad_samples(x, n0, n1, top, left, hp, wp, xp):
    """xp (>= (n1 - n0)*Hp*Wp*C,) = samples n0:n1 of x (N, H, W, C), shifted by (top, left) in an image of
    Hp x Wp, zeros around. Row by row: zeros as slices, each input row as one contiguous copy."""
    _, h_, w_, c_ = x.shape
    flat = x.reshape(x.size)
    b0, b1 = max(0, left), min(wp, left + w_)  # the columns that hold x
    row = wp * c_
    i = 0
    for n in range(n0, n1):
        for a in range(hp):
            ih = a - top
            if ih < 0 or ih >= h_ or b0 >= b1:
                xp[i : i + row] = 0
            else:
                xp[i : i + b0 * c_] = 0
                dst = xp[i + b0 * c_ : i + b1 * c_]
                src = flat[((n * h_ + ih) * w_ + b0 - left) * c_ :]
                for e in range((b1 - b0) * c_):
                    dst[e] = src[e]
                xp[i + b1 * c_ : i + row] = 0
            i += row


@numba.njit(**JIT)
def _pad_rows(d, s_, ho, wo, top, left, hq, wq, dp):
    """dp (>= S*Hq*Wq*F,) = d (S*Ho*Wo, F) as S images Ho x Wo, shifted by (top, left) in Hq x Wq, zeros
    around."""
    f = d.shape[1]
    b0, b1 = max(0, left), min(wq, left + wo)
    row = wq * f
    i = 0
    for s in range(s_):
        for a in range(hq):
            oh = a - top
            if oh < 0 or oh >= ho or b0 >= b1:
                dp[i : i + row] = 0
            else:
                dp[i : i + b0 * f] = 0
                for b in range(b0, b1):
                    src = d[(s * ho + oh) * wo + b - left]
                    dst = dp[i + b * f : i + b * f + f]
                    for q in range(f):
                        dst[q] = src[q]
                dp[i + b1 * f : i + row] = 0
            i += row


@numba.njit(**JIT)
def _dense(a):
    """Whether a 2-D float32 array's rows are contiguous and back to back (the tiles index it by address)."""
    return a.strides[1] == 4 and (a.shape[0] <= 1 or a.strides[0] == 4 * a.shape[1])


# The two loops over tiles below run as cfuncs, called from compiled code as external functions: Numba
# links a jitted callee's code into its caller's module and optimises that module again, at every level of
# the call chain (conv_pool -> conv -> here), which multiplied the cold compile time of the tiles' unrolled
# IR; an external function compiles once. They are compiled (or loaded from the cache) by `ready`, which
# conv.py calls before it runs a kernel that may call them, not at import: most models never do.
_DIRECT_SIG = types.void(*(types.int64,) * 20)


def _direct_c(x_addr, s_, hp, wp, c_, k_addr, k, bias_addr, use_bias, relu, kh, kw, sh, sw, dh, dw, o_addr, ho, wo,
              f):
    """out (S, Ho, Wo, F) at o_addr = the convolution of the padded samples (S, Hp, Wp, C) at x_addr by the
    kernel (K = kh*kw*C, F) at k_addr (C-contiguous), plus the bias (F,) at bias_addr if use_bias, then
    max(., 0) if relu."""
    toff = _tap_offsets(kh, kw, dh, dw, wp, c_)
    sizes, wide_sizes = np.array(FORWARD_ROWS), np.array(WIDE_ROWS)
    cs = sw * c_
    for s in range(s_):
        for oh in range(ho):
            x_row = x_addr + 4 * ((s * hp + oh * sh) * wp * c_)
            o_row = o_addr + 4 * ((s * ho + oh) * wo * f)
            j = 0
            while j < f:
                wide = WIDE > 0 and f - j >= WIDE
                cols = WIDE if wide else min(STRIP, f - j)
                ow = 0
                while ow < wo:
                    i = _pick(wide_sizes if wide else sizes, wo - ow)
                    args = (x_row + 4 * ow * cs, cs, toff.ctypes.data, k, k_addr + 4 * j, f, bias_addr + 4 * j,
                            use_bias != 0, relu != 0, o_row + 4 * (ow * f + j), f, cols)
                    if wide:
                        _wide_strip(i, cs, args)
                        ow += wide_sizes[i]
                    else:
                        _forward_strip(i, cols == STRIP, cs, args)
                        ow += sizes[i]
                j += cols


_direct = types.ExternalFunction("specc_conv_direct", _DIRECT_SIG)


@numba.njit(**JIT)
def forward_rows(x, kernel, bias, use_bias, relu, g, n0, n1, ho, wo, scratch, o):
    """conv._forward_rows on the tiles, when they take it (True): few enough filters and room in scratch
    for the chunk's padded samples; else False, nothing done. kernel, bias and o C-contiguous float32."""
    kh, kw, sh, sw, dh, dw, ph, pw = g
    c_ = x.shape[3]
    f = kernel.shape[1]
    hp = (ho - 1) * sh + (kh - 1) * dh + 1
    wp = (wo - 1) * sw + (kw - 1) * dw + 1
    if f > (MAX_FILTERS if sh == sw == 1 else STRIP) or (n1 - n0) * hp * wp * c_ > scratch.size:
        return False
    if not (_dense(kernel) and _dense(o) and (not use_bias or bias.strides[0] == 4)):
        return False
    _pad_samples(x, n0, n1, ph, pw, hp, wp, scratch)
    _direct(scratch.ctypes.data, n1 - n0, hp, wp, c_, kernel.ctypes.data, kernel.shape[0], bias.ctypes.data,
            int(use_bias), int(relu), kh, kw, sh, sw, dh, dw, o.ctypes.data, ho, wo, f)
    return True


def _kernel_gradient_c(x_addr, s_, hp, wp, c_, d_addr, hq, wq, qh, qw, f, kh, kw, sh, sw, dh, dw, ho, wo,
                       dk_addr):
    """dk (kh*kw*C, F) at dk_addr += the kernel gradient of the padded samples (S, Hp, Wp, C) at x_addr
    whose outputs' gradients are d[s, qh:qh + Ho, qw:qw + Wo] of (S, Hq, Wq, F) at d_addr."""
    sizes = np.array(GRAD_TAPS)
    # Without dilation along the width, a kernel row's kw*C taps are consecutive in x, as its kernel rows
    # are in dk: tiles then run along the whole kernel row (a 3-channel first layer's 9 taps in 8 + 1).
    run = kw if dw == 1 else 1
    for s in range(s_):
        x_s = x_addr + 4 * (s * hp * wp * c_)
        d_s = d_addr + 4 * (((s * hq + qh) * wq + qw) * f)
        for j in range(0, f, STRIP):
            cols = min(STRIP, f - j)
            for i in range(kh):
                for jj in range(0, kw, run):
                    tap = (i * dh * wp + jj * dw) * c_
                    q = 0
                    while q < run * c_:
                        z = _pick(sizes, run * c_ - q)
                        row = (i * kw + jj) * c_ + q
                        args = (x_s + 4 * (tap + q), sh * wp * c_, sw * c_, d_s + 4 * j, wq * f, f, ho, wo,
                                dk_addr + 4 * (row * f + j), f, cols)
                        _grad_strip(z, cols == STRIP, args)
                        q += sizes[z]


_kernel_gradient = types.ExternalFunction("specc_conv_kernel_gradient", _DIRECT_SIG)


@functools.cache
def ready() -> tuple:
    """Compiles (or loads from the cache) _direct_c and _kernel_gradient_c, and gives compiled code their
    addresses: before anything calling _direct or _kernel_gradient compiles or loads. The cfuncs, kept."""
    compiled = []
    for name, function in (("specc_conv_direct", _direct_c), ("specc_conv_kernel_gradient", _kernel_gradient_c)):
        cfunc = numba.cfunc(_DIRECT_SIG, **JIT)(function)
        llvmlite.binding.add_symbol(name, cfunc.address)
        compiled.append(cfunc)
    return tuple(compiled)


def backward_room(x_shape, k, f, g, ho, wo, s_, need_dk, need_dx):
    """The scratch (elements) backward_rows needs for s_ samples of x (N, H, W, C) and a kernel (K, F), or
    -1 where its geometry does not take the layer (the input gradient is for stride 1 only). Plain Python:
    conv.py asks it once per layer (to compile only the path that runs), backward_rows compiled."""
    kh, kw, sh, sw, dh, dw, ph, pw = g
    _, h_, w_, c_ = x_shape
    hp = (ho - 1) * sh + (kh - 1) * dh + 1
    wp = (wo - 1) * sw + (kw - 1) * dw + 1
    qh, qw = (kh - 1) * dh - ph, (kw - 1) * dw - pw
    hq, wq = h_ + (kh - 1) * dh, w_ + (kw - 1) * dw
    if need_dx and (sh != 1 or sw != 1 or qh < 0 or qw < 0 or qh + ho > hq or qw + wo > wq):
        return -1
    x_size = s_ * hp * wp * c_ if need_dk else 0
    d_size = s_ * hq * wq * f if need_dx else 0
    k_size = k * f if need_dx else 0
    return x_size + d_size + k_size


_backward_room = numba.njit(**JIT)(backward_room)


@numba.njit(**JIT)
def backward_rows(x, kernel, d, need_dk, need_dx, g, n0, n1, ho, wo, t, scratch, dk_parts, dx):
    """conv._backward_rows's kernel and input gradients on the tiles, when they take it (True): stride 1
    when need_dx, and room in scratch (backward_room); else False, nothing done. d (rows, F) C-contiguous
    float32.

    The input gradient is the direct convolution of d padded by (kh - 1) dh - pad_top (and left) with
    the kernel flipped and its channel axes swapped; the kernel gradient reads x padded as forward."""
    kh, kw, sh, sw, dh, dw, ph, pw = g
    n_, h_, w_, c_ = x.shape
    k, f = kernel.shape
    s_ = n1 - n0
    hp = (ho - 1) * sh + (kh - 1) * dh + 1
    wp = (wo - 1) * sw + (kw - 1) * dw + 1
    qh, qw = (kh - 1) * dh - ph, (kw - 1) * dw - pw
    hq, wq = h_ + (kh - 1) * dh, w_ + (kw - 1) * dw
    room = _backward_room(x.shape, k, f, g, ho, wo, s_, need_dk, need_dx)
    if room < 0 or room > scratch.size:
        return False
    if not (_dense(kernel) and _dense(d)):
        return False
    if need_dx and not (dx.strides[3] == 4 and dx.strides[2] == 4 * c_ and dx.strides[1] == 4 * c_ * w_
                        and (n_ <= 1 or dx.strides[0] == 4 * c_ * w_ * h_)):
        return False
    x_size = s_ * hp * wp * c_ if need_dk else 0
    d_size = s_ * hq * wq * f if need_dx else 0
    k_size = k * f if need_dx else 0
    xp = scratch[:x_size]
    dp = scratch[x_size : x_size + d_size]
    if need_dx:
        _pad_rows(d, s_, ho, wo, qh, qw, hq, wq, dp)
        d_addr = dp.ctypes.data
    else:
        qh, qw, hq, wq = 0, 0, ho, wo
        d_addr = d.ctypes.data
    if need_dk:
        dk = dk_parts[t]
        dk[:] = 0
        _pad_samples(x, n0, n1, ph, pw, hp, wp, xp)
        _kernel_gradient(xp.ctypes.data, s_, hp, wp, c_, d_addr, hq, wq, qh, qw, f, kh, kw, sh, sw, dh, dw, ho, wo,
                         dk.ctypes.data)
    if need_dx:
        kernel_t = scratch[x_size + d_size : x_size + d_size + k_size].reshape(kh * kw * f, c_)
        for i in range(kh):
            for j in range(kw):
                src = ((kh - 1 - i) * kw + (kw - 1 - j)) * c_
                dst = (i * kw + j) * f
                for q in range(c_):
                    for p in range(f):
                        kernel_t[dst + p, q] = kernel[src + q, p]
        _direct(dp.ctypes.data, s_, hq, wq, f, kernel_t.ctypes.data, kh * kw * f, kernel_t.ctypes.data, 0, 0, kh, kw,
                1, 1, dh, dw, dx[n0:n1].ctypes.data, h_, w_, c_)
    return True
