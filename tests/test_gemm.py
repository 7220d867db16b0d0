"""The BLAS dispatch (specc.kernels.gemm) and Dense's kernels against np.dot in float64 and float32, on
odd shapes, zero-size axes, transposed and strided operands, on 1 and 2 threads, compiled and as Python
(sgemm's own kernels: test_sgemm.py).

Tolerances: float64 1e-12 relative to sum(|a||b|) (the scale of the rounding error of a k-term sum);
float32 1e-5 of the same scale (fastmath reorders the sums, so float32 results differ from NumPy's in
the last bits; 1e-5 is about 100 ulps at k = 100)."""

from __future__ import annotations

import contextlib

import numba
import numpy as np
import pytest

from specc.kernels import blas, configure_threads, dense, gemm

SHAPES = [  # (m, k, n)
    (1, 1, 1), (1, 3, 17), (3, 17, 1), (17, 3, 5), (6, 8, 2), (7, 9, 3), (12, 16, 4), (13, 17, 129),
    (5, 1, 130), (65, 70, 131), (128, 10, 128), (130, 40, 33),
]
ZERO_SHAPES = [(0, 4, 3), (4, 0, 3), (4, 3, 0), (0, 0, 0)]
DTYPES = {np.float64: 1e-12, np.float32: 1e-5}


@numba.njit(cache=True)
def _matmul_blas_compiled(a, b, out):
    """gemm.matmul_blas as kernels see it (the overload); from Python the name is plain np.dot."""
    gemm.matmul_blas(a, b, out)


@pytest.fixture(params=[1, 2], ids=["1thread", "2threads"])
def threads(request):
    before = numba.get_num_threads()
    yield configure_threads(request.param)
    configure_threads(before)


def _operands(m, k, n, dtype, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((m, k)).astype(dtype), rng.standard_normal((k, n)).astype(dtype)


def _check(got, a, b, dtype):
    """got against a @ b in float64, within the dtype's tolerance of sum_k |a_ik| |b_kj|."""
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    scale = np.abs(a64) @ np.abs(b64) + np.finfo(np.float64).tiny
    err = np.abs(got.astype(np.float64) - a64 @ b64) / scale
    assert got.shape == (a.shape[0], b.shape[1])
    assert err.size == 0 or err.max() <= DTYPES[dtype], f"max relative error {err.max():.2e}"


@pytest.mark.parametrize("dtype", list(DTYPES), ids=lambda d: d.__name__)
@pytest.mark.parametrize("m,k,n", SHAPES + ZERO_SHAPES)
def test_matmul_blas_plain_and_transposed_views(m, k, n, dtype, threads):
    # threads=1 takes NumPy's OpenBLAS through the registered symbol, 2 takes SciPy's through np.dot
    a, b = _operands(m, k, n, dtype)
    for a_view, b_view in ((a, b), (np.ascontiguousarray(a.T).T, b), (a, np.ascontiguousarray(b.T).T),
                           (np.ascontiguousarray(a.T).T, np.ascontiguousarray(b.T).T)):
        out = np.full((m, n), np.nan, dtype)
        _matmul_blas_compiled(a_view, b_view, out)
        _check(out, a, b, dtype)


@pytest.mark.filterwarnings("ignore::numba.core.errors.NumbaPerformanceWarning")  # the point of the test
def test_matmul_blas_falls_back_for_operands_blas_cannot_read():
    # neither axis contiguous (a), and an output whose rows are not contiguous: np.dot copies
    a, b = _operands(9, 7, 5, np.float64)
    a_strided = np.zeros((18, 14))
    a_strided[::2, ::2] = a
    out_wide = np.full((9, 10), np.nan)
    with _threads(1):
        _matmul_blas_compiled(a_strided[::2, ::2], b, out_wide[:, ::2])
    _check(out_wide[:, ::2], a, b, np.float64)
    assert np.isnan(out_wide[:, 1::2]).all()  # the columns between were left alone


def test_numpy_blas_is_registered_on_numpy_wheels():
    # a NumPy built against another BLAS (MKL, Accelerate) has no bundled OpenBLAS: matmul_blas is np.dot
    import glob
    import os

    bundled = glob.glob(os.path.join(os.path.dirname(np.__file__), "..", "numpy.libs", "libscipy_openblas64_*"))
    assert blas.HAVE_NUMPY_BLAS == bool(bundled)


class _threads:
    def __init__(self, n):
        self.n = n

    def __enter__(self):
        self.before = numba.get_num_threads()
        configure_threads(self.n)

    def __exit__(self, *exc):
        configure_threads(self.before)


def _dense_reference(x, w, bias, dz, use_bias):
    x64, w64, dz64 = (v.astype(np.float64) for v in (x, w, dz))
    y = x64 @ w64 + (bias if use_bias else 0)
    return y, x64.T @ dz64, dz64.sum(axis=0), dz64 @ w64.T


@pytest.mark.parametrize("dtype", list(DTYPES), ids=lambda d: d.__name__)
@pytest.mark.parametrize("rows,fan_in,units", [(1, 1, 1), (3, 17, 5), (128, 784, 256), (128, 128, 10), (7, 6, 13)])
@pytest.mark.parametrize("use_bias", [True, False])
@pytest.mark.parametrize("compiled", [True, False], ids=["compiled", "python"])
def test_dense_forward_backward(rows, fan_in, units, dtype, use_bias, compiled, threads):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((rows, fan_in)).astype(dtype)
    w = rng.standard_normal((fan_in, units)).astype(dtype)
    bias = rng.standard_normal(units).astype(dtype)
    dz = rng.standard_normal((rows, units)).astype(dtype)
    y_ref, dw_ref, db_ref, dx_ref = _dense_reference(x, w, bias, dz, use_bias)
    forward = dense.forward if compiled else dense.forward.py_func
    backward = dense.backward if compiled else dense.backward.py_func
    y = np.empty((rows, units), dtype)
    forward(x, w, bias, use_bias, y)
    dw, db, dx = np.empty_like(w), np.full(units, np.nan, dtype), np.empty_like(x)
    backward(x, w, dz, use_bias, True, dw, db, dx)
    tol = 1e-10 if dtype == np.float64 else 2e-4
    for got, ref in ((y, y_ref), (dw, dw_ref), (dx, dx_ref)):
        np.testing.assert_allclose(got, ref, rtol=tol, atol=tol * np.sqrt(fan_in + rows + units))
    if use_bias:
        np.testing.assert_allclose(db, db_ref, rtol=tol, atol=tol * np.sqrt(rows))
    else:
        assert np.isnan(db).all()  # not touched

    # without the input gradient, dx is not written and the kernel argument is not read
    dx_untouched = np.full_like(x, np.nan)
    backward(x, np.empty((0, 0), dtype), dz, use_bias, False, dw, db, dx_untouched)
    assert np.isnan(dx_untouched).all()


_ORDER_SCRIPT = """
import sys
if sys.argv[1] == "numpy-first":
    import numpy
import specc
specc.runtime.prepare_process()  # as the CLI does before anything loads NumPy
import numpy as np
from threadpoolctl import threadpool_info
from specc.kernels import configure_threads
from specc.kernels.blas import HAVE_NUMPY_BLAS
configure_threads(2)
threads = {("numpy" if "numpy.libs" in i["filepath"] else "scipy"): i["num_threads"]
           for i in threadpool_info() if i["internal_api"] == "openblas" and ".libs" in i["filepath"]}
print(not specc.runtime.numpy_blas_spins_long(), HAVE_NUMPY_BLAS, threads.get("numpy"), threads.get("scipy"))
"""


@pytest.mark.parametrize("order", ["specc-first", "numpy-first"])
def test_blas_thread_pools_follow_the_import_order(order):
    # specc.runtime sets OPENBLAS_THREAD_TIMEOUT before NumPy's OpenBLAS loads when it runs first; then both
    # OpenBLAS get the 2 threads. If NumPy came first its workers would keep spinning after each call, so
    # NumPy's OpenBLAS is held at 1 thread and matmul_blas sends 2-thread products to SciPy's.
    import os
    import subprocess
    import sys

    if os.cpu_count() < 2:
        pytest.skip("needs 2 cores")
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_THREAD_TIMEOUT"}
    out = subprocess.run([sys.executable, "-c", _ORDER_SCRIPT, order], capture_output=True, text=True, env=env,
                         check=True).stdout.split()
    timeout_set, have_numpy_blas, numpy_threads, scipy_threads = out
    assert timeout_set == str(order == "specc-first")
    if have_numpy_blas == "True":
        assert numpy_threads == ("2" if order == "specc-first" else "1")
        assert scipy_threads == "2"


@pytest.mark.parametrize("numpy_threads", [1, 2])
def test_matmul_blas_is_right_whichever_openblas_it_picks(numpy_threads):
    # with NumPy's OpenBLAS capped below SciPy's, the compiled product goes to SciPy's (np.dot)
    if not blas.HAVE_NUMPY_BLAS:
        pytest.skip("NumPy has no bundled OpenBLAS")
    a, b = _operands(130, 70, 65, np.float64)
    out = np.empty((130, 65))
    with _threads(2):
        blas.set_numpy_blas_threads(numpy_threads)
        try:
            _matmul_blas_compiled(a, b, out)
        finally:
            configure_threads(2)
    _check(out, a, b, np.float64)


@pytest.mark.parametrize("layers,expected", [
    ([{"type": "Conv2D", "filters": 2, "kernel_size": 3}, {"type": "Flatten"}, {"type": "Dense", "units": 3}], 1),
    ([{"type": "Flatten"}, {"type": "Dense", "units": 3}], 2),
])
def test_models_with_threaded_layers_run_blas_on_one_thread(layers, expected):
    # Convolutions and pooling split the batch over threads of their own; a multi-threaded BLAS product
    # before them would leave OpenBLAS workers spinning on those cores, so such a model's passes keep
    # BLAS at one thread. A Dense-only model keeps the configured count.
    from threadpoolctl import threadpool_info

    from specc.engine import Engine
    from specc.spec import load_spec_text

    text = "specc: 1\nmodel:\n  input: [6, 6, 1]\n  layers:\n" + "".join(f"    - {layer}\n" for layer in layers)
    spec, errors = load_spec_text(text.replace("'", ""), "t.yaml")
    assert not errors, errors
    engine = Engine(spec.graph)
    with _threads(2):
        opened = engine._enter(reuse=True)  # what a forward or backward pass runs in
        inside = {i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"}
        engine._leave(opened)
        after = {i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"}
    # (NumPy's own OpenBLAS may be held at 1 anyway when NumPy was imported before specc: see
    # kernels.configure_threads; the most threads any BLAS may use is what decides.)
    assert max(inside) == expected
    assert max(after) == 2  # restored on leaving


# --- The compiled products' dispatch (native/products._affine_at, or the portable np.dot path): BLAS routes, the transposed output, k == 0, the
# bias/ReLU pass, the loops, and the checks made where the product is called.

@numba.njit(cache=True)
def _affine_compiled(a, b, bias, use_bias, relu, out):
    gemm.affine(a, b, bias, use_bias, relu, out)


def _transposed(x):
    """x's values in a column-contiguous (transposed) view."""
    return np.ascontiguousarray(x.T).T


def _nan_out(m, n, dtype, transposed=False):
    """An (m, n) output filled with NaN, stored row by row or (transposed) column by column."""
    return np.full((n, m), np.nan, dtype).T if transposed else np.full((m, n), np.nan, dtype)


def _check_affine(got, a, b, bias, use_bias, relu, dtype):
    """_check for affine: got against relu(a @ b + bias) in float64, the bias's size added to the scale."""
    a64, b64, bias64 = a.astype(np.float64), b.astype(np.float64), bias.astype(np.float64)
    ref = a64 @ b64 + (bias64 if use_bias else 0)
    ref = np.maximum(ref, 0) if relu else ref
    scale = np.abs(a64) @ np.abs(b64) + (np.abs(bias64) if use_bias else 0) + np.finfo(np.float64).tiny
    err = np.abs(got.astype(np.float64) - ref) / scale
    assert got.shape == (a.shape[0], b.shape[1])
    assert err.size == 0 or err.max() <= DTYPES[dtype], f"max relative error {err.max():.2e}"


def _blas_threads():
    """(NumPy's OpenBLAS threads, SciPy's OpenBLAS threads)."""
    return (blas.NUMPY_OPENBLAS.scipy_openblas_get_num_threads64_(),
            blas.SCIPY_OPENBLAS.scipy_openblas_get_num_threads())


@contextlib.contextmanager
def _route(name):
    """Products that reach BLAS in the block go to NumPy's CBLAS ("numpy": one thread each) or to SciPy's
    Fortran ?gemm ("scipy": NumPy's capped at 1 thread below SciPy's 2), as gemm._blas chooses."""
    if not (blas.HAVE_NUMPY_BLAS and blas.HAVE_SCIPY_BLAS):
        pytest.skip("needs NumPy's and SciPy's bundled OpenBLAS")
    if name == "scipy" and numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("needs 2 threads")
    with _threads(1 if name == "numpy" else 2):
        try:
            if name == "scipy":
                blas.set_numpy_blas_threads(1)
            numpy_threads, scipy_threads = _blas_threads()
            assert (numpy_threads >= scipy_threads) == (name == "numpy"), _blas_threads()
            yield
        finally:
            configure_threads(2 if name == "scipy" else 1)  # as test_matmul_blas_is_right_whichever_openblas_it_picks


ROUTES = ["numpy", "scipy"]
ROUTE_SHAPES = [(1, 5, 7), (7, 5, 1), (9, 1, 6), (13, 17, 29), (65, 70, 33)]  # (m, k, n)


@pytest.mark.parametrize("dtype", list(DTYPES), ids=lambda d: d.__name__)
@pytest.mark.parametrize("m,k,n", ROUTE_SHAPES)
@pytest.mark.parametrize("route", ROUTES)
def test_matmul_blas_layouts_on_each_blas_route(route, m, k, n, dtype):
    # the trans flags and the column-major role swap of the Fortran call (SciPy) and the CBLAS call (NumPy),
    # and _blas's swap for an output stored transposed, for every mix of transposed a, b and out
    a, b = _operands(m, k, n, dtype, seed=2)
    with _route(route):
        for a_view in (a, _transposed(a)):
            for b_view in (b, _transposed(b)):
                for out_transposed in (False, True):
                    out = _nan_out(m, n, dtype, out_transposed)
                    _matmul_blas_compiled(a_view, b_view, out)
                    _check(out, a, b, dtype)


BIAS_LAYOUTS = {"contiguous": lambda full, n: full[:n], "strided": lambda full, n: full[::2],
                "reversed": lambda full, n: full[n - 1::-1], "broadcast": lambda full, n: np.broadcast_to(full[:1], n)}


@pytest.mark.parametrize("dtype", list(DTYPES), ids=lambda d: d.__name__)
@pytest.mark.parametrize("bias_layout", list(BIAS_LAYOUTS))
@pytest.mark.parametrize("out_transposed", [False, True], ids=["out", "out_T"])
@pytest.mark.parametrize("use_bias,relu", [(True, True), (True, False), (False, True), (False, False)])
@pytest.mark.parametrize("route", ROUTES)
def test_affine_bias_relu_pass_after_blas(route, use_bias, relu, out_transposed, bias_layout, dtype):
    # _bias_relu after a BLAS product (float32 too: sgemm refuses a transposed out and a strided bias; with
    # a plain out and a contiguous bias it is sgemm's epilogue), the bias read at its stride (bias_step,
    # negative too) and out at its own strides
    m, k, n = 13, 17, 29
    a, b = _operands(m, k, n, dtype, seed=3)
    bias = BIAS_LAYOUTS[bias_layout](np.random.default_rng(4).standard_normal(2 * n).astype(dtype), n)
    assert bias.shape == (n,)
    out = _nan_out(m, n, dtype, out_transposed)
    with _route(route):
        _affine_compiled(a, b, bias, use_bias, relu, out)
    _check_affine(out, a, b, bias, use_bias, relu, dtype)


@pytest.mark.parametrize("dtype", list(DTYPES), ids=lambda d: d.__name__)
@pytest.mark.parametrize("m,n", [(1, 1), (5, 7), (1, 9), (9, 1)])
@pytest.mark.parametrize("bias_layout", ["contiguous", "strided"])
@pytest.mark.parametrize("out_transposed", [False, True], ids=["out", "out_T"])
@pytest.mark.parametrize("use_bias,relu", [(True, True), (True, False), (False, True), (False, False)])
def test_affine_with_k_zero_is_the_bias(use_bias, relu, out_transposed, bias_layout, m, n, dtype):
    # an empty sum: out is zeros, then the bias and the ReLU (float32 on sgemm's k == 0 path where it takes
    # the layout, the rest on _affine_at's own), never BLAS and never what out held before
    bias = BIAS_LAYOUTS[bias_layout](np.resize(np.array([-1.5, 2.5, 0.5], dtype), 2 * n), n)  # both signs
    out = _nan_out(m, n, dtype, out_transposed)
    _affine_compiled(np.ones((m, 0), dtype), np.ones((0, n), dtype), bias, use_bias, relu, out)
    expected = bias if use_bias else np.zeros(n, dtype)
    np.testing.assert_array_equal(out, np.broadcast_to(np.maximum(expected, 0) if relu else expected, (m, n)))


def _neither_axis_contiguous(x):
    """x's values in a view with neither axis contiguous."""
    spread = np.zeros((2 * x.shape[0], 3 * x.shape[1]), x.dtype)
    spread[::2, ::3] = x
    return spread[::2, ::3]


LOOP_VIEWS = {  # (a, b, out) views of (m, k), (k, n), (m, n) arrays that BLAS cannot read in place
    "both_strided": lambda a, b, out: (_neither_axis_contiguous(a), _neither_axis_contiguous(b), out),
    "a_reversed_rows": lambda a, b, out: (a[::-1], b, out),
    "a_reversed_columns": lambda a, b, out: (a[:, ::-1], b, out),
    "b_reversed_rows": lambda a, b, out: (a, b[::-1], out),
    "out_reversed_rows": lambda a, b, out: (a, b, out[::-1]),
    "all_reversed": lambda a, b, out: (a[::-1, ::-1], _transposed(b)[::-1], out[::-1, ::-1]),
}


@pytest.mark.parametrize("dtype", list(DTYPES), ids=lambda d: d.__name__)
@pytest.mark.parametrize("m,k,n", [(1, 1, 1), (7, 9, 3), (13, 17, 29)])
@pytest.mark.parametrize("views", list(LOOP_VIEWS))
def test_operands_blas_cannot_read_fall_to_the_loops(views, m, k, n, dtype):
    # _loops on views with neither axis contiguous or negative strides (matmul_blas; affine adds the
    # bias/ReLU pass), and every element of out written
    a, b = _operands(m, k, n, dtype, seed=5)
    bias = np.random.default_rng(6).standard_normal(n).astype(dtype)
    for product in ("matmul_blas", "affine"):
        a_view, b_view, out = LOOP_VIEWS[views](a, b, np.full((m, n), np.nan, dtype))
        with _threads(1):
            if product == "matmul_blas":
                _matmul_blas_compiled(a_view, b_view, out)
            else:
                _affine_compiled(a_view, b_view, bias, True, True, out)
        _check_affine(out, a_view, b_view, bias, product == "affine", product == "affine", dtype)


@pytest.mark.parametrize("dtype", list(DTYPES), ids=lambda d: d.__name__)
@pytest.mark.parametrize("a_shape,b_shape,out_shape", [
    ((3, 4), (5, 2), (3, 2)),  # inner dimensions
    ((3, 4), (4, 2), (4, 2)),  # out's rows
    ((3, 4), (4, 2), (3, 3)),  # out's columns
    ((3, 0), (4, 2), (3, 2)),  # an empty a against b
])
def test_shape_mismatch_raises_before_writing(a_shape, b_shape, out_shape, dtype):
    # the shape check lowered at the call site: ValueError from compiled code, out left as it was
    a, b = np.ones(a_shape, dtype), np.ones(b_shape, dtype)
    bias = np.zeros(out_shape[1], dtype)
    for call in (lambda out: _matmul_blas_compiled(a, b, out), lambda out: _affine_compiled(a, b, bias, True, False, out)):
        out = np.full(out_shape, np.nan, dtype)
        with pytest.raises(ValueError, match="the operands' shapes do not match"):
            call(out)
        assert np.isnan(out).all()


@pytest.mark.parametrize("dtype", list(DTYPES), ids=lambda d: d.__name__)
@pytest.mark.parametrize("bias_length", [0, 4, 6])
def test_bias_length_is_checked_only_when_used(bias_length, dtype):
    # a bias of the wrong length raises ValueError with use_bias; without, it is not read, so any will do
    a, b = _operands(3, 4, 5, dtype, seed=7)
    bias = np.ones(bias_length, dtype)
    out = np.full((3, 5), np.nan, dtype)
    with pytest.raises(ValueError, match="the operands' shapes do not match"):
        _affine_compiled(a, b, bias, True, False, out)
    assert np.isnan(out).all()
    _affine_compiled(a, b, bias, False, False, out)
    _check(out, a, b, dtype)


@pytest.mark.parametrize("dtypes", [
    (np.float32, np.float64, np.float32, np.float32),  # a, b, out, bias
    (np.float64, np.float32, np.float64, np.float64),
    (np.float32, np.float32, np.float64, np.float32),
    (np.float64, np.float64, np.float64, np.float32),
    (np.int64, np.int64, np.int64, np.int64),
], ids=["a32_b64", "a64_b32", "out64", "bias32", "int64"])
def test_dtypes_other_than_one_float_are_typing_errors(dtypes):
    # the typer's check: products take float32 or float64 arrays of a single dtype, rejected at compile time
    from numba.core.errors import TypingError

    a, b, out, bias = (np.ones(shape, dt) for shape, dt in zip(((3, 4), (4, 2), (3, 2), (2,)), dtypes))
    if dtypes[3] == dtypes[0]:  # the bias is not an argument of matmul_blas
        with pytest.raises(TypingError, match="float32 or float64"):
            _matmul_blas_compiled(a, b, out)
    with pytest.raises(TypingError, match="float32 or float64"):
        _affine_compiled(a, b, bias, True, False, out)
