"""A convolution followed by 2 x 2 max pooling, computed window by window on AVX-512 vectors written as
LLVM IR (as sgemm.py's micro-kernel), for float32 and convolutions without padding.

Why. conv_pool.py's chunked path lays out im2col windows, multiplies them by the kernel and pools the
product from a scratch; on the benchmark CNN's first layer (28x28x1 -> 32, a 3 x 3 kernel: K = 9 taps)
each of those passes costs as much as the multiply-adds themselves, and the products have k = 9. Here
the windows are never laid out and the convolution's output never leaves the registers:

- forward (`_forward_tile`): three pooling windows at a time, 12 convolution outputs x 32 filters in 24
  vector registers. Per tap, one 32-wide row of the kernel and 12 broadcasts of x, read in place through
  a table of the taps' offsets in x; then bias, ReLU and the 2 x 2 maximum with its winner's index, and
  only the pooled values and indexes are stored.
- backward (`_grad_tile`): the kernel gradient, a row of taps x 32 filters held in registers while one
  row of pooling windows streams through: each window's pooled gradient goes through the ReLU and to its
  winner (a compare and select per output, in registers), and is multiplied by the winner's taps of x.
  The bias gradient rides along.

Each convolution output is the same chain of FMAs as sgemm's (taps in the same order, from zero, then the
bias), so the forward results are bit-for-bit those of conv_pool's chunked path and of the two layers run
apart; the kernel gradient sums the same products in another order.
"""

from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.extending import intrinsic

from .sgemm import _F32, _I32, _I64, _MASK, _V, _VP, LANES, NR, _declare

_I8 = ir.IntType(8)
_VI = ir.VectorType(_I8, LANES)  # 16 winner codes
_VIP = _VI.as_pointer()
WINDOWS = 3  # pooling windows per forward tile: 3 x 4 outputs x 2 vectors = 24 accumulators
PIXELS = 4  # convolution outputs per 2 x 2 window, in scan order: (0, 0), (0, 1), (1, 0), (1, 1)
GRAD_ROWS = (9, 4, 1)
BLOCKED = 4  # the winner code of a window whose gradient the ReLU stops
_LOWEST = -3.4028234663852886e38  # the lowest float32  # taps per backward tile (a 3 x 3 kernel on one channel is 9): 2 x 9 accumulators


class _Emitter:
    """IR helpers shared by the tiles: address arithmetic on float32/int32 addresses given as int64,
    masked or plain 16-lane loads and stores (masked: lanes j < cols of a 32-column strip)."""

    def __init__(self, builder, masked, cols):
        self.b = builder
        module = builder.module
        self.fma = _declare(module, "llvm.fma.v16f32", ir.FunctionType(_V, [_V, _V, _V]))
        self.load_masked = _declare(module, "llvm.masked.load.v16f32.p0", ir.FunctionType(_V, [_VP, _I32, _MASK, _V]))
        self.store_masked = _declare(module, "llvm.masked.store.v16f32.p0",
                                     ir.FunctionType(ir.VoidType(), [_V, _VP, _I32, _MASK]))
        self.load_masked_i = _declare(module, "llvm.masked.load.v16i8.p0",
                                      ir.FunctionType(_VI, [_VIP, _I32, _MASK, _VI]))
        self.store_masked_i = _declare(module, "llvm.masked.store.v16i8.p0",
                                       ir.FunctionType(ir.VoidType(), [_VI, _VIP, _I32, _MASK]))
        self.zero = ir.Constant(_V, [0.0] * LANES)
        self.zero_i = ir.Constant(_VI, [0] * LANES)
        self.masks = None
        if masked:
            columns = self.splat(cols, ir.VectorType(_I64, LANES))
            self.masks = [builder.icmp_signed("<", ir.Constant(ir.VectorType(_I64, LANES),
                                                               list(range(LANES * v, LANES * (v + 1)))), columns)
                          for v in range(NR // LANES)]

    def const(self, v):
        return ir.Constant(_I64, v)

    def splat(self, value, vector_type):
        b = self.b
        v = b.insert_element(ir.Constant(vector_type, ir.Undefined), value, ir.Constant(_I32, 0))
        return b.shuffle_vector(v, v, ir.Constant(ir.VectorType(_I32, LANES), [0] * LANES))

    def at(self, address, elements, element_type=_F32):
        """Pointer to element `elements` (an i64 value) of the array at `address` (an i64 byte address)."""
        base = self.b.inttoptr(address, element_type.as_pointer())
        return self.b.gep(base, [elements])

    def load(self, ptr, v, codes=False):
        """16 floats (or, with codes, 16 int8 winner codes) at ptr, lanes past cols read as 0."""
        b = self.b
        ptr = b.bitcast(ptr, _VIP if codes else _VP)
        align = 1 if codes else 4
        if self.masks is not None:
            fn, fill = (self.load_masked_i, self.zero_i) if codes else (self.load_masked, self.zero)
            return b.call(fn, [ptr, ir.Constant(_I32, align), self.masks[v], fill])
        return b.load(ptr, align=align)

    def store(self, value, ptr, v, codes=False):
        b = self.b
        ptr = b.bitcast(ptr, _VIP if codes else _VP)
        align = 1 if codes else 4
        if self.masks is not None:
            b.call(self.store_masked_i if codes else self.store_masked, [value, ptr, ir.Constant(_I32, align), self.masks[v]])
        else:
            b.store(value, ptr, align=align)

    def broadcast(self, address, elements):
        return self.splat(self.b.load(self.at(address, elements), align=4), _V)

    def loop(self, count, state, body):
        """A counted loop for i in 0..count-1 whose `state` (list of lists of vectors) lives in phi nodes;
        body(i, state) returns the next state. Returns the final state."""
        b = self.b
        entry = b.block
        head = b.append_basic_block("loop")
        done = b.append_basic_block("loop.done")
        b.cbranch(b.icmp_signed(">", count, self.const(0)), head, done)
        b.position_at_end(head)
        i = b.phi(_I64)
        i.add_incoming(self.const(0), entry)
        phis = [[b.phi(v.type) for v in row] for row in state]
        for row, values in zip(phis, state):
            for phi, value in zip(row, values):
                phi.add_incoming(value, entry)
        new = body(i, phis)
        i_next = b.add(i, self.const(1))
        end = b.block
        i.add_incoming(i_next, end)
        for row, values in zip(phis, new):
            for phi, value in zip(row, values):
                phi.add_incoming(value, end)
        b.cbranch(b.icmp_signed("<", i_next, count), head, done)
        b.position_at_end(done)
        out = [[b.phi(v.type) for v in row] for row in state]
        for row, before, after in zip(out, state, new):
            for phi, v0, v1 in zip(row, before, after):
                phi.add_incoming(v0, entry)
                phi.add_incoming(v1, end)
        return out


def _forward_tile(masked: bool):
    """An intrinsic for three 2 x 2 pooling windows over one 32-filter strip, arrays given by address:
        z[w, q, j]  = sum_p x[x_w + pix_q + toff[p]] * b[p*ldb + j]  (+ bias[j]), then max(0, .) if relu
        out_w[j]    = max_q z[w, q, j]
        code_w[j]   = the first q reaching it (int8), or BLOCKED where relu and out_w[j] is not > 0
    for windows w < 3, outputs q < 4 of each window at pixel offsets pix = (0, cs, rs, rs + cs), filters
    j < 32 (masked: j < cols). Offsets and strides count elements; toff is an int64 table of k taps."""

    @intrinsic
    def tile(typingctx, x0, x1, x2, cs, rs, toff, k, b, ldb, bias, use_bias, relu, o0, o1, o2, c0, c1, c2, cols):
        i64, boolean = types.int64, types.boolean
        sig = types.void(*(i64,) * 10, boolean, boolean, *(i64,) * 7)

        def codegen(context, builder, signature, args):
            (x0_, x1_, x2_, cs_, rs_, toff_, k_, b_, ldb_, bias_, use_bias_, relu_, o0_, o1_, o2_, c0_, c1_, c2_,
             cols_) = args
            e = _Emitter(builder, masked, cols_)
            vectors = NR // LANES
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

            before = builder.block
            with builder.if_then(use_bias_):
                loaded = [e.load(e.at(bias_, e.const(LANES * v)), v) for v in range(vectors)]
                bias_end = builder.block
            bias_v = []
            for v in range(vectors):
                phi = builder.phi(_V)
                phi.add_incoming(loaded[v], bias_end)
                phi.add_incoming(e.zero, before)
                bias_v.append(phi)
            # The ReLU as max(z, floor) with floor 0, or the lowest float for no ReLU: a compare and a blend
            # (select(relu, ...) per value became a branch per value). NaN stays NaN, as in sgemm's epilogue.
            floor = e.splat(builder.select(relu_, ir.Constant(_F32, 0.0), ir.Constant(_F32, _LOWEST)), _V)
            code_of = [ir.Constant(_VI, [q] * LANES) for q in range(PIXELS)]
            blocked = ir.Constant(_VI, [BLOCKED] * LANES)
            for w in range(WINDOWS):
                for v in range(vectors):
                    best, code = None, None
                    for q in range(PIXELS):
                        z = builder.fadd(totals[w * PIXELS + q][v], bias_v[v])
                        z = builder.select(builder.fcmp_ordered("<", z, floor), floor, z)
                        if best is None:
                            best, code = z, code_of[q]
                        else:  # the first maximum in scan order wins, as in pooling._max_forward
                            better = builder.fcmp_ordered(">", z, best)
                            best = builder.select(better, z, best)
                            code = builder.select(better, code_of[q], code)
                    # No gradient passes a ReLU whose output is not > 0 (0, or NaN): marked here, so backward
                    # needs no copy of the output.
                    code = builder.select(relu_, builder.select(builder.fcmp_ordered(">", best, e.zero), code, blocked),
                                          code)
                    e.store(best, e.at(outs[w], e.const(LANES * v)), v)
                    e.store(code, e.at(codes[w], e.const(LANES * v), _I8), v, codes=True)
            return context.get_dummy_value()

        return sig, codegen

    return tile


def _grad_tile(rows: int, masked: bool):
    """An intrinsic for `rows` taps x one 32-filter strip of the kernel gradient over one row of n pooling
    windows, arrays given by address:
        dz[w, q, j]    = dp[w*ldw + j] if code[w*ldw + j] == q else 0
        dk[r*ldk + j] += sum_{w, q} x[x0 + w*wstep + pix_q + toff[r]] * dz[w, q, j]
        db[j]         += sum_w dp[w*ldw + j] where code[w*ldw + j] != BLOCKED   (with_db)
    for r < rows, j < 32 (masked: j < cols), pixel offsets pix = (0, cs, rs, rs + cs)."""

    @intrinsic
    def tile(typingctx, x0, wstep, cs, rs, toff, dp, code, ldw, n, dk, ldk, db, with_db, cols):
        i64, boolean = types.int64, types.boolean
        sig = types.void(*(i64,) * 12, boolean, i64)

        def codegen(context, builder, signature, args):
            x0_, wstep_, cs_, rs_, toff_, dp_, code_, ldw_, n_, dk_, ldk_, db_, with_db_, cols_ = args
            e = _Emitter(builder, masked, cols_)
            vectors = NR // LANES
            pix = (e.const(0), cs_, rs_, builder.add(rs_, cs_))
            taps = [builder.load(e.at(toff_, e.const(r), _I64), align=8) for r in range(rows)]
            dk_ptr = [[e.at(dk_, builder.add(builder.mul(ldk_, e.const(r)), e.const(LANES * v))) for v in range(vectors)]
                      for r in range(rows)]
            acc0 = [[e.load(dk_ptr[r][v], v) for v in range(vectors)] for r in range(rows)]
            db_ptr = [e.at(db_, e.const(LANES * v)) for v in range(vectors)]
            acc0.append([e.zero] * vectors)  # the bias gradient's partial sums
            blocked = ir.Constant(_VI, [BLOCKED] * LANES)

            def window(w, acc):
                row = builder.mul(w, ldw_)
                d, codes = [], []
                for v in range(vectors):
                    at = builder.add(row, e.const(LANES * v))
                    d.append(e.load(e.at(dp_, at), v))
                    codes.append(e.load(e.at(code_, at, _I8), v, codes=True))
                x_w = builder.add(x0_, builder.mul(w, builder.mul(wstep_, e.const(4))))  # byte address
                new = [list(r) for r in acc]
                for q in range(PIXELS):
                    here = ir.Constant(_VI, [q] * LANES)
                    dz = [builder.select(builder.icmp_signed("==", codes[v], here), d[v], e.zero) for v in range(vectors)]
                    for r in range(rows):
                        xv = e.broadcast(x_w, builder.add(taps[r], pix[q]))
                        new[r] = [builder.call(e.fma, [xv, dz[v], new[r][v]]) for v in range(vectors)]
                passed = [builder.select(builder.icmp_signed("==", codes[v], blocked), e.zero, d[v]) for v in range(vectors)]
                new[rows] = [builder.fadd(acc[rows][v], passed[v]) for v in range(vectors)]
                return new

            totals = e.loop(n_, acc0, window)
            for r in range(rows):
                for v in range(vectors):
                    e.store(totals[r][v], dk_ptr[r][v], v)
            with builder.if_then(with_db_):
                for v in range(vectors):
                    e.store(builder.fadd(e.load(db_ptr[v], v), totals[rows][v]), db_ptr[v], v)
            return context.get_dummy_value()

        return sig, codegen

    return tile


# Instantiated once each (every variant costs compile time): full and masked strips; 9-, 4- and 1-tap
# gradient tiles, which cover any number of taps (a 3 x 3 x 3 kernel is 9 + 9 + 9).
forward_full, forward_masked = _forward_tile(False), _forward_tile(True)
grad9, grad4, grad1 = (_grad_tile(r, False) for r in GRAD_ROWS)
grad9_masked, grad4_masked, grad1_masked = (_grad_tile(r, True) for r in GRAD_ROWS)
