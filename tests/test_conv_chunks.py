"""Conv's chunking (specc/kernels/conv.py `_chunking`, forward and backward): the per-chunk partial kernel
gradients stay within the batch's own windows and outputs, so a kernel large against the batch's rows (a
late ResNet stage) is read by two chunks and keeps two partials, not sixteen, and one scratch serves every
layer of a workspace; the results still equal a float64 reference and are the same bits at 1 and 2
threads.
"""

from __future__ import annotations

import numba
import numpy as np
import pytest

from specc.kernels.conv import MIN_CHUNKS, _chunking
from specc.workspace import Workspace, shared_scratch

from .gradcheck import build

# (N, rows per sample, K, F): ResNet-50 at 64x64 (last stage 3x3 and 1x1, third stage), ResNet-20's first
# stage, and a batch of one.
SHAPES = [(32, 4, 4608, 512), (32, 4, 2048, 512), (32, 16, 2304, 256), (32, 1024, 144, 16), (1, 4, 4608, 512)]


@pytest.mark.parametrize("n,rows,k,f", SHAPES)
def test_partial_kernel_gradients_stay_within_the_batchs_activations(n, rows, k, f):
    spc, chunks = _chunking(n, rows, k, f, 4)
    assert spc * chunks >= n > spc * (chunks - 1)
    assert chunks * k * f <= max(2 * k * f, n * rows * (k + f))
    assert chunks >= min(2, n)  # two threads still share the batch


def test_a_large_kernel_is_read_by_few_chunks_and_small_kernels_keep_theirs():
    assert _chunking(32, 4, 4608, 512, 4) == (16, 2)  # ResNet-50's last stage at 64x64: two chunks of 16
    assert _chunking(32, 1024, 144, 16, 4)[1] >= MIN_CHUNKS  # ResNet-20's first stage: the cache rule alone


def test_one_scratch_for_every_layer_grown_to_the_largest():
    ws = Workspace()
    with ws.active():
        ws.owner = "conv"
        small = shared_scratch("windows", (2, 3), np.float32)
        ws.owner = "conv_1"
        large = shared_scratch("windows", (4, 5), np.float32)
        ws.owner = "conv_2"
        again = shared_scratch("windows", (2, 3), np.float32)
    assert small.shape == again.shape == (2, 3) and large.shape == (4, 5)
    assert np.shares_memory(large, again)
    assert ws.nbytes == large.nbytes


# Valid 3x3 on 4x4x48: 2x2 positions, K = 432 against F = 32, a batch of 37 -> a few chunks, not 16.
LAYER, SHAPE, BATCH = {"type": "Conv2D", "filters": 32, "kernel_size": 3}, [4, 4, 48], 37


def gradients(dtype, threads, x, r):
    engine = build(LAYER, [SHAPE])
    params = engine.params.copy()
    if dtype != np.float64:
        engine = type(engine)(engine.graph, dtype)
        engine.params[...] = params
    previous = numba.get_num_threads()
    numba.set_num_threads(threads)
    try:
        engine.forward([x.astype(dtype)], training=True)
        engine.backward([r.astype(dtype)])
    finally:
        numba.set_num_threads(previous)
    return engine.grads.copy(), engine._input_grads[engine.input_names[0]].copy(), params


def test_large_kernel_small_batch_matches_float64_reference_and_thread_counts():
    assert _chunking(BATCH, 4, 432, 32, 4)[1] < MIN_CHUNKS
    rng = np.random.default_rng(0)
    x = rng.standard_normal((BATCH, *SHAPE))
    r = rng.standard_normal((BATCH, 2, 2, 32))
    grads, dx, params = gradients(np.float32, 1, x, r)
    kernel = params[: 3 * 3 * 48 * 32].reshape(3, 3, 48, 32)
    # loss = sum(r * y), y[n, i, j] = sum over taps (a, b) of x[n, i + a, j + b] @ kernel[a, b] + bias
    windows = np.stack([np.stack([x[:, a : a + 2, b : b + 2] for b in range(3)], 1) for a in range(3)], 1)
    dkernel = np.einsum("nabijc,nijf->abcf", windows, r)
    dx_ref = np.zeros_like(x)
    for a in range(3):
        for b in range(3):
            dx_ref[:, a : a + 2, b : b + 2] += np.einsum("nijf,cf->nijc", r, kernel[a, b])
    np.testing.assert_allclose(grads, np.concatenate([dkernel.ravel(), r.sum((0, 1, 2))]), rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(dx, dx_ref, rtol=1e-4, atol=1e-4)
    if numba.config.NUMBA_NUM_THREADS >= 2:
        two = gradients(np.float32, 2, x, r)
        assert np.array_equal(grads, two[0]) and np.array_equal(dx, two[1])
