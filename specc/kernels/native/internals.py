"""Numba's private entry points that specc relies on, each in one place, and three scalar helpers as IR:
float64 and float32 bitcasts and a maximum that vectorises."""

from __future__ import annotations

import ctypes

import llvmlite.binding
import numba
import numba.np.ufunc.parallel as _numba_parallel
from llvmlite import ir
from numba import types
from numba.extending import intrinsic


def _thread_count_function():
    """The C function behind numba.get_num_threads() (the calling thread's count). Numba's Python function
    takes a process-wide lock on every call, too slow to call between kernels. Starts Numba's threading
    layer, which provides it."""
    numba.get_num_threads()
    read = getattr(_numba_parallel, "_get_num_threads", None)
    if read is None:  # pragma: no cover - Numba's internals moved: a callback into the public function
        read = ctypes.CFUNCTYPE(ctypes.c_int)(numba.get_num_threads)
    return read


THREAD_COUNT_FUNCTION = _thread_count_function()  # kept alive here: compiled code calls it by address
# Registered under our own name, so compiled code that calls it still caches (Numba's own function would
# compile to a pointer constant).
llvmlite.binding.add_symbol("specc_numba_threads", ctypes.cast(THREAD_COUNT_FUNCTION, ctypes.c_void_p).value)
numba_threads = types.ExternalFunction("specc_numba_threads", types.intc())


def _from_bits(int_type, float_type, ir_type):
    """An intrinsic: the `float_type` whose bits are the `int_type` argument, as one bitcast (loops around
    it still vectorise)."""

    @intrinsic
    def from_bits(typingctx, bits):
        def codegen(context, builder, signature, args):
            return builder.bitcast(args[0], ir_type)

        return float_type(int_type), codegen

    return from_bits


float64_from_bits = _from_bits(types.int64, types.float64, ir.DoubleType())
float32_from_bits = _from_bits(types.int32, types.float32, ir.FloatType())


@intrinsic
def fmax(typingctx, a, b):
    """max(a, b) of two floats of one type as llvm.maxnum with fast-math flags: a loop that reduces with it
    vectorises. A compare and select does not: LLVM then asks for a no-NaNs attribute on the function,
    which Numba never sets, and a float32 row maximum costs a scalar instruction per value."""
    if not isinstance(a, types.Float) or a != b:
        return None

    def codegen(context, builder, signature, args):
        t = args[0].type
        maxnum = builder.module.declare_intrinsic("llvm.maxnum", [t], ir.FunctionType(t, [t, t]))
        return builder.call(maxnum, args, fastmath=("fast",))

    return a(a, b), codegen
