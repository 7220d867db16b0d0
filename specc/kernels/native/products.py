"""Matrix products lowered as one call of a C callable per dtype (the native half of kernels/gemm.py).

`install` gives gemm's four product functions their compiled form: not functions of their own but a few
instructions in each caller (typed and lowered here, as an intrinsic is): a check of the shapes, then a
call of the dtype's dispatch with the arrays' addresses and strides. An overload would compile a function
per layout of the operands at every call site. Behind the call: sgemm (float32 on AVX-512 or AVX2, layouts it
reads), else NumPy's CBLAS, else SciPy's Fortran gemm (the one np.dot inside Numba calls) when that one
may use more threads, else plain loops for operands no BLAS can read in place. One BLAS for everything
where possible: two OpenBLAS thread pools get in each other's way.

float32 dispatch is a C callable compiled once (at import, or loaded from the cache), so no kernel links
and optimises it again; float64, which few models use, calls `_affine_at` itself, compiled when needed.
The BLAS functions are registered with LLVM under names of our own, so compiled kernels call them by
symbol and stay cacheable (the address is resolved when cached code is loaded, after this module ran).
"""

from __future__ import annotations

import ctypes

import llvmlite.binding
import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import get_cython_function_address, intrinsic, lower_builtin, overload, type_callable

from .. import JIT, load_scipy_blas
from ..blas import NUMPY_OPENBLAS, SCIPY_OPENBLAS


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

_register(NUMPY_OPENBLAS,
          (("specc_numpy_sgemm", "scipy_cblas_sgemm64_"), ("specc_numpy_dgemm", "scipy_cblas_dgemm64_"),
           ("specc_numpy_blas_threads", "scipy_openblas_get_num_threads64_")),
          (_NO_GEMM, _NO_GEMM, _NO_THREADS))
_register(SCIPY_OPENBLAS, (("specc_scipy_blas_threads", "scipy_openblas_get_num_threads"),), (_NO_THREADS,))
_ROW_MAJOR, _NO_TRANS, _TRANS = 101, 111, 112


def _cblas_signature(real):
    # cblas_?gemm(order, trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)
    i32, i64, ptr = types.int32, types.int64, types.voidptr
    return types.void(i32, i32, i32, i64, i64, i64, real, ptr, i64, ptr, i64, real, ptr, i64)


_numpy_sgemm = types.ExternalFunction("specc_numpy_sgemm", _cblas_signature(types.float32))
_numpy_dgemm = types.ExternalFunction("specc_numpy_dgemm", _cblas_signature(types.float64))
_numpy_blas_threads = types.ExternalFunction("specc_numpy_blas_threads", types.int32())
_scipy_blas_threads = types.ExternalFunction("specc_scipy_blas_threads", types.int32())

# SciPy's BLAS as Numba's own np.dot reaches it: the Fortran ?gemm of scipy.linalg.cython_blas (SciPy's
# bundled OpenBLAS in its wheels, whatever BLAS SciPy was built against elsewhere), registered like the
# symbols above. It takes every argument by pointer; `_fortran_gemm` passes them.
load_scipy_blas()
for _name in ("sgemm", "dgemm"):
    llvmlite.binding.add_symbol("specc_scipy_" + _name, get_cython_function_address("scipy.linalg.cython_blas", _name))


def _fortran_gemm(symbol: str, real: ir.Type):
    """An intrinsic (trans_a, trans_b, m, n, k, a, lda, b, ldb, c, ldc), all int64 (flags 0/1, addresses):
    c = op(a) @ op(b) in column-major order by the Fortran ?gemm registered as `symbol` (alpha 1, beta 0),
    its scalars stored in the caller's stack frame and passed by address."""

    @intrinsic
    def call(typingctx, trans_a, trans_b, m, n, k, a, lda, b, ldb, c, ldc):
        sig = types.void(*(types.int64,) * 11)

        def codegen(context, builder, signature, args):
            i8, i32 = ir.IntType(8), ir.IntType(32)
            ptr_real, ptr_i8, ptr_i32 = real.as_pointer(), i8.as_pointer(), i32.as_pointer()
            fn = builder.module.globals.get(symbol) or ir.Function(builder.module, ir.FunctionType(
                ir.VoidType(), [ptr_i8, ptr_i8] + [ptr_i32] * 3 + [ptr_real] * 2 + [ptr_i32, ptr_real, ptr_i32]
                + [ptr_real] * 2 + [ptr_i32]), name=symbol)

            def slot(value_type, value):
                where = cgutils.alloca_once(builder, value_type)
                builder.store(value, where)
                return where

            def trans(flag):  # 'T' or 'N'
                return slot(i8, builder.select(builder.trunc(flag, ir.IntType(1)), ir.Constant(i8, ord("T")),
                                               ir.Constant(i8, ord("N"))))

            ta, tb, m_, n_, k_, a_, lda_, b_, ldb_, c_, ldc_ = args
            as_int = [slot(i32, builder.trunc(v, i32)) for v in (m_, n_, k_, lda_, ldb_, ldc_)]
            a_p, b_p, c_p = (builder.inttoptr(v, ptr_real) for v in (a_, b_, c_))
            builder.call(fn, [trans(ta), trans(tb), as_int[0], as_int[1], as_int[2], slot(real, ir.Constant(real, 1.0)),
                              a_p, as_int[3], b_p, as_int[4], slot(real, ir.Constant(real, 0.0)), c_p, as_int[5]])
            return context.get_dummy_value()

        return sig, codegen

    return call


_scipy_sgemm = _fortran_gemm("specc_scipy_sgemm", ir.FloatType())
_scipy_dgemm = _fortran_gemm("specc_scipy_dgemm", ir.DoubleType())


@intrinsic
def _pointer(typingctx, real, address):
    """The int64 `address` as a pointer to `real` (a dtype such as np.float32), for indexing."""
    pointer_type = types.CPointer(real.instance_type)

    def codegen(context, builder, signature, args):
        return builder.inttoptr(args[1], context.get_value_type(pointer_type))

    return pointer_type(real, address), codegen


def _numpy_gemm(real, *args):
    """NumPy's CBLAS ?gemm for `real` (args as _numpy_sgemm's); compiled only (the overload below)."""


@overload(_numpy_gemm, jit_options=JIT)
def _numpy_gemm_njit(real, *args):
    gemm = _numpy_sgemm if real.instance_type == types.float32 else _numpy_dgemm
    return lambda real, *args: gemm(*args)


def _scipy_gemm(real, *args):
    """SciPy's Fortran ?gemm for `real` (args as _fortran_gemm's); compiled only."""


@overload(_scipy_gemm, jit_options=JIT)
def _scipy_gemm_njit(real, *args):
    gemm = _scipy_sgemm if real.instance_type == types.float32 else _scipy_dgemm
    return lambda real, *args: gemm(*args)


def _sgemm(real, *args):
    """sgemm.product for float32 (args as its); False (not run) for other dtypes. Compiled only."""


@overload(_sgemm, jit_options=JIT)
def _sgemm_njit(real, *args):
    from .. import native  # sgemm is loaded (before this module) only on AVX-512 or AVX2+FMA targets

    if real.instance_type == types.float32 and native.sgemm is not None:
        product = native.sgemm.product
        return lambda real, *args: product(*args)
    return lambda real, *args: False


@numba.njit(**JIT)
def _blas_operand(rows, cols, row_step, col_step):
    """How CBLAS (row-major) can read a (rows, cols) operand with these strides (elements) in place:
    (transposed?, leading dimension), or (False, -1) when neither axis is contiguous."""
    if (col_step == 1 or cols == 1) and (row_step >= cols or rows == 1):
        return False, row_step if rows > 1 else max(cols, 1)
    if (row_step == 1 or rows == 1) and (col_step >= rows or cols == 1):
        return True, col_step if cols > 1 else max(rows, 1)
    return False, -1


@numba.njit(**JIT)
def _blas(real, a, ars, acs, m, k, b, brs, bcs, n, out, ors, ocs):
    """out = a @ b by BLAS, on addresses and element strides; False, having done nothing, when BLAS cannot
    read the operands in place. NumPy's OpenBLAS, unless SciPy's is allowed more threads (see
    matmul_blas) or NumPy has none of its own: then SciPy's BLAS."""
    if ors == 1 and ocs != 1 and m > 1:  # out stored transposed: out.T = b.T @ a.T, with the roles swapped
        a, ars, acs, b, brs, bcs = b, bcs, brs, a, acs, ars
        m, n, ors, ocs = n, m, ocs, ors
    trans_a, lda = _blas_operand(m, k, ars, acs)
    trans_b, ldb = _blas_operand(k, n, brs, bcs)
    trans_c, ldc = _blas_operand(m, n, ors, ocs)
    if lda < 0 or ldb < 0 or ldc < 0 or trans_c:
        return False
    threads = _numpy_blas_threads()
    if threads >= 1 and threads >= _scipy_blas_threads():
        one = real(1)
        _numpy_gemm(real, _ROW_MAJOR, _TRANS if trans_a else _NO_TRANS, _TRANS if trans_b else _NO_TRANS, m, n, k,
                    one, a, lda, b, ldb, one - one, out, ldc)
    elif max(m, n, k, lda, ldb, ldc) < 2**31:  # the Fortran interface's integers are 32-bit
        # column-major: out.T (n, m) = op(b memory) @ op(a memory)
        _scipy_gemm(real, int(trans_b), int(trans_a), n, m, k, b, ldb, a, lda, out, ldc)
    else:
        return False
    return True


@numba.njit(**JIT)
def _loops(real, a, ars, acs, m, k, b, brs, bcs, n, out, ors, ocs):
    """out = a @ b by plain loops, on addresses and element strides: for operands BLAS cannot read in
    place (no specc kernel passes such views; np.dot would copy them)."""
    pa, pb, po = _pointer(real, a), _pointer(real, b), _pointer(real, out)
    for i in range(m):
        for j in range(n):
            total = real(0)
            for p in range(k):
                total += pa[i * ars + p * acs] * pb[p * brs + j * bcs]
            po[i * ors + j * ocs] = total


@numba.njit(**JIT)
def _bias_relu(real, out, ors, ocs, m, n, bias, bias_step, use_bias, relu):
    """out (m, n) += bias (n,) on every row if use_bias, then max(out, 0) if relu; addresses, element strides."""
    po, pbias = _pointer(real, out), _pointer(real, bias)
    zero = real(0)
    for i in range(m):
        for j in range(n):
            v = po[i * ors + j * ocs]
            if use_bias:
                v += pbias[j * bias_step]
            po[i * ors + j * ocs] = max(v, zero) if relu else v


@numba.njit(**JIT)
def _affine_at(real, a, ars, acs, m, k, b, brs, bcs, n, out, ors, ocs, bias, bias_step, use_bias, relu, threaded,
               blas_only):
    """`affine` on addresses and element strides (see there); `blas_only` skips sgemm (matmul_blas)."""
    if m == 0 or n == 0:
        return
    if not blas_only and (bias_step == 1 or not use_bias or n == 1) and _sgemm(
            real, a, ars, acs, m, k, b, brs, bcs, n, out, ors, ocs, bias, use_bias, relu, False, 0, m, threaded):
        return
    if k == 0:  # an empty sum: BLAS implementations differ on what they accept here
        po = _pointer(real, out)
        for i in range(m):
            for j in range(n):
                po[i * ors + j * ocs] = real(0)
    elif not _blas(real, a, ars, acs, m, k, b, brs, bcs, n, out, ors, ocs):
        _loops(real, a, ars, acs, m, k, b, brs, bcs, n, out, ors, ocs)
    if use_bias or relu:
        _bias_relu(real, out, ors, ocs, m, n, bias, bias_step, use_bias, relu)


# float32 products, in every model, go through a C callable compiled once (at import, or loaded from
# the cache), which kernels call by symbol name: none of them links the dispatch above, so none
# optimises it again (Numba optimises a caller together with all it links, so each njit layer between
# the kernels and sgemm would be compiled again at every call site). float64 products, which few models
# use, call _affine_at itself, compiled when first needed (a C callable compiles at import whether it is
# used or not, which would lengthen every cold start).
_AFFINE_SIG = types.void(*(types.int64,) * 18)


@numba.cfunc(_AFFINE_SIG, **JIT)
def _affine_f32_c(a, ars, acs, m, k, b, brs, bcs, n, out, ors, ocs, bias, bias_step, use_bias, relu, threaded,
                  blas_only):
    _affine_at(np.float32, a, ars, acs, m, k, b, brs, bcs, n, out, ors, ocs, bias, bias_step, use_bias != 0,
               relu != 0, threaded != 0, blas_only != 0)


llvmlite.binding.add_symbol("specc_affine_f32", _affine_f32_c.address)


# Compiled, gemm.py's four product functions are not functions of their own but a few instructions in
# each caller (typed and lowered here, as an intrinsic is): a check of the shapes, then a call of the
# dtype's C callable with the arrays' addresses and strides. An overload would compile a function per
# layout of the operands at every call site.
def _typer(with_bias):
    def check(a, b, out, bias):
        arrays = (a, b, out, bias)
        if not all(isinstance(x, types.Array) for x in arrays):
            return None
        if a.ndim != 2 or b.ndim != 2 or out.ndim != 2 or bias.ndim != 1:
            raise numba.core.errors.TypingError("matrix products take 2-D operands (and a 1-D bias)")
        if any(x.dtype != a.dtype for x in arrays) or a.dtype not in (types.float32, types.float64):
            raise numba.core.errors.TypingError(
                f"matrix products take float32 or float64 arrays of one dtype, not {[x.dtype for x in arrays]}")
        return types.void

    if with_bias:
        return lambda context: lambda a, b, bias, use_bias, relu, out, threaded=None: check(a, b, out, bias)
    return lambda context: lambda a, b, out: check(a, b, out, out.copy(ndim=1, layout="A")
                                                   if isinstance(out, types.Array) else out)


def _lower_product(context, builder, a, b, bias, out, flags):
    """The call of `_affine_f32_c` (float32) or `_affine_at` (float64) for these arrays ((type, value) pairs); flags are
    (use_bias, relu, threaded, blas_only) as (type, value) pairs. Raises ValueError when the shapes do not
    match."""
    i64 = ir.IntType(64)
    real = a[0].dtype
    item = ir.Constant(i64, real.bitwidth // 8)
    views = [context.make_array(t)(context, builder, v) for t, v in (a, b, bias, out)]
    shapes = [cgutils.unpack_tuple(builder, x.shape) for x in views]
    strides = [[builder.sdiv(s, item) for s in cgutils.unpack_tuple(builder, x.strides)] for x in views]
    data = [builder.ptrtoint(x.data, i64) for x in views]
    (m, k), (k_b, n), (n_bias,), (m_out, n_out) = shapes
    flag_values = [context.cast(builder, v, t, types.int64) for t, v in flags]
    use_bias = builder.icmp_signed("!=", flag_values[0], ir.Constant(i64, 0))
    mismatch = builder.or_(builder.or_(builder.icmp_signed("!=", k_b, k), builder.icmp_signed("!=", m_out, m)),
                           builder.or_(builder.icmp_signed("!=", n_out, n),
                                       builder.and_(use_bias, builder.icmp_signed("!=", n_bias, n))))
    with cgutils.if_unlikely(builder, mismatch):
        context.call_conv.return_user_exc(builder, ValueError, ("matrix product: the operands' shapes do not match",))
    values = [data[0], *strides[0], m, k, data[1], *strides[1], n, data[3], *strides[3], data[2], strides[2][0]]
    if real == types.float32:
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), [i64] * 18),
                                            "specc_affine_f32")
        builder.call(fn, values + flag_values)
    else:
        typing = context.typing_context
        fnty = typing.resolve_value_type(_affine_at)
        call_sig = fnty.get_call_type(typing, (types.NumberClass(real),) + (types.int64,) * 14 + (types.boolean,) * 4, {})
        flags_bool = [builder.icmp_signed("!=", v, ir.Constant(i64, 0)) for v in flag_values]
        context.get_function(fnty, call_sig)(builder, [context.get_dummy_value()] + values + flags_bool)
    return context.get_dummy_value()


def _constant(value):
    return types.boolean, ir.Constant(ir.IntType(1), int(value))


def _lower_matmul(threaded: bool, blas_only: bool):
    def lower(context, builder, sig, args):
        a, b, out = zip(sig.args, args)
        row = context.make_array(out[0])(context, builder, out[1])  # a 1-D view of out's data: a bias not read
        bias_type = out[0].copy(ndim=1, layout="A")
        bias = context.make_array(bias_type)(context, builder)
        stride = cgutils.unpack_tuple(builder, row.strides)[1]
        context.populate_array(bias, data=row.data, shape=cgutils.pack_array(builder, [ir.Constant(ir.IntType(64), 0)]),
                               strides=cgutils.pack_array(builder, [stride]), itemsize=row.itemsize, meminfo=None)
        return _lower_product(context, builder, a, b, (bias_type, bias._getvalue()), out,
                              [_constant(False), _constant(False), _constant(threaded), _constant(blas_only)])

    return lower


def _lower_affine(context, builder, sig, args):
    t, v = sig.args, args
    threaded = (t[6], v[6]) if len(args) > 6 else _constant(True)
    return _lower_product(context, builder, (t[0], v[0]), (t[1], v[1]), (t[2], v[2]), (t[5], v[5]),
                          [(t[3], v[3]), (t[4], v[4]), threaded, _constant(False)])


def install(affine, matmul, matmul_serial, matmul_blas) -> None:
    """Types and lowers kernels/gemm.py's four product functions as calls of the dispatch above."""
    type_callable(affine)(_typer(True))
    for function in (matmul, matmul_serial, matmul_blas):
        type_callable(function)(_typer(False))
    lower_builtin(affine, types.Array, types.Array, types.Array, types.Any, types.Any, types.Array)(_lower_affine)
    lower_builtin(affine, types.Array, types.Array, types.Array, types.Any, types.Any, types.Array,
                  types.Any)(_lower_affine)
    lower_builtin(matmul, types.Array, types.Array, types.Array)(_lower_matmul(True, False))
    lower_builtin(matmul_serial, types.Array, types.Array, types.Array)(_lower_matmul(False, False))
    lower_builtin(matmul_blas, types.Array, types.Array, types.Array)(_lower_matmul(False, True))
