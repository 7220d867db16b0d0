"""kernels.conv in float32 against a float64 NumPy convolution written here, for the geometries that take
the direct tiles (native/conv_tiles.py: forward at stride 1 up to 64 filters, strided up to 16;
backward at stride 1, or without the input gradient) and those next to them that keep im2col + GEMM. Run in each mode (AVX-512, AVX2 with
NUMBA_CPU_NAME=haswell NUMBA_CPU_FEATURES=, portable with SPECC_NATIVE=0), the same table checks each
path; the finite-difference checks of the layers (float64) are in test_gradcheck_conv.py."""

from __future__ import annotations

import numpy as np
import pytest

from specc.kernels import conv, native


def geometry(h, w, k, stride, dilation, padding):
    """(g, Ho, Wo) as the layers compute them (Keras 'valid' / 'same')."""
    (kh, kw), (sh, sw), (dh, dw) = k, stride, dilation
    ekh, ekw = (kh - 1) * dh + 1, (kw - 1) * dw + 1
    if padding == "same":
        ho, wo = -(-h // sh), -(-w // sw)
        ph = max((ho - 1) * sh + ekh - h, 0) // 2
        pw = max((wo - 1) * sw + ekw - w, 0) // 2
    else:
        ho, wo, ph, pw = (h - ekh) // sh + 1, (w - ekw) // sw + 1, 0, 0
    return (kh, kw, sh, sw, dh, dw, ph, pw), ho, wo


def windows(x, g, ho, wo):
    """x (N, H, W, C) -> its windows (N, Ho, Wo, kh, kw, C), float64, zeros in the padding."""
    kh, kw, sh, sw, dh, dw, ph, pw = g
    n, h, w, c = x.shape
    xp = np.zeros((n, h + 2 * ph + kh * dh + sh, w + 2 * pw + kw * dw + sw, c))
    xp[:, ph : ph + h, pw : pw + w] = x
    out = np.empty((n, ho, wo, kh, kw, c))
    for i in range(kh):
        for j in range(kw):
            out[:, :, :, i, j] = xp[:, i * dh : i * dh + sh * ho : sh, j * dw : j * dw + sw * wo : sw][:, :ho, :wo]
    return out


def reference(x, kernel, bias, dy, g, ho, wo, relu):
    """Forward output and, for loss = sum(dy * out), the kernel, bias and input gradients, in float64."""
    kh, kw, sh, sw, dh, dw, ph, pw = g
    n, h, w, c = x.shape
    cols = windows(x.astype(np.float64), g, ho, wo).reshape(n, ho, wo, -1)
    z = cols @ kernel.astype(np.float64) + bias
    out = np.maximum(z, 0) if relu else z
    dz = dy * (z > 0) if relu else dy.astype(np.float64)
    dk = np.einsum("nhwk,nhwf->kf", cols, dz)
    db = dz.sum(axis=(0, 1, 2))
    dcols = (dz @ kernel.astype(np.float64).T).reshape(n, ho, wo, kh, kw, c)
    dxp = np.zeros((n, h + 2 * ph + kh * dh + sh, w + 2 * pw + kw * dw + sw, c))
    for i in range(kh):
        for j in range(kw):
            dxp[:, i * dh : i * dh + sh * ho : sh, j * dw : j * dw + sw * wo : sw][:, :ho, :wo] += dcols[:, :, :, i, j]
    return out, dk, db, dxp[:, ph : ph + h, pw : pw + w]


# (id, N, H, W, C, F, kernel, strides, dilation, padding)
CASES = [
    ("c16_f16_same", 2, 10, 9, 16, 16, (3, 3), (1, 1), (1, 1), "same"),  # the ResNet block, full strips
    ("c5_f13_same_batch1", 1, 7, 19, 5, 13, (3, 3), (1, 1), (1, 1), "same"),  # masked strips; 19 = 16 + 2 + 1
    ("c3_f16_first_layer", 3, 9, 8, 3, 16, (3, 3), (1, 1), (1, 1), "same"),  # 3 channels: 2 + 1 taps per tile
    ("c20_f7_valid_non_square", 2, 8, 11, 20, 7, (2, 3), (1, 1), (1, 1), "valid"),  # 20 channels: 16 + 4
    ("c4_f16_dilated_same", 2, 12, 12, 4, 16, (3, 3), (1, 1), (2, 2), "same"),
    ("c6_f16_strided_same", 3, 9, 10, 6, 16, (3, 3), (2, 2), (1, 1), "same"),  # forward direct, dx by GEMM
    ("c16_f24_strided_valid", 2, 9, 9, 16, 24, (3, 3), (2, 2), (1, 1), "valid"),  # 16 + 8 filters
    ("c17_f16_pointwise_strided", 2, 8, 8, 17, 16, (1, 1), (2, 2), (1, 1), "valid"),
    ("c16_f40_same", 2, 6, 7, 16, 40, (3, 3), (1, 1), (1, 1), "same"),  # a 32-filter strip (AVX-512) + 8
    ("c32_f64_same", 2, 5, 17, 32, 64, (3, 3), (1, 1), (1, 1), "same"),  # full-size tiles on 32 and 64 steps
    ("c16_f32_strided_same", 2, 9, 9, 16, 32, (3, 3), (2, 2), (1, 1), "same"),  # strided and wide: GEMM
    ("c33_f16_5x5_same", 1, 9, 9, 33, 16, (5, 5), (1, 1), (1, 1), "same"),
]


@pytest.mark.parametrize("relu", [False, True], ids=["linear", "relu"])
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_matches_float64_reference(case, relu):
    _, n, h, w, c, f, k, stride, dilation, padding = case
    g, ho, wo = geometry(h, w, k, stride, dilation, padding)
    rng = np.random.default_rng(7)
    x = rng.standard_normal((n, h, w, c)).astype(np.float32)
    kernel = rng.standard_normal((k[0] * k[1] * c, f)).astype(np.float32)
    bias = rng.standard_normal(f).astype(np.float32)
    dy = rng.standard_normal((n, ho, wo, f)).astype(np.float32)
    out_ref, dk_ref, db_ref, dx_ref = reference(x, kernel, bias, dy, g, ho, wo, relu)

    out = np.empty((n, ho, wo, f), np.float32)
    conv.conv_forward(x, kernel, bias, True, g, out, relu)
    scale = np.sqrt(k[0] * k[1] * c)  # float32 rounding grows with the length of each sum
    np.testing.assert_allclose(out, out_ref, rtol=1e-5, atol=2e-6 * scale)

    for need_dx in (True, False):
        dk, db = np.full_like(kernel, np.nan), np.full_like(bias, np.nan)
        dx = np.full_like(x, np.nan)
        conv.conv_backward(x, kernel, dy, True, True, need_dx, g, dk, db, dx, out if relu else None)
        rows = np.sqrt(n * ho * wo)
        np.testing.assert_allclose(dk, dk_ref, rtol=1e-5, atol=2e-6 * rows)
        np.testing.assert_allclose(db, db_ref, rtol=1e-5, atol=2e-6 * rows)
        if need_dx:
            np.testing.assert_allclose(dx, dx_ref, rtol=1e-5, atol=2e-6 * np.sqrt(k[0] * k[1] * f))


def test_results_do_not_depend_on_the_thread_count():
    """Per-chunk partial sums added in chunk order: the same bits on one thread as on two."""
    import numba

    from specc.kernels import configure_threads

    g, ho, wo = geometry(16, 16, (3, 3), (1, 1), (1, 1), "same")
    rng = np.random.default_rng(1)
    x = rng.standard_normal((19, 16, 16, 16)).astype(np.float32)
    kernel = rng.standard_normal((144, 16)).astype(np.float32)
    dy = rng.standard_normal((19, ho, wo, 16)).astype(np.float32)
    results = []
    before = numba.get_num_threads()
    try:
        for threads in (1, 2):
            configure_threads(threads)
            out = np.empty((19, ho, wo, 16), np.float32)
            conv.conv_forward(x, kernel, np.zeros(16, np.float32), False, g, out, True)
            dk, db, dx = np.empty_like(kernel), np.empty(16, np.float32), np.empty_like(x)
            conv.conv_backward(x, kernel, dy, True, True, True, g, dk, db, dx, out)
            results.append((out, dk, db, dx))
    finally:
        configure_threads(before)
    for a, b in zip(*results):
        assert np.array_equal(a, b)


def test_the_tiles_load_with_the_vector_kernels():
    """conv_tiles is there exactly when sgemm's micro-kernels are (AVX-512 or AVX2 with FMA)."""
    assert (native.conv_tiles is not None) == (native.AVX512 or native.AVX2)
