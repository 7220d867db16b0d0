"""float32 matrix products on AVX-512 or AVX2 vectors written as LLVM IR: out (m, n) (+)= a (m, k) @ b (k, n),
with an optional bias and ReLU applied while the tile is in registers.

Why not BLAS. On AVX-512 the micro-kernel below runs the benchmark MLP's large products faster than
NumPy's OpenBLAS and close to PyTorch's MKL; on AVX2 it runs level with OpenBLAS's Haswell kernels
(bench/gemm.py; figures in bench/results/gemm-*.json and HISTORY.md). Either way its epilogue saves Dense
a pass over the output for the bias and ReLU.

Why LLVM IR. The micro-kernel keeps an MR x NR tile of `out` in vector registers while it walks k (14 x 32
in 28 of AVX-512's 32 registers, 6 x 16 in 12 of AVX2's 16): per step it loads one NR-wide row of b (two
vectors), broadcasts each of the MR values of a's column and issues 2 MR FMAs. Numba has no vector type,
and LLVM builds the tile neither from scalar accumulators (SLP does not vectorise them) nor from a tile
kept in memory (too many run-time alias checks), so `_micro_kernel` emits the loop itself through a Numba
intrinsic. One generator emits both ISAs' tiles (`_TILES` holds their shapes), and one set of drivers
runs them; only the variant for the CPU Numba compiles for is built (native/__init__.py chooses). The
drivers are compiled once as a C callable (`_range_c`), which kernels call by symbol name.

Layouts. out must be contiguous along n; b contiguous along n (its rows are vector loads) or along k (a
transposed view such as Dense's W.T, transposed into the first layout a panel or a strip at a time); a may
have any strides: its values are broadcast one at a time, so `x.T` (Dense's weight gradient) needs no
copy. `supports` says whether a product qualifies; gemm.affine sends the others to BLAS. Arrays should
start on a 64-byte boundary (workspace.aligned_empty): a 512-bit load across two cache lines is slower.

Blocking. The drivers walk row blocks of MR outer and NR-column strips of b inner, so a's MR rows
(MR x k floats) stay in L1/L2 while b streams from L2: b is taken in panels of columns that fit in half
of the L2 the OS reports for this CPU (`panel_bytes`; the ISA's usual L2 where it reports none), and in
slices of KC rows when k is very large. The panel size is read at run time, not compiled in: the same
AVX2 code runs on a Haswell's 256 KB L2 and on a Xeon's 2 MB, where Dense's 784 x 256 weights fit whole
and a's rows then pass through the tile once instead of once per panel. Edges: the last strip loads
and stores through lane masks, the last < MR rows run 4-, 2- and 1-row kernels. Threads (`product`)
split the rows, or the columns when those share out clearly more evenly.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
from typing import NamedTuple

import llvmlite.binding
import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic, overload

from .. import JIT, load_scipy_blas
from . import vector_isa


class _Tile(NamedTuple):
    lanes: int  # float32 per vector
    rows: int  # rows of a per micro-kernel (MR)
    vectors: int  # vectors of b per row: NR = vectors x lanes
    panel_bytes: int  # b's panel, k x NC floats, where the OS reports no L2: half of the L2 of the CPUs the
    # ISA is found on
    offsets_in_registers: bool  # a's row offsets in general registers (`step_at`), else LLVM's addressing


# The register tile per vector ISA. Rows x vectors accumulators + the vectors of b + one broadcast fill
# the vector registers: 14 x 2 + 2 + 1 of AVX-512's 32, 6 x 2 + 2 + 1 of AVX2's 16 (6 x 2 rather than
# 4 x 3: bench/results/gemm-avx2-tile-choice.json). AVX2's six row offsets fit in general registers, read
# from one base per k step; AVX-512's fourteen do not (they would spill), and LLVM's own addressing stays.
# On AVX2 the tile also takes a transposed a (Dense's weight gradient x.T @ dz), although OpenBLAS's
# Haswell kernels run it a little faster: on BLAS, Dense's backward would switch between OpenBLAS's and
# Numba's thread pools inside each step, which on two threads costs more than it gains.
_TILES = {"avx512": _Tile(16, 14, 2, 1024 * 1024, False), "avx2": _Tile(8, 6, 2, 128 * 1024, True)}
# The ISA native/__init__.py loads this module for: the code Numba compiles runs on it. Only its tiles
# are compiled, and every constant below is the same for all code compiled for one CPU and feature set,
# which is what Numba keys its cache on.
ISA = vector_isa()
if ISA not in _TILES:
    raise ImportError("sgemm needs AVX-512, or AVX2 with FMA, on the CPU Numba compiles for")
LANES, MR, _VECTORS, DEFAULT_PANEL_BYTES, A_OFFSETS_IN_REGISTERS = _TILES[ISA]
NR = _VECTORS * LANES  # columns of b per micro-kernel
ROWS = (MR, 4, 2, 1)  # rows per block: MR, then 4, 2, 1 for the last few
KC = 1024  # rows of b per slice when k is larger (a's MR x KC block then stays in L2)
PARALLEL_MIN_FLOPS = 4_000_000  # below this a product runs on the calling thread: it takes about as long
# as waking Numba's workers

# The thread count for `matmul` (and the optimizers), read by compiled code at run time: a global our
# kernels load (registered with LLVM under our name, so the machine code caches and finds it on load).
# configure_threads sets it. (numba.get_num_threads() inside a kernel compiles to a pointer constant,
# which Numba cannot cache.)
_THREADS = ctypes.c_int64(1)
llvmlite.binding.add_symbol("specc_sgemm_threads", ctypes.addressof(_THREADS))


def set_threads(n: int) -> None:
    _THREADS.value = max(1, int(n))


def l2_bytes() -> int | None:
    """The size of one core's L2 cache as Linux reports it (sysfs), else None."""
    root = "/sys/devices/system/cpu/cpu0/cache"
    try:
        for entry in sorted(os.listdir(root)):
            with open(os.path.join(root, entry, "level")) as fh:
                if fh.read().strip() != "2":
                    continue
            with open(os.path.join(root, entry, "size")) as fh:
                size = fh.read().strip().upper()
            units = {"K": 1024, "M": 1024 * 1024}
            return int(size[:-1]) * units[size[-1]] if size[-1:] in units else int(size)
    except (OSError, ValueError):
        pass
    return None


# b's panel size in bytes, read by compiled code at run time like the thread count (a global registered
# with LLVM under our name): half of this CPU's L2, so the other half holds a's rows and out's tiles.
_PANEL_BYTES = ctypes.c_int64(DEFAULT_PANEL_BYTES)
llvmlite.binding.add_symbol("specc_sgemm_panel_bytes", ctypes.addressof(_PANEL_BYTES))


def set_panel_bytes(n: int | None = None) -> None:
    """b's panel size: n bytes, or (None) half of the L2 the OS reports, else the ISA's default."""
    if n is None:
        l2 = l2_bytes()
        n = l2 // 2 if l2 else DEFAULT_PANEL_BYTES
    _PANEL_BYTES.value = max(4 * NR, int(n))


set_panel_bytes()


@contextlib.contextmanager
def one_thread():
    """A context in which matmul and the optimizers run on the calling thread (a store to one integer)."""
    before = _THREADS.value
    _THREADS.value = 1
    try:
        yield
    finally:
        _THREADS.value = before


_F32 = ir.FloatType()
_I1, _I8, _I32, _I64 = ir.IntType(1), ir.IntType(8), ir.IntType(32), ir.IntType(64)
_V = ir.VectorType(_F32, LANES)
_VP = _V.as_pointer()
_MASK = ir.VectorType(_I1, LANES)
_VI = ir.VectorType(_I8, LANES)  # int8 lanes (conv_pool_tiles' winner codes)
_VIP = _VI.as_pointer()


def threads() -> int:
    """The thread count set_threads last set. Compiled code reads it at run time (the overload below);
    eager mode (kernels run as Python) reads it here."""
    return _THREADS.value


def _global_reader(symbol):
    """An intrinsic that loads the int64 global registered with LLVM as `symbol`."""

    @intrinsic
    def read(typingctx):
        def codegen(context, builder, signature, args):
            module = builder.module
            g = module.globals.get(symbol)
            if g is None:
                g = ir.GlobalVariable(module, _I64, symbol)
                g.linkage = "external"
            return builder.load(g)

        return types.int64(), codegen

    return read


_threads_now = _global_reader("specc_sgemm_threads")
_panel_bytes_now = _global_reader("specc_sgemm_panel_bytes")


@overload(threads, jit_options=JIT)
def _threads_njit():
    return lambda: _threads_now()


def _declare(module, name, fn_type):
    return module.globals.get(name) or ir.Function(module, fn_type, name=name)


class _Emitter:
    """IR helpers for micro-kernels on vectors of LANES float32 (this module's and conv_pool_tiles'):
    element pointers from int64 addresses, vector loads and stores of float32 (or of int8 codes), plain or
    masked to the lanes j < cols of an NR-column strip, broadcasts, and counted loops whose state lives in
    phi nodes (so it stays in registers)."""

    def __init__(self, builder, masked, cols):
        self.b = builder
        module = builder.module
        f, i = f"v{LANES}f32", f"v{LANES}i8"
        self.fma = _declare(module, f"llvm.fma.{f}", ir.FunctionType(_V, [_V, _V, _V]))
        self.load_masked = _declare(module, f"llvm.masked.load.{f}.p0", ir.FunctionType(_V, [_VP, _I32, _MASK, _V]))
        self.store_masked = _declare(module, f"llvm.masked.store.{f}.p0",
                                     ir.FunctionType(ir.VoidType(), [_V, _VP, _I32, _MASK]))
        self.load_masked_i = _declare(module, f"llvm.masked.load.{i}.p0",
                                      ir.FunctionType(_VI, [_VIP, _I32, _MASK, _VI]))
        self.store_masked_i = _declare(module, f"llvm.masked.store.{i}.p0",
                                       ir.FunctionType(ir.VoidType(), [_VI, _VIP, _I32, _MASK]))
        self.zero = ir.Constant(_V, [0.0] * LANES)
        self.zero_i = ir.Constant(_VI, [0] * LANES)
        self.masks = None
        if masked:
            # Lane j of vector v is live when LANES v + j < cols: the low min(max(cols - LANES v, 0), LANES)
            # bits of an integer, bitcast to a mask. (Not a vector compare of lane numbers with cols: LLVM
            # redoes those compares inside the k loop.)
            self.masks = []
            for v in range(NR // LANES):
                live = builder.sub(cols, self.const(LANES * v))
                live = builder.select(builder.icmp_signed("<", live, self.const(0)), self.const(0), live)
                live = builder.select(builder.icmp_signed(">", live, self.const(LANES)), self.const(LANES), live)
                bits = builder.sub(builder.shl(self.const(1), live), self.const(1))
                self.masks.append(builder.bitcast(builder.trunc(bits, ir.IntType(LANES)), _MASK))

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
        """LANES floats (or, with codes, LANES int8 winner codes) at ptr, lanes past cols read as 0."""
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

    def bias(self, address, use_bias, vectors):
        """`vectors` vectors of the bias at `address`, read only when use_bias (an empty array may come with
        use_bias false), else zeros."""
        b = self.b
        before = b.block
        with b.if_then(use_bias):
            loaded = [self.load(self.at(address, self.const(LANES * v)), v) for v in range(vectors)]
            end = b.block
        values = []
        for v in range(vectors):
            phi = b.phi(_V)
            phi.add_incoming(loaded[v], end)
            phi.add_incoming(self.zero, before)
            values.append(phi)
        return values

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


def _opaque(builder, value):
    """value (i64) through an empty inline asm: the same register, but LLVM can no longer tell how it was
    computed. Without it LLVM's loop strength reduction rebuilt a's row addresses from one another every
    k step (a chain of adds), which left AVX2's tile short of issue slots."""
    return builder.asm(ir.FunctionType(_I64, [_I64]), "", "=r,0", [value], False)


def _micro_kernel(rows: int, masked: bool):
    """An intrinsic for one tile, on float32 arrays given by address:
        out[r*ldo + j] = (out[r*ldo + j] if accumulate) + sum_p a[r*ars + p*acs] * b[p*ldb + j]
                         (+ bias[j] if use_bias), then max(0, .) if relu
    for r < rows, j < NR (masked: only j < cols).
    Arguments (a, ars, acs, b, ldb, out, ldo, k, cols, accumulate, bias, use_bias, relu); strides count
    elements. Addresses (int64), not arrays, so the drivers compile once whatever the callers' layouts."""

    @intrinsic
    def tile(typingctx, a, ars, acs, b, ldb, out, ldo, k, cols, accumulate, bias, use_bias, relu):
        i64, boolean = types.int64, types.boolean
        sig = types.void(i64, i64, i64, i64, i64, i64, i64, i64, i64, boolean, i64, boolean, boolean)

        def codegen(context, builder, signature, args):
            a_, ars_, acs_, b_, ldb_, out_, ldo_, k_, cols_, acc_, bias_, use_bias_, relu_ = args
            e = _Emitter(builder, masked, cols_)
            vectors = NR // LANES

            def step(p, acc):
                """One k step: acc[r][v] + a[r, p] * b[p, LANES v:LANES (v + 1)] for every r, v."""
                bv = [e.load(e.at(b_, builder.add(builder.mul(p, ldb_), e.const(LANES * v))), v) for v in range(vectors)]
                a_col = builder.mul(p, acs_)
                out = []
                for r in range(rows):
                    xv = e.broadcast(a_, builder.add(a_col, builder.mul(ars_, e.const(r))))
                    out.append([builder.call(e.fma, [xv, bv[v], acc[r][v]]) for v in range(vectors)])
                return out

            def step_at(p, state):
                """`step` with a's row offsets (bytes) in general registers and a's and b's addresses for k
                step p carried in state[0]."""
                (a_at, b_at), acc = state[0], state[1:]
                a_base = _opaque(builder, a_at)
                bv = [e.load(e.at(b_at, e.const(LANES * v)), v) for v in range(vectors)]
                out = [[builder.add(a_at, a_step), builder.add(b_at, b_step)]]
                for r in range(rows):
                    at = builder.inttoptr(builder.add(a_base, row_offsets[r]), _F32.as_pointer())
                    xv = e.splat(builder.load(at, align=4), _V)
                    out.append([builder.call(e.fma, [xv, bv[v], acc[r][v]]) for v in range(vectors)])
                return out

            # The k loop. The accumulators are phi nodes, so they stay in registers across iterations.
            # Not unrolled: unrolling gained nothing on either ISA and lengthens the compile.
            zeros = [[e.zero] * vectors for _ in range(rows)]
            if A_OFFSETS_IN_REGISTERS:
                row_offsets = [_opaque(builder, builder.mul(ars_, e.const(4 * r))) for r in range(rows)]
                a_step, b_step = builder.mul(acs_, e.const(4)), builder.mul(ldb_, e.const(4))
                totals = e.loop(k_, [[a_, b_]] + zeros, step_at)[1:]
            else:
                totals = e.loop(k_, zeros, step)

            # Epilogue: (+ out) (+ bias) (max 0). The flags are run-time values: selects cost nothing next to
            # the k loop.
            bias_v = e.bias(bias_, use_bias_, vectors)
            for r in range(rows):
                o_row = builder.mul(ldo_, e.const(r))
                for v in range(vectors):
                    ptr = e.at(out_, builder.add(o_row, e.const(LANES * v)))
                    value = builder.select(acc_, builder.fadd(totals[r][v], e.load(ptr, v)), totals[r][v])
                    value = builder.fadd(value, bias_v[v])
                    clipped = builder.select(builder.fcmp_ordered("<", value, e.zero), e.zero, value)  # NaN stays NaN
                    value = builder.select(relu_, clipped, value)
                    e.store(value, ptr, v)
            return context.get_dummy_value()

        return sig, codegen

    return tile


# Instantiated once each: an MR-row block and the 4-, 2- and 1-row blocks the last rows take, each for a
# full NR-column strip and for a narrower last strip (masked loads and stores). Few variants on purpose:
# each is a large function for LLVM, and the cold compile pays for every one.
_f_mr, _f4, _f2, _f1 = (_micro_kernel(rows, False) for rows in ROWS)
_m_mr, _m4, _m2, _m1 = (_micro_kernel(rows, True) for rows in ROWS)


load_scipy_blas()  # before the C callables below starts Numba's CPU target, which would import all of scipy.linalg
# Start Numba's thread pool before any cached kernel is loaded: machine code that links sgemm's (or the
# optimizers') parallel loops calls the pool's entry points, which Numba registers with LLVM only when it
# starts the pool; a kernel loaded from the cache before that called address 0. Until
# configure_threads says otherwise, sgemm uses as many threads as Numba (and BLAS) do by default.
set_threads(numba.get_num_threads())


@intrinsic
def _prefetch(typingctx, address):
    """Asks the CPU to bring the cache line at `address` (int64) into its L2 (llvm.prefetch: a read, locality
    2, which x86 issues as prefetcht1). Never faults, whatever the address."""
    def codegen(context, builder, signature, args):
        fn = _declare(builder.module, "llvm.prefetch.p0", ir.FunctionType(ir.VoidType(), [_I8.as_pointer(), _I32, _I32, _I32]))
        builder.call(fn, [builder.inttoptr(args[0], _I8.as_pointer()), ir.Constant(_I32, 0), ir.Constant(_I32, 2),
                          ir.Constant(_I32, 1)])
        return context.get_dummy_value()

    return types.void(types.int64), codegen


@numba.njit(**JIT)
def _block_rows(i, i1):
    """Rows of the next block from row i of i0:i1: MR, then 4, 2, 1 for the last few."""
    return MR if i + MR <= i1 else 4 if i + 4 <= i1 else 2 if i + 2 <= i1 else 1


# The tiles of a block of out as a C callable of its own, which the drivers call by symbol name: the
# eight micro-kernels are large functions for LLVM, and linked into each driver they were optimised again
# in every one, lengthening every cold start. One call covers rows i0:i1 of a panel: a call per tile is
# costly on products with a short k (Dense's input gradient, k = units).
_GRID_SIG = types.void(*(types.int64,) * 15)


@numba.cfunc(_GRID_SIG, **JIT)
def _grid_c(a, ars, acs, b, ldb, out, ldo, i0, i1, width, k, acc, bias, use_bias, relu):
    """out[i0:i1, :width] (+)= a[i0:i1, :k] @ b[:k, :width] (+ bias, ReLU): blocks of MR rows (then 4, 2,
    1), each over the NR-column strips of the panel (a's rows stay in L1 while b's strips stream from L2).
    Addresses in bytes, strides in elements; flags 0/1.
    While a block runs, its strips prefetch the next block's rows of a (when those are contiguous), a share
    per strip: a read from memory (Dense's input, a new batch each call) otherwise stalls the block's first
    strip, 6 or 14 short streams that the hardware prefetcher picks up late."""
    accumulate, with_bias, clip = acc != 0, use_bias != 0, relu != 0
    strips = (width + NR - 1) // NR
    row_lines = (4 * k + 63) // 64 + 1 if acs == 1 else 0  # cache lines a row of a may touch
    i = i0
    while i < i1:
        rows = _block_rows(i, i1)
        following = i + rows
        lines = min(MR, i1 - following) * row_lines
        for s in range(strips):
            j = s * NR
            cols = min(NR, width - j)
            first, end = lines * s // strips, lines * (s + 1) // strips
            if end > first:  # row r, line q of the next block (one division per strip, not per line)
                r, q = divmod(first, row_lines)
                for _ in range(end - first):
                    _prefetch(a + 4 * (following + r) * ars + 64 * q)
                    q += 1
                    if q == row_lines:
                        r, q = r + 1, 0
            args = (a + 4 * i * ars, ars, acs, b + 4 * j, ldb, out + 4 * (i * ldo + j), ldo, k, cols, accumulate,
                    bias + 4 * j, with_bias, clip)
            if cols == NR:
                if rows == MR:
                    _f_mr(*args)
                elif rows == 4:
                    _f4(*args)
                elif rows == 2:
                    _f2(*args)
                else:
                    _f1(*args)
            elif rows == MR:
                _m_mr(*args)
            elif rows == 4:
                _m4(*args)
            elif rows == 2:
                _m2(*args)
            else:
                _m1(*args)
        i += rows


llvmlite.binding.add_symbol("specc_sgemm_grid", _grid_c.address)
_grid_ext = types.ExternalFunction("specc_sgemm_grid", _GRID_SIG)


@intrinsic
def _copy_float(typingctx, dst, src):
    """*dst = *src for float32 addresses."""
    def codegen(context, builder, signature, args):
        fp = _F32.as_pointer()
        value = builder.load(builder.inttoptr(args[1], fp), align=4)
        builder.store(value, builder.inttoptr(args[0], fp), align=4)
        return context.get_dummy_value()

    return types.void(types.int64, types.int64), codegen


# Shuffle masks of an 8 x 8 float32 transpose in three rounds of two-source shuffles, which x86 lowers to
# unpcklps/unpckhps, shufps and vperm2f128: pairs of rows interleaved, then pairs of pairs, then 128-bit
# halves.
_INTERLEAVE = ((0, 8, 1, 9, 4, 12, 5, 13), (2, 10, 3, 11, 6, 14, 7, 15))
_PAIRS = ((0, 1, 8, 9, 4, 5, 12, 13), (2, 3, 10, 11, 6, 7, 14, 15))
_HALVES = ((0, 1, 2, 3, 8, 9, 10, 11), (4, 5, 6, 7, 12, 13, 14, 15))


@intrinsic
def _transpose8(typingctx, dst, ldd, src, lds):
    """dst[p*ldd + q] = src[q*lds + p] for p, q < 8: float32 addresses, strides in elements. Eight vector
    loads, 24 shuffles and eight stores, where element copies took ~1.7 cycles each."""
    def codegen(context, builder, signature, args):
        dst_, ldd_, src_, lds_ = args
        v8 = ir.VectorType(_F32, 8)
        four = ir.Constant(_I64, 4)

        def row(base, stride, r):
            address = builder.add(base, builder.mul(builder.mul(stride, ir.Constant(_I64, r)), four))
            return builder.inttoptr(address, v8.as_pointer())

        def shuffle(x, y, mask):
            return builder.shuffle_vector(x, y, ir.Constant(ir.VectorType(_I32, 8), list(mask)))

        rows = [builder.load(row(src_, lds_, q), align=4) for q in range(8)]
        # t[2i + h]: rows 2i and 2i + 1 interleaved (h: low or high pairs of each 128-bit half)
        t = [shuffle(rows[2 * i], rows[2 * i + 1], _INTERLEAVE[h]) for i in range(4) for h in range(2)]
        # u[4g + 2h + e]: from t of rows 4g..4g+3; column 2h + e in the low halves, 2h + e + 4 in the high
        u = [shuffle(t[4 * g + h], t[4 * g + 2 + h], _PAIRS[e])
             for g in range(2) for h in range(2) for e in range(2)]
        for c in range(4):  # column c from u[c] (rows 0-3) and u[4 + c] (rows 4-7), column c + 4 likewise
            for half in range(2):
                builder.store(shuffle(u[c], u[4 + c], _HALVES[half]), row(dst_, ldd_, c + 4 * half), align=4)
        return context.get_dummy_value()

    return types.void(types.int64, types.int64, types.int64, types.int64), codegen


@numba.njit(**JIT)
def _rows(a, ars, acs, b, ldb, out, ldo, n, k, i0, i1, accumulate, bias, use_bias, relu):
    """matmul_rows on addresses and element strides: rows i0:i1."""
    kc = max(1, min(k, KC))
    panel_bytes = _panel_bytes_now()
    panels = (n * kc * 4 + panel_bytes - 1) // panel_bytes  # equal panels of b, in whole strips
    nc = ((n + panels - 1) // panels + NR - 1) // NR * NR
    for j0 in range(0, n, nc):
        width = min(nc, n - j0)
        p0 = 0
        while True:  # k slices; with k = 0 one pass, which still writes the epilogue
            kk = min(KC, k - p0)
            last = p0 + kk >= k
            _grid_ext(a + 4 * p0 * acs, ars, acs, b + 4 * (p0 * ldb + j0), ldb, out + 4 * j0, ldo, i0, i1, width, kk,
                      int(accumulate or p0 > 0), bias + 4 * j0, int(use_bias and last), int(relu and last))
            p0 += kk
            if last:
                break


@numba.njit(**JIT)
def _pack(dst, ldd, src, lds, cols, kk):
    """dst[p*ldd + q] = src[q*lds + p] for p < kk, q < cols (float32 addresses, strides in elements): 8 x 8
    blocks in registers, the edges one element at a time."""
    whole_q, whole_p = cols - cols % 8, kk - kk % 8
    for q in range(0, whole_q, 8):
        for p in range(0, whole_p, 8):
            _transpose8(dst + 4 * (p * ldd + q), ldd, src + 4 * (q * lds + p), lds)
    for q in range(cols):
        for p in range(whole_p if q < whole_q else 0, kk):
            _copy_float(dst + 4 * (p * ldd + q), src + 4 * (q * lds + p))


# A transposed b (Dense's input gradient dz @ W.T, a convolution's d @ kernel.T) is packed into the layout
# _rows reads, one of two ways by the product's row count (never by a thread's share of the rows, so the
# sums are the same at any thread count):
# - panels (`_rows_bt_panels`): each of _rows's panels of b transposed into a heap buffer, then _rows's
#   loop, with _rows's sums. Per row of a the cheaper, once a has more rows than STRIP_ROWS: a strip at a
#   time, a's rows came from L2 or L3 again for every strip (1024 x 256 x 784: 20% slower than _rows).
# - strips (`_rows_bt_strips`): one NR-column strip of KC_STRIP rows at a time, into a stack buffer that
#   stays in L1 while every row block passes over it. A few rows (a convolution chunk's 64) do too
#   little work per element of b to pay for writing a panel of L2 (64 x 512 x 4608: 8% slower than _rows,
#   against 28% by panels).
STRIP_ROWS = 64
KC_STRIP = 256  # 256 x NR x 4 B: 32 KB on AVX-512, 16 KB on AVX2


@intrinsic
def _stack_strip(typingctx):
    """The address of a KC_STRIP x NR float32 buffer in the calling function's stack frame (allocated
    once, in its entry block)."""
    def codegen(context, builder, signature, args):
        buffer = cgutils.alloca_once(builder, _I8, size=ir.Constant(_I64, 4 * KC_STRIP * NR))
        buffer.align = 64
        return builder.ptrtoint(buffer, _I64)

    return types.int64(), codegen


@numba.njit(**JIT)
def _rows_bt_strips(a, ars, acs, b, ldb, out, ldo, n, k, i0, i1, accumulate, bias, use_bias, relu):
    """_rows for b stored transposed (b[p, j] at element j * ldb + p), a strip at a time in a stack buffer."""
    # hold: a fresh empty array (a global one is read-only, another type); kc and nc int64, not the
    # literals: _packed then compiles once for both packings
    _packed(np.empty(0, np.float32), _stack_strip(), a, ars, acs, b, ldb, out, ldo, n, k, i0, i1, accumulate, bias, use_bias,
            relu, np.int64(KC_STRIP), np.int64(NR))


@numba.njit(**JIT)
def _rows_bt_panels(a, ars, acs, b, ldb, out, ldo, n, k, i0, i1, accumulate, bias, use_bias, relu):
    """_rows for b stored transposed, a panel at a time (the panels and k slices _rows takes) in a heap
    buffer."""
    kc = max(1, min(k, KC))
    panel_bytes = _panel_bytes_now()
    panels = (n * kc * 4 + panel_bytes - 1) // panel_bytes
    nc = min(n, ((n + panels - 1) // panels + NR - 1) // NR * NR)
    panel = np.empty(kc * nc, np.float32)
    # int64: ctypes.data is unsigned, and unsigned + signed arithmetic is float64 in Numba
    _packed(panel, np.int64(panel.ctypes.data), a, ars, acs, b, ldb, out, ldo, n, k, i0, i1, accumulate, bias,
            use_bias, relu, kc, nc)


@numba.njit(**JIT)
def _packed(hold, at, a, ars, acs, b, ldb, out, ldo, n, k, i0, i1, accumulate, bias, use_bias, relu, kc, nc):
    """_rows for b stored transposed: each block of nc columns x kc rows of b transposed into the buffer at
    `at` (rows of the block's width), then the block's products. `hold` is the array the buffer belongs to,
    passed so that the caller holds it while its address is in use (an empty one for a stack buffer)."""
    for j0 in range(0, n, nc):
        width = min(nc, n - j0)
        p0 = 0
        while True:  # k slices; with k = 0 one pass, which still writes the epilogue
            kk = min(kc, k - p0)
            last = p0 + kk >= k
            _pack(at, width, b + 4 * (j0 * ldb + p0), ldb, width, kk)
            _grid_ext(a + 4 * p0 * acs, ars, acs, at, width, out + 4 * j0, ldo, i0, i1, width, kk,
                      int(accumulate or p0 > 0), bias + 4 * j0, int(use_bias and last), int(relu and last))
            p0 += kk
            if last:
                break


# The drivers are compiled once, as C callables, and kernels call them by symbol names registered with
# LLVM (like the BLAS functions in gemm.py). A plain njit call would link their IR, with the inlined
# micro-kernels (and the parallel loop's), into every caller, and Numba optimises each caller's linked
# module again: the benchmark CNN's cold start took 20 s instead of 14.
_RANGE_SIG = types.void(*(types.int64,) * 16)
_PARALLEL_SIG = types.void(*(types.int64,) * 17)


@numba.cfunc(_RANGE_SIG, **JIT)
def _range_c(a, ars, acs, b, ldb, bt, out, ldo, n, k, i0, i1, accumulate, bias, use_bias, relu):
    """Rows i0:i1 by _rows, or, b stored transposed, by _rows_bt_panels (bt = 1) or _rows_bt_strips (bt =
    2); flags are 0/1."""
    if bt == 2:
        _rows_bt_strips(a, ars, acs, b, ldb, out, ldo, n, k, i0, i1, accumulate != 0, bias, use_bias != 0,
                        relu != 0)
    elif bt:
        _rows_bt_panels(a, ars, acs, b, ldb, out, ldo, n, k, i0, i1, accumulate != 0, bias, use_bias != 0,
                        relu != 0)
    else:
        _rows(a, ars, acs, b, ldb, out, ldo, n, k, i0, i1, accumulate != 0, bias, use_bias != 0, relu != 0)


llvmlite.binding.add_symbol("specc_sgemm_range", _range_c.address)
_range_ext = types.ExternalFunction("specc_sgemm_range", _RANGE_SIG)


@numba.cfunc(_PARALLEL_SIG, parallel=True, **JIT)
def _range_parallel_c(a, ars, acs, b, ldb, bt, out, ldo, m, n, k, accumulate, bias, use_bias, relu, parts,
                      by_columns):
    """_range_c over `parts` threads, each on a contiguous range of MR-row blocks of out, or (by_columns)
    of its NR-column strips, which also gives each thread only its part of b."""
    blocks = (m + MR - 1) // MR
    strips = (n + NR - 1) // NR
    for t in numba.prange(parts):
        if by_columns:
            j0 = min(n, strips * t // parts * NR)
            j1 = min(n, strips * (t + 1) // parts * NR)
            _range_ext(a, ars, acs, b + 4 * j0 * (ldb if bt else 1), ldb, bt, out + 4 * j0, ldo, j1 - j0, k, 0, m,
                       accumulate, bias + 4 * j0, use_bias, relu)
        else:
            i0 = min(m, blocks * t // parts * MR)
            i1 = min(m, blocks * (t + 1) // parts * MR)
            _range_ext(a, ars, acs, b, ldb, bt, out, ldo, n, k, i0, i1, accumulate, bias, use_bias, relu)


llvmlite.binding.add_symbol("specc_sgemm_range_parallel", _range_parallel_c.address)
_range_parallel_ext = types.ExternalFunction("specc_sgemm_range_parallel", _PARALLEL_SIG)


@numba.njit(**JIT)
def _b_layout(k, n, row_step, col_step):
    """How the micro-kernel reads b (k, n) with these strides (elements): (False, row stride) when
    contiguous along n, (True, column stride) when contiguous along k (a transposed view: packed strip by
    strip), else (False, -1)."""
    if (col_step == 1 or n == 1) and (row_step >= 0 or k == 1):
        return False, row_step if k > 1 else n
    if (row_step == 1 or k == 1) and (col_step >= 0 or n == 1):
        return True, col_step if n > 1 else k
    return False, -1


@numba.njit(**JIT)
def _takes(m, k, n, a_rows, a_cols, ldb, out_rows, out_cols):
    """Whether the micro-kernels run a product with these shapes and strides (elements; ldb from
    _b_layout, -1 when b is contiguous along neither axis)."""
    if m == 0 or n == 0 or (out_cols != 1 and n > 1) or (out_rows < 0 and m > 1):
        return False
    return k == 0 or (ldb >= 0 and (a_rows >= 0 or m == 1) and (a_cols >= 0 or k == 1))


@numba.njit(**JIT)
def product(a, a_rows, a_cols, m, k, b, b_rows, b_cols, n, out, out_rows, out_cols, bias, use_bias, relu,
            accumulate, first_row, last_row, threaded):
    """out[first_row:last_row] = (out if accumulate) + a @ b (+ bias if use_bias), then max(0, .) if relu,
    for float32 arrays given by address and strides in elements: a (m, k), b (k, n), out (m, n), bias (n,)
    contiguous. Returns False, having done nothing, where the micro-kernels should not run it (out not
    contiguous along n, b contiguous along neither axis, negative strides, an empty side);
    the caller then uses BLAS. `threaded`: on the threads set_threads allows when the product is large
    enough to pay for waking them (never from inside a prange body or a thread of in_threads).
    All integers, so it compiles once whatever the callers' array layouts."""
    bt, ldb = _b_layout(k, n, b_rows, b_cols)
    if not _takes(m, k, n, a_rows, a_cols, ldb, out_rows, out_cols):
        return False
    packing = 0 if not bt else 2 if m <= STRIP_ROWS else 1  # _range_c's bt
    count = threads() if threaded else 1
    if count > 1 and 2 * m * n * k >= PARALLEL_MIN_FLOPS and last_row - first_row == m:
        # Split the rows, unless the columns share out more than 5% more evenly: 128 rows in 14-row blocks
        # split 70 + 58, while 256 columns split into 4 + 4 strips. Rows otherwise, because then each
        # thread reads only its part of a.
        blocks = (m + MR - 1) // MR
        strips = (n + NR - 1) // NR
        most_rows = min(m, -(-blocks // count) * MR)
        most_columns = min(n, -(-strips // count) * NR)
        by_columns = 20 * n * most_rows > 21 * m * most_columns  # columns' largest share 5% smaller
        parts = min(count, strips if by_columns else blocks)
        _range_parallel_ext(a, a_rows, a_cols, b, ldb, packing, out, out_rows, m, n, k, int(accumulate), bias,
                            int(use_bias), int(relu), parts, int(by_columns))
    else:
        _range_ext(a, a_rows, a_cols, b, ldb, packing, out, out_rows, n, k, first_row, last_row, int(accumulate),
                   bias, int(use_bias), int(relu))
    return True


@numba.njit(**JIT)
def run(a, b, out, accumulate, bias, use_bias, relu, first_row, last_row, threaded):
    """`product` on float32 arrays; False, having done nothing, when the micro-kernels do not take them
    (see `supports`; a strided bias too)."""
    item = 4
    if use_bias and bias.strides[0] != item and bias.shape[0] > 1:
        return False
    return product(a.ctypes.data, a.strides[0] // item, a.strides[1] // item, a.shape[0], a.shape[1],
                   b.ctypes.data, b.strides[0] // item, b.strides[1] // item, b.shape[1],
                   out.ctypes.data, out.strides[0] // item, out.strides[1] // item,
                   bias.ctypes.data, use_bias, relu, accumulate, first_row, last_row, threaded)


@numba.njit(**JIT)
def supports(a, b, out):
    """Whether the micro-kernels take this float32 product, without running it."""
    item = 4
    m, k = a.shape
    n = b.shape[1]
    ldb = _b_layout(k, n, b.strides[0] // item, b.strides[1] // item)[1]
    return _takes(m, k, n, a.strides[0] // item, a.strides[1] // item, ldb, out.strides[0] // item,
                  out.strides[1] // item)


@numba.njit(**JIT)
def matmul_rows(a, b, out, i0, i1, accumulate, bias, use_bias, relu):
    """out[i0:i1] = (out[i0:i1] if accumulate) + a[i0:i1] @ b (+ bias (n,) if use_bias), then max(0, .) if
    relu; float32 arrays, on the calling thread. Requires `supports` (it raises otherwise)."""
    if not run(a, b, out, accumulate, bias, use_bias, relu, i0, i1, False):
        raise ValueError("sgemm does not take these operands (see supports)")


@numba.njit(**JIT)
def matmul(a, b, out, accumulate, bias, use_bias, relu):
    """matmul_rows over all rows, on the threads set_threads allows when the product is large enough."""
    if not run(a, b, out, accumulate, bias, use_bias, relu, 0, a.shape[0], True):
        raise ValueError("sgemm does not take these operands (see supports)")
