"""The float32 LSTM step with the default gates (sigmoid, tanh) as register tiles on AVX-512 or AVX2 vectors
written as LLVM IR, on sgemm.py's emitter and for the same ISA.

Why. Per timestep the portable loop multiplies h_{t-1} (N, u) by the recurrent kernel (u, 4u) with sgemm,
stores the (N, 4u) pre-activations, then runs the gate maths per sample in loops LLVM vectorises to
256 bits (it prefers them on AVX-512 CPUs) through float64 bit tricks. Here one tile holds, for `rows`
samples and one vector of LANES units j, the four gates' pre-activations i, f, g, o (columns j, u + j,
2u + j, 3u + j) in 4 x rows accumulators; after the k loop over the u state values the gates, the cell c,
tanh(c) and h are computed while the tile is still in registers, in full-width vectors, and stored once.

The gates' arithmetic is that of recurrent._sigmoid32 / _tanh32 (exp from 2^k and a degree-7 series of
expm1 of the remainder), with 2^k built from int32 bits. Each sample's values depend on its own row only
(its products summed over k in order), so any split of the batch between threads gives the same numbers.
"""

from __future__ import annotations

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

from .. import JIT
from .sgemm import _F32, _I32, ISA, LANES, _declare, _Emitter

# Samples per tile by ISA: 4 x rows accumulators + 4 kernel vectors + 1 broadcast within the vector registers
# (6 x 4 + 4 + 1 of AVX-512's 32, 2 x 4 + 4 + 1 of AVX2's 16); smaller tiles for the last rows.
ROWS = {"avx512": (6, 4, 2, 1), "avx2": (2, 1)}[ISA]
_V = ir.VectorType(_F32, LANES)
_VI32 = ir.VectorType(_I32, LANES)
_L2E, _HI, _LO = 1.4426950408889634, 0.693145751953125, 1.4286068203094172e-06
_SERIES = (1 / 2, 1 / 6, 1 / 24, 1 / 120, 1 / 720, 1 / 5040)  # expm1(r) = r (1 + r (1/2 + r (1/6 + ...)))
_SIG_MAX, _TANH_MAX = 87.34, 9.5  # as recurrent._SIG_MAX32 / _TANH_MAX32


class _Gates:
    """IR for sigmoid and tanh of float32 vectors (recurrent._sigmoid32 / _tanh32, lane by lane)."""

    def __init__(self, builder):
        self.b = builder
        m = builder.module
        f = f"v{LANES}f32"
        unary = ir.FunctionType(_V, [_V])
        self.fabs = _declare(m, f"llvm.fabs.{f}", unary)
        self.floor = _declare(m, f"llvm.floor.{f}", unary)
        self.copysign = _declare(m, f"llvm.copysign.{f}", ir.FunctionType(_V, [_V, _V]))

    def c(self, value):
        return ir.Constant(_V, [float(np.float32(value))] * LANES)

    def _min(self, x, bound):
        b = self.b
        return b.select(b.fcmp_ordered("<", x, bound), x, bound)

    def _exp_parts(self, y):
        """(s, m) with exp(y) = s (1 + m), s = 2^k, m = expm1(r), for y in [-190, 0]."""
        b = self.b
        kf = b.call(self.floor, [b.fadd(b.fmul(y, self.c(_L2E)), self.c(0.5))])
        r = b.fsub(b.fsub(y, b.fmul(kf, self.c(_HI))), b.fmul(kf, self.c(_LO)))
        p = self.c(_SERIES[-1])
        for coefficient in _SERIES[-2::-1]:
            p = b.fadd(self.c(coefficient), b.fmul(r, p))
        m = b.fmul(r, b.fadd(self.c(1.0), b.fmul(r, p)))
        k = b.fptosi(kf, _VI32)
        bits = b.shl(b.add(k, ir.Constant(_VI32, [127] * LANES)), ir.Constant(_VI32, [23] * LANES))
        return b.bitcast(bits, _V), m

    def sigmoid(self, x):
        b = self.b
        s, m = self._exp_parts(b.fneg(self._min(b.call(self.fabs, [x]), self.c(_SIG_MAX))))
        e = b.fadd(s, b.fmul(s, m))
        numerator = b.select(b.fcmp_ordered(">=", x, self.c(0.0)), self.c(1.0), e)
        return b.fdiv(numerator, b.fadd(self.c(1.0), e))

    def tanh(self, x):
        b = self.b
        a = self._min(b.call(self.fabs, [x]), self.c(_TANH_MAX))
        s, m = self._exp_parts(b.fmul(self.c(-2.0), a))
        em = b.fadd(b.fmul(s, m), b.fsub(s, self.c(1.0)))  # expm1(-2|x|)
        return b.call(self.copysign, [b.fdiv(b.fneg(em), b.fadd(self.c(2.0), em)), x])


def _lstm_tile(rows: int):
    """An intrinsic for `rows` samples x LANES units of one LSTM step, float32 arrays given by address
    (element offsets and strides):
        z_q[r, j] = xp[r*ldx + q*u + j] + sum_p h[r*ldh + p] * w[p*ldw + q*wg + j]   for gates q = i, f, g, o
        gates[r*ldg + q*u + j] = sigmoid(z_q) (tanh for g)
        c = f cp[r*ldu + j] + i g,  ac = tanh(c),  hout = o ac  (each at r*ldu + j)
    for r < rows, j < LANES; k is the number of state values summed over."""

    @intrinsic
    def tile(typingctx, h, ldh, w, ldw, wg, k, u, xp, ldx, gates, ldg, cp, c, ac, hout, ldu):
        sig = types.void(*(types.int64,) * 16)

        def codegen(context, builder, signature, args):
            h_, ldh_, w_, ldw_, wg_, k_, u_, xp_, ldx_, gates_, ldg_, cp_, c_, ac_, hout_, ldu_ = args
            e = _Emitter(builder, False, None)
            g = _Gates(builder)
            gate_at = [builder.mul(u_, e.const(q)) for q in range(4)]
            w_gate_at = [builder.mul(wg_, e.const(q)) for q in range(4)]

            def step(p, acc):
                w_row = builder.mul(p, ldw_)
                wv = [e.load(e.at(w_, builder.add(w_row, w_gate_at[q])), 0) for q in range(4)]
                out = []
                for r in range(rows):
                    hv = e.broadcast(h_, builder.add(builder.mul(ldh_, e.const(r)), p))
                    out.append([builder.call(e.fma, [hv, wv[q], acc[r][q]]) for q in range(4)])
                return out

            totals = e.loop(k_, [[e.zero] * 4 for _ in range(rows)], step)
            for r in range(rows):
                x_row, g_row, u_row = (builder.mul(ld, e.const(r)) for ld in (ldx_, ldg_, ldu_))
                z = [builder.fadd(totals[r][q], e.load(e.at(xp_, builder.add(x_row, gate_at[q])), 0)) for q in range(4)]
                i, f, cand, o = g.sigmoid(z[0]), g.sigmoid(z[1]), g.tanh(z[2]), g.sigmoid(z[3])
                for q, value in enumerate((i, f, cand, o)):
                    e.store(value, e.at(gates_, builder.add(g_row, gate_at[q])), 0)
                cell = builder.fadd(builder.fmul(f, e.load(e.at(cp_, u_row), 0)), builder.fmul(i, cand))
                act = g.tanh(cell)
                e.store(cell, e.at(c_, u_row), 0)
                e.store(act, e.at(ac_, u_row), 0)
                e.store(builder.fmul(o, act), e.at(hout_, u_row), 0)
            return context.get_dummy_value()

        return sig, codegen

    return tile


_TILES = tuple(_lstm_tile(rows) for rows in ROWS)
_T0 = _TILES[0]
_T1 = _TILES[1]
_T2 = _TILES[2] if len(_TILES) > 2 else _TILES[-1]
_T3 = _TILES[3] if len(_TILES) > 3 else _TILES[-1]
_R0, _R1, _R2 = ROWS[0], ROWS[1], ROWS[2] if len(ROWS) > 2 else 0


@numba.njit(**JIT)
def _rows_stride(a):
    """a's row stride in elements if its rows are contiguous float32 vectors, else -1."""
    if a.strides[1] != 4 or a.strides[0] % 4 != 0:
        return -1
    return a.strides[0] // 4


@numba.njit(**JIT)
def pack(w):
    """The recurrent kernel w (u, 4u) in the tiles' layout (u // LANES, u, 4, LANES): for each block of
    LANES units, every row's four gate vectors side by side, the block's panel contiguous. Read from w
    itself, a tile's loads are 4u apart: they fall on a few L1 sets, and its panel never stays in L1."""
    u = w.shape[0]
    out = np.empty((u // LANES, u, 4, LANES), w.dtype)
    for b in range(u // LANES):
        for p in range(u):
            for q in range(4):
                for lane in range(LANES):
                    out[b, p, q, lane] = w[p, q * u + b * LANES + lane]
    return out


@numba.njit(**JIT)
def lstm_step(h, wp, xp, cp, gates, c, ac, hout):
    """One float32 LSTM step with the default gates for the N samples of h (N, u) (the state entering it):
    gates (N, 4u), c, ac = tanh(c) and hout (N, u) from the recurrent kernel in pack's layout wp, the
    input projection xp (N, 4u) and the cell cp (N, u). True when done; False, and nothing done, when u is
    not a multiple of LANES, wp is not pack's for u, or a row is not contiguous (recurrent.lstm_forward then
    runs its own loops)."""
    n, u = h.shape
    if u % LANES != 0 or n == 0 or wp.shape[0] != u // LANES or wp.shape[1] != u or wp.shape[2] != 4 \
            or wp.shape[3] != LANES or not wp.flags.c_contiguous:
        return False
    ldh, ldx, ldg = _rows_stride(h), _rows_stride(xp), _rows_stride(gates)
    ldu = _rows_stride(c)
    if min(ldh, ldx, ldg, ldu) < 0 or _rows_stride(cp) != ldu or _rows_stride(ac) != ldu \
            or _rows_stride(hout) != ldu:
        return False
    ldw, wg, panel = 4 * LANES, LANES, u * 4 * LANES  # a row of a block's panel, a gate's vector, a panel
    ha, wa, xa, ga = h.ctypes.data, wp.ctypes.data, xp.ctypes.data, gates.ctypes.data
    cpa, ca, aca, hoa = cp.ctypes.data, c.ctypes.data, ac.ctypes.data, hout.ctypes.data
    i = 0
    while i < n:
        rows = _R0 if i + _R0 <= n else _R1 if i + _R1 <= n else _R2 if _R2 and i + _R2 <= n else 1
        for j in range(0, u, LANES):
            args = (ha + 4 * i * ldh, ldh, wa + 4 * (j // LANES) * panel, ldw, wg, u, u, xa + 4 * (i * ldx + j), ldx,
                    ga + 4 * (i * ldg + j), ldg, cpa + 4 * (i * ldu + j), ca + 4 * (i * ldu + j),
                    aca + 4 * (i * ldu + j), hoa + 4 * (i * ldu + j), ldu)
            if rows == _R0:
                _T0(*args)
            elif rows == _R1:
                _T1(*args)
            elif rows == _R2:
                _T2(*args)
            else:
                _T3(*args)
        i += rows
    return True
