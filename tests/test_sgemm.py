"""The float32 micro-kernel products (specc.kernels.native.sgemm) against float64 NumPy, on whichever
variant is loaded (AVX-512: 14 x 32 tiles; AVX2: 6 x 16): every tile shape (MR/4/2/1 rows; full strips,
strips whose last vector is partial, strips with a dead vector), k = 0, k slices (> KC, and > KC_STRIP
when b is transposed and packed strip by strip), a as a transposed or strided view, b plain or
transposed (packed strip by strip or panel by panel), the epilogue (accumulate, bias, ReLU), on 1 and 2
threads with the rows or the columns split, and that nothing outside `out` is written.

sgemm loads where the CPU Numba compiles for has AVX-512 (and is this CPU) or AVX2 and FMA: its own tests
skip elsewhere. Run them as on an AVX2 CPU with NUMBA_CPU_NAME=haswell NUMBA_CPU_FEATURES= (the name alone
keeps this CPU's features). The products' dispatch (gemm.affine) and the thread count are checked on
every path.

Tolerance: 1e-5 of sum_k |a_ik| |b_kj| (the scale of a float32 k-term sum's rounding error, as in
test_gemm.py)."""

from __future__ import annotations

import os
import platform

import llvmlite.binding
import numba
import numpy as np
import pytest

from specc.kernels import configure_threads, gemm, native

sgemm = native.sgemm
needs_sgemm = pytest.mark.skipif(sgemm is None, reason="sgemm loads on AVX-512 or AVX2+FMA targets only (native kernels)")

SHAPES = [  # (m, k, n)
    (1, 1, 1), (3, 5, 7), (5, 8, 9), (11, 3, 16), (12, 7, 32), (13, 9, 33), (25, 17, 47), (8, 0, 20), (2, 4, 64),
    (128, 200, 256),  # >= 4 MFLOP: on AVX-512 parallel by columns (4 + 4 strips; the rows would split 70 + 58)
    (18, 450, 256),  # parallel by columns on either variant (the rows would split 12 + 6, or 14 + 4)
    (300, 100, 70),  # parallel by rows
    (20, 1100, 40),  # k beyond KC: two slices, the second accumulating
    (40, 600, 70),  # with b transposed, packed strip by strip: three slices of KC_STRIP
    (70, 1100, 40),  # with b transposed, packed panel by panel (m > STRIP_ROWS): two slices of KC
]


@pytest.fixture(params=[1, 2], ids=["1thread", "2threads"])
def threads(request):
    before = numba.get_num_threads()
    yield configure_threads(request.param)
    configure_threads(before)


def _a_view(a, how):
    """a (m, k) as the caller may hold it: contiguous, a transposed view (Dense's x.T), every other column."""
    if how == "C":
        return a
    if how == "T":
        return np.ascontiguousarray(a.T).T
    wide = np.zeros((a.shape[0], 2 * a.shape[1]), a.dtype)
    wide[:, ::2] = a
    return wide[:, ::2]


def _reference(a, b, out0, bias, accumulate, use_bias, relu):
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    want = a64 @ b64 + (out0 if accumulate else 0) + (bias if use_bias else 0)
    scale = np.abs(a64) @ np.abs(b64) + np.abs(out0 if accumulate else 0) + np.abs(bias if use_bias else 0) + 1e-30
    return (np.maximum(want, 0) if relu else want), scale


def _check(got, want, scale):
    err = np.abs(got.astype(np.float64) - want) / scale
    assert err.size == 0 or err.max() <= 1e-5, f"max relative error {err.max():.2e}"


@needs_sgemm
@pytest.mark.parametrize("m,k,n", SHAPES)
@pytest.mark.parametrize("a_how", ["C", "T", "strided"])
@pytest.mark.parametrize("b_transposed", [False, True], ids=["b", "bT"])
def test_products_match_float64(m, k, n, a_how, b_transposed, threads):
    rng = np.random.default_rng(m * 1000 + k * 10 + n)
    a = rng.standard_normal((m, k)).astype(np.float32)
    b = rng.standard_normal((k, n)).astype(np.float32)
    bias = rng.standard_normal(n).astype(np.float32)
    b_view = np.ascontiguousarray(b.T).T if b_transposed else b
    for accumulate, use_bias, relu in [(False, False, False), (True, True, True), (False, True, False),
                                       (True, False, True)]:
        out0 = rng.standard_normal((m, n)).astype(np.float32)
        out = out0.copy()
        sgemm.matmul(_a_view(a, a_how), b_view, out, accumulate, bias, use_bias, relu)
        _check(out, *_reference(a, b, out0, bias, accumulate, use_bias, relu))


@needs_sgemm
@pytest.mark.parametrize("b_transposed", [False, True], ids=["b", "bT"])
def test_writes_nothing_outside_out(b_transposed, threads):
    # out is a window of a larger NaN array: the masked strips and the last rows stay inside it
    rng = np.random.default_rng(5)
    m, k, n = 27, 30, 41
    a = rng.standard_normal((m, k)).astype(np.float32)
    b = rng.standard_normal((k, n)).astype(np.float32)
    canvas = np.full((m + 4, n + 9), np.nan, np.float32)
    out = canvas[2:2 + m, 3:3 + n]
    sgemm.matmul(a, np.ascontiguousarray(b.T).T if b_transposed else b, out, False, np.zeros(0, np.float32),
                 False, False)
    _check(out, *_reference(a, b, 0, 0, False, False, False))
    outside = np.ones(canvas.shape, bool)
    outside[2:2 + m, 3:3 + n] = False
    assert np.isnan(canvas[outside]).all()


@needs_sgemm
@pytest.mark.parametrize("panel_bytes", [1, 3000, 1 << 30], ids=["one-strip", "several", "one-panel"])
@pytest.mark.parametrize("b_transposed", [False, True], ids=["b", "bT"])
def test_b_panels_of_any_size_give_the_same_product(panel_bytes, b_transposed, threads):
    # b (k, n) taken in panels of one strip, of a few strips (the last one narrower), or whole: the panel
    # size is this CPU's L2 read at run time, so every split must give the product; a transposed b is
    # packed in those panels (more rows than STRIP_ROWS)
    rng = np.random.default_rng(7)
    m, k, n = sgemm.STRIP_ROWS + 9, 37, 5 * sgemm.NR + 3
    a = rng.standard_normal((m, k)).astype(np.float32)
    b = rng.standard_normal((k, n)).astype(np.float32)
    bias = rng.standard_normal(n).astype(np.float32)
    before = sgemm._PANEL_BYTES.value
    try:
        sgemm.set_panel_bytes(panel_bytes)
        for accumulate, use_bias, relu in [(False, False, False), (True, True, True)]:
            out0 = rng.standard_normal((m, n)).astype(np.float32)
            out = out0.copy()
            sgemm.matmul(a, np.ascontiguousarray(b.T).T if b_transposed else b, out, accumulate, bias, use_bias,
                         relu)
            _check(out, *_reference(a, b, out0, bias, accumulate, use_bias, relu))
    finally:
        sgemm.set_panel_bytes(before)


@needs_sgemm
@pytest.mark.parametrize("m,k,n", [(65, 300, 90), (300, 1100, 200)])  # rows > STRIP_ROWS (64)
def test_b_transposed_in_panels_gives_the_same_bits(m, k, n, threads):
    # packed panel by panel, a transposed b runs _rows's loop on _rows's panels and k slices: the same sums
    assert m > sgemm.STRIP_ROWS
    rng = np.random.default_rng(11)
    a = rng.standard_normal((m, k)).astype(np.float32)
    b = rng.standard_normal((k, n)).astype(np.float32)
    bias = rng.standard_normal(n).astype(np.float32)
    plain, packed = np.empty((m, n), np.float32), np.empty((m, n), np.float32)
    sgemm.matmul(a, b, plain, False, bias, True, True)
    sgemm.matmul(a, np.ascontiguousarray(b.T).T, packed, False, bias, True, True)
    assert np.array_equal(plain, packed)


@needs_sgemm
def test_panel_is_half_the_l2_the_os_reports():
    l2 = sgemm.l2_bytes()
    before = sgemm._PANEL_BYTES.value
    try:
        sgemm.set_panel_bytes()
        assert sgemm._PANEL_BYTES.value == (l2 // 2 if l2 else sgemm.DEFAULT_PANEL_BYTES)
    finally:
        sgemm.set_panel_bytes(before)
    if os.path.exists("/sys/devices/system/cpu/cpu0/cache"):
        assert l2 is None or l2 >= 64 * 1024  # every x86 CPU with AVX2 has an L2 of 256 KB or more


@needs_sgemm
def test_matmul_rows_computes_only_its_rows():
    rng = np.random.default_rng(6)
    a = rng.standard_normal((40, 19)).astype(np.float32)
    b = rng.standard_normal((19, 35)).astype(np.float32)
    out = np.full((40, 35), np.nan, np.float32)
    sgemm.matmul_rows(a, b, out, 5, 31, False, out[0], False, False)
    want, scale = _reference(a, b, 0, 0, False, False, False)
    _check(out[5:31], want[5:31], scale[5:31])
    assert np.isnan(out[:5]).all() and np.isnan(out[31:]).all()


@needs_sgemm
def test_relu_keeps_nan():
    # as np.maximum(x, 0): NaN stays NaN (a NaN bias reaches every row of its column), negatives become 0
    a = np.array([[1.0, -1.0], [-1.0, 2.0]], np.float32)
    bias = np.array([np.nan, 0.0], np.float32)
    out = np.empty((2, 2), np.float32)
    sgemm.matmul(a, np.eye(2, dtype=np.float32), out, False, bias, True, True)
    assert np.isnan(out[:, 0]).all()
    np.testing.assert_array_equal(out[:, 1], [0, 2])


@needs_sgemm
def test_supports_takes_the_layouts_it_can_read():
    a = np.ones((6, 5), np.float32)
    b = np.ones((5, 4), np.float32)
    out = np.ones((6, 4), np.float32)
    assert sgemm.supports(a, b, out)
    assert sgemm.supports(a.T.copy().T, b.T.copy().T, out)  # a transposed, b transposed
    assert sgemm.supports(a[:, :0], b[:0], out)  # k = 0: nothing is read
    assert not sgemm.supports(a, b, np.ones((6, 8), np.float32)[:, ::2])  # out not contiguous along n
    assert not sgemm.supports(a, np.ones((10, 8), np.float32)[::2, ::2], out)  # b contiguous along neither
    assert not sgemm.supports(a[::-1], b, out)  # negative strides
    assert not sgemm.supports(a[:0], b, out[:0])


@numba.njit(cache=True)
def _affine_compiled(a, b, bias, use_bias, relu, out):
    gemm.affine(a, b, bias, use_bias, relu, out)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("b_how", ["C", "T", "neither"])
def test_affine_dispatch_gives_the_same_numbers(dtype, b_how, threads):
    # float32 on readable layouts runs sgemm; b contiguous along neither axis and float64 go to BLAS
    rng = np.random.default_rng(7)
    a = rng.standard_normal((30, 20)).astype(dtype)
    b = rng.standard_normal((20, 25)).astype(dtype)
    bias = rng.standard_normal(25).astype(dtype)
    if b_how == "T":
        b_view = np.ascontiguousarray(b.T).T
    elif b_how == "neither":
        wide = np.zeros((40, 50), dtype)
        wide[::2, ::2] = b
        b_view = wide[::2, ::2]
    else:
        b_view = b
    out = np.full((30, 25), np.nan, dtype)
    _affine_compiled(a, b_view, bias, True, True, out)
    _check(out, *_reference(a, b, 0, bias, False, True, True))


def test_products_use_numbas_threads_until_configured():
    # the Python API never calls configure_threads: products start at Numba's count, as BLAS does at its own
    import subprocess
    import sys

    code = ("import numba; from specc.kernels import native, product_threads; n = numba.get_num_threads(); "
            "print(product_threads() == n and (native.sgemm is None or native.sgemm.threads() == n))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "True"


def test_the_loaded_variant_is_the_targets():
    # mode, flags and modules agree with vector_isa: 512-bit tiles only where Numba compiles for this
    # AVX-512 CPU, 256-bit tiles where the target has AVX2 and FMA (sgemm's and conv_pool_tiles' both),
    # else BLAS alone
    if not native.ENABLED:
        pytest.skip("native kernels off (SPECC_NATIVE=0, or they failed to load)")
    mode = native.mode()
    assert mode == (native.vector_isa() or "native")
    assert (native.AVX512, native.AVX2) == (mode == "avx512", mode == "avx2")
    assert (sgemm is not None) == (mode in ("avx512", "avx2"))
    assert (native.conv_pool_tiles is not None) == (mode in ("avx512", "avx2"))
    if native.conv_pool_tiles is not None:
        assert native.conv_pool_tiles.FORWARD_COLS == {"avx512": 32, "avx2": 8}[mode]
    if sgemm is not None:
        assert (sgemm.ISA, sgemm.LANES, sgemm.MR, sgemm.NR) == {"avx512": ("avx512", 16, 14, 32),
                                                               "avx2": ("avx2", 8, 6, 16)}[mode]


_X86 = platform.machine().lower() in ("x86_64", "amd64")


@pytest.fixture
def numba_target(monkeypatch):
    """Sets the CPU name and features Numba compiles for, as NUMBA_CPU_NAME / NUMBA_CPU_FEATURES would, for
    vector_isa only (what is loaded stays)."""
    def set_target(name, features):
        monkeypatch.setattr(numba.config, "CPU_NAME", name)
        monkeypatch.setattr(numba.config, "CPU_FEATURES", features)
        native.vector_isa.cache_clear()
        return native.vector_isa()

    yield set_target
    monkeypatch.undo()
    native.vector_isa.cache_clear()


@pytest.mark.skipif(not _X86, reason="x86 vector ISAs")
def test_vector_isa_follows_the_cpu_numba_compiles_for(numba_target):
    host = llvmlite.binding.get_host_cpu_name()
    features = llvmlite.binding.get_host_cpu_features()
    host_avx2 = "avx2" if features.get("avx2") and features.get("fma") else None
    assert numba_target("haswell", "") == "avx2"  # Haswell's own features
    assert numba_target("znver3", "") == "avx2"
    assert numba_target("haswell", "-fma") is None
    assert numba_target("sandybridge", "") is None  # AVX without AVX2 or FMA
    assert numba_target("generic", "") is None
    # AVX-512 only for this very CPU; a named one compiles its AVX-512 too, but gets the AVX2 tiles
    assert numba_target("skylake-avx512", "") == ("avx512" if host == "skylake-avx512" else "avx2")
    # the name alone keeps this CPU's feature list, so this CPU's ISA up to AVX2
    assert numba_target("haswell", None) == ("avx2" if features.get("avx512f") else host_avx2)
    assert numba_target(None, None) == ("avx512" if features.get("avx512f") else host_avx2)


@pytest.mark.skipif(not _X86 or not (llvmlite.binding.get_host_cpu_features().get("avx2")
                                     and llvmlite.binding.get_host_cpu_features().get("fma")),
                    reason="runs AVX2 code")
def test_avx2_variant_where_numba_compiles_for_a_haswell():
    # the 256-bit tiles on this CPU, compiled as for a Haswell: every tile and strip shape, a plain and
    # transposed, b plain and transposed, the epilogue, 2 threads
    import subprocess
    import sys

    code = """
import numpy as np
from specc.kernels import configure_threads, native
sg = native.sgemm
assert native.mode() == "avx2" and sg.LANES == 8 and sg.MR == 6 and native.conv_pool_tiles.LANES == 8, native.mode()
configure_threads(2)
rng = np.random.default_rng(0)
worst = 0.0
for m, k, n in [(1, 1, 1), (3, 5, 7), (5, 8, 9), (11, 3, 16), (13, 9, 33), (25, 17, 47), (8, 0, 20),
                (18, 450, 256), (300, 100, 70), (20, 1100, 40), (40, 600, 70)]:
    a = rng.standard_normal((m, k)).astype(np.float32)
    b = rng.standard_normal((k, n)).astype(np.float32)
    bias = rng.standard_normal(n).astype(np.float32)
    for a_view, b_view in ((a, b), (np.ascontiguousarray(a.T).T, np.ascontiguousarray(b.T).T)):
        out0 = rng.standard_normal((m, n)).astype(np.float32)
        out = out0.copy()
        sg.matmul(a_view, b_view, out, True, bias, True, True)
        want = np.maximum(a.astype(np.float64) @ b + out0 + bias, 0)
        scale = np.abs(a.astype(np.float64)) @ np.abs(b) + np.abs(out0) + np.abs(bias) + 1e-30
        worst = max(worst, float((np.abs(out - want) / scale).max()))
print(worst)
"""
    env = dict(os.environ, NUMBA_CPU_NAME="haswell", NUMBA_CPU_FEATURES="", SPECC_NATIVE="1")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert float(proc.stdout.strip().splitlines()[-1]) <= 1e-5
