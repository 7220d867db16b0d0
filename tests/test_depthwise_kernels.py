"""kernels/depthwise.py against a float64 NumPy reference written from the definition of a depthwise
convolution (Keras/TF: output channel c * m + q = sum over taps of x[channel c] * kernel[i, j, c, q]), and its
backward against the reference's adjoint; through the layer, against finite differences; and bit for bit
at one and two threads. Odd channel counts (not a multiple of any vector width), strides, dilation,
padding before and after, multipliers and a batch of one."""

from __future__ import annotations

import numba
import numpy as np
import pytest

from specc.kernels import depthwise

from .gradcheck import check


def geometry(k, s, d, padding, h, w):
    """(g, Ho, Wo) as Keras computes them: 'same' pads (total) max((out - 1) * s + extent - size, 0), the
    smaller half before."""
    kh, kw = k
    sh, sw = s
    dh, dw = d
    eh, ew = (kh - 1) * dh + 1, (kw - 1) * dw + 1
    if padding == "same":
        ho, wo = -(-h // sh), -(-w // sw)
        pt = max((ho - 1) * sh + eh - h, 0) // 2
        pl = max((wo - 1) * sw + ew - w, 0) // 2
    else:
        ho, wo = (h - eh) // sh + 1, (w - ew) // sw + 1
        pt = pl = 0
    return (kh, kw, sh, sw, dh, dw, pt, pl), ho, wo


def reference(x, kernel, bias, g, ho, wo):
    """Forward and a function giving (dkernel, dbias, dx) from dy, all float64, by explicit loops over taps."""
    kh, kw, sh, sw, dh, dw, pt, pl = g
    n, h, w, c = x.shape
    m = kernel.shape[3]
    x = x.astype(np.float64)
    k = kernel.astype(np.float64)
    padded = np.zeros((n, h + kh * dh + ho * sh, w + kw * dw + wo * sw, c))
    padded[:, pt:pt + h, pl:pl + w] = x

    def window(i, j):  # (N, Ho, Wo, C): the input each output position meets at tap (i, j)
        return padded[:, i * dh:i * dh + (ho - 1) * sh + 1:sh, j * dw:j * dw + (wo - 1) * sw + 1:sw]

    out = np.zeros((n, ho, wo, c, m))
    for i in range(kh):
        for j in range(kw):
            out += window(i, j)[..., None] * k[i, j]
    out = out.reshape(n, ho, wo, c * m) + bias

    def backward(dy):
        d = dy.astype(np.float64).reshape(n, ho, wo, c, m)
        dk = np.zeros_like(k)
        dpad = np.zeros_like(padded)
        for i in range(kh):
            for j in range(kw):
                dk[i, j] = np.einsum("nhwc,nhwcq->cq", window(i, j), d)
                dpad[:, i * dh:i * dh + (ho - 1) * sh + 1:sh, j * dw:j * dw + (wo - 1) * sw + 1:sw] += (d * k[i, j]).sum(-1)
        return dk, d.sum(axis=(0, 1, 2)).reshape(-1), dpad[:, pt:pt + h, pl:pl + w]

    return out, backward


# (id, batch, H, W, C, multiplier, kernel, strides, dilation, padding)
CASES = [
    ("3x3_same_c5", 3, 7, 9, 5, 1, (3, 3), (1, 1), (1, 1), "same"),
    ("3x3_valid_c17", 2, 8, 6, 17, 1, (3, 3), (1, 1), (1, 1), "valid"),
    ("3x3_stride2_same_c19", 2, 9, 8, 19, 1, (3, 3), (2, 2), (1, 1), "same"),
    ("3x3_stride2_valid_c48", 2, 11, 10, 48, 1, (3, 3), (2, 2), (1, 1), "valid"),
    ("multiplier2_stride2_same", 2, 8, 8, 3, 2, (3, 3), (2, 2), (1, 1), "same"),
    ("multiplier3_valid", 2, 6, 7, 5, 3, (3, 3), (1, 1), (1, 1), "valid"),
    ("batch1_c1", 1, 5, 5, 1, 1, (3, 3), (1, 1), (1, 1), "same"),
    ("5x5_stride3_same", 2, 11, 13, 7, 1, (5, 5), (3, 3), (1, 1), "same"),
    ("2x3_stride2x1_valid", 2, 7, 8, 6, 1, (2, 3), (2, 1), (1, 1), "valid"),
    ("dilated2_same", 1, 9, 9, 4, 1, (3, 3), (1, 1), (2, 2), "same"),
    ("dilated2_stride2_valid", 2, 12, 11, 3, 2, (3, 3), (2, 2), (2, 2), "valid"),
    ("kernel_wider_than_input_same", 2, 2, 3, 9, 1, (5, 5), (1, 1), (1, 1), "same"),
    # rows of several segments (40 x 40 values, depthwise.SEGMENT_VALUES), and a stride-1 layer with
    # depthwise.ROW_CHANNELS channels or more (one position at a time)
    ("3x3_same_row_segments_c40", 1, 4, 40, 40, 1, (3, 3), (1, 1), (1, 1), "same"),
    ("3x3_same_c67", 2, 5, 6, 67, 1, (3, 3), (1, 1), (1, 1), "same"),
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_matches_the_reference(case, dtype):
    _, n, h, w, c, m, k, s, d, padding = case
    g, ho, wo = geometry(k, s, d, padding, h, w)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, h, w, c)).astype(dtype)
    kernel = rng.standard_normal((*k, c, m)).astype(dtype)
    bias = rng.standard_normal(c * m).astype(dtype)
    dy = rng.standard_normal((n, ho, wo, c * m)).astype(dtype)
    want, want_backward = reference(x, kernel, bias, g, ho, wo)
    dk_want, db_want, dx_want = want_backward(dy)
    tol = dict(rtol=1e-4, atol=1e-4) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-12)
    for use_bias in (True, False):
        out = np.full((n, ho, wo, c * m), np.nan, dtype)
        depthwise.forward(x, kernel, bias, use_bias, g, out)
        np.testing.assert_allclose(out, want if use_bias else want - bias, **tol)
        dk = np.full_like(kernel, np.nan)
        db = np.full_like(bias, np.nan)
        dx = np.full_like(x, np.nan)
        depthwise.backward(x, kernel, dy, use_bias, g, dk, db, dx)
        np.testing.assert_allclose(dk, dk_want, **tol)
        np.testing.assert_allclose(dx, dx_want, **tol)
        if use_bias:
            np.testing.assert_allclose(db, db_want, **tol)
    dk_only = np.full_like(kernel, np.nan)
    depthwise.backward(x, kernel, dy, False, g, dk_only, np.empty_like(bias), np.empty_like(x), need_dx=False)
    np.testing.assert_allclose(dk_only, dk_want, **tol)


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="needs two Numba threads")
def test_same_bits_at_one_and_two_threads():
    from specc.kernels import configure_threads, thread_count

    g, ho, wo = geometry((3, 3), (2, 2), (1, 1), "same", 10, 9)
    rng = np.random.default_rng(3)
    x = rng.standard_normal((19, 10, 9, 13)).astype(np.float32)  # 19 samples: chunks of unequal shares
    kernel = rng.standard_normal((3, 3, 13, 2)).astype(np.float32)
    dy = rng.standard_normal((19, ho, wo, 26)).astype(np.float32)
    previous = thread_count()
    results = []
    try:
        for threads in (1, 2):
            configure_threads(threads)
            out = np.empty((19, ho, wo, 26), np.float32)
            depthwise.forward(x, kernel, np.ones(26, np.float32), True, g, out)
            dk, db, dx = np.empty_like(kernel), np.empty(26, np.float32), np.empty_like(x)
            depthwise.backward(x, kernel, dy, True, g, dk, db, dx)
            results.append((out, dk, db, dx))
    finally:
        configure_threads(previous)
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b)


IMG = [[7, 6, 5]]


@pytest.mark.parametrize("layer", [
    {"type": "DepthwiseConv2D", "kernel_size": 3, "strides": 2, "padding": "same", "depth_multiplier": 2},
    {"type": "DepthwiseConv2D", "kernel_size": [3, 2], "strides": [1, 2], "padding": "valid", "dilation_rate": 1},
    {"type": "SeparableConv2D", "filters": 3, "kernel_size": 3, "strides": 2, "padding": "same"},
], ids=["depthwise_multiplier2_stride2", "depthwise_3x2_stride1x2", "separable_stride2_same"])
def test_layer_gradient_matches_finite_differences(layer):
    check(layer, IMG, batch=1)
