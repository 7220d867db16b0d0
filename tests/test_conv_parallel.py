"""The parallel convolution and pooling kernels: bit-for-bit the same results at 1 and 2 threads, and a
batch cut into many chunks gives what its samples give one at a time (the per-chunk partial sums of the
kernel and bias gradients add up). One table of layers, run through the engine.

Finite differences (tests/test_gradcheck_conv.py) and PyTorch (tests/test_reference_conv.py) check the
maths on batches small enough to be one chunk; these check the chunking.
"""

from __future__ import annotations

import numba
import numpy as np
import pytest

from .gradcheck import build

IMG1, IMG5 = [[11, 10, 1]], [[9, 8, 5]]  # one channel (tap-major windows) and five (row-major windows)


def conv2d(**kw):
    return {"type": "Conv2D", "filters": 4, "kernel_size": [3, 3], **kw}


# (id, layer, input shapes)
CASES = [
    ("conv_c1_valid", conv2d(), IMG1),
    ("conv_c1_same_strided", conv2d(padding="same", strides=[2, 3]), IMG1),
    ("conv_c1_same_dilated", conv2d(padding="same", dilation_rate=2), IMG1),
    ("conv_c5_valid", conv2d(), IMG5),
    ("conv_c5_same_strided", conv2d(padding="same", strides=2, kernel_size=[4, 3]), IMG5),
    ("conv_c5_no_bias_dilated", conv2d(use_bias=False, dilation_rate=[2, 1]), IMG5),
    ("conv_pointwise", conv2d(kernel_size=[1, 1]), IMG5),
    ("conv1d_causal", {"type": "Conv1D", "filters": 3, "kernel_size": 3, "padding": "causal"}, [[12, 2]]),
    (
        "deconv_same_strided",
        {"type": "Conv2DTranspose", "filters": 3, "kernel_size": [3, 3], "strides": 2, "padding": "same"},
        IMG5,
    ),
    ("separable", {"type": "SeparableConv2D", "filters": 4, "kernel_size": [3, 3]}, IMG5),
    ("maxpool", {"type": "MaxPooling2D", "pool_size": 2}, IMG5),
    (
        "maxpool_overlapping_same",
        {"type": "MaxPooling2D", "pool_size": 3, "strides": 2, "padding": "same"},
        IMG5,
    ),
    ("avgpool_same", {"type": "AveragePooling2D", "pool_size": 3, "strides": 2, "padding": "same"}, IMG5),
    ("global_max", {"type": "GlobalMaxPooling2D"}, IMG5),
]

BATCH = 37  # odd, and large enough for many chunks


def run(layer, shapes, dtype, threads, xs=None):
    """Output, parameter gradients and input gradient of loss = sum(R * y) on `threads` Numba threads."""
    engine = build(layer, shapes)
    if dtype != np.float64:
        params = engine.params
        engine = type(engine)(engine.graph, dtype)
        engine.params[...] = params
    rng = np.random.default_rng(3)
    engine.params[...] += rng.standard_normal(engine.params.shape).astype(dtype) * 0.1
    if xs is None:
        xs = [rng.standard_normal((BATCH, *shapes[0])).astype(dtype)]
    previous = numba.get_num_threads()
    numba.set_num_threads(threads)
    try:
        out = engine.forward(xs, training=True)[0]
        r = np.random.default_rng(4).standard_normal(out.shape).astype(dtype)
        engine.backward([r])
    finally:
        numba.set_num_threads(previous)
    return out, engine.grads.copy(), engine._input_grads[engine.input_names[0]], xs


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="needs two Numba threads")
@pytest.mark.parametrize("layer,shapes", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_same_bits_at_one_and_two_threads(layer, shapes):
    one = run(layer, shapes, np.float32, 1)
    two = run(layer, shapes, np.float32, 2, xs=one[3])
    for a, b in zip(one[:3], two[:3]):
        assert np.array_equal(a, b)


@pytest.mark.parametrize("layer,shapes", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_a_chunked_batch_matches_its_samples_one_by_one(layer, shapes):
    out, grads, dx, xs = run(layer, shapes, np.float64, 2)
    r = np.random.default_rng(4).standard_normal(out.shape)
    engine = build(layer, shapes)
    rng = np.random.default_rng(3)
    engine.params[...] += rng.standard_normal(engine.params.shape) * 0.1
    total = np.zeros_like(grads)
    for i in range(BATCH):
        y = engine.forward([xs[0][i : i + 1]], training=True)[0]
        np.testing.assert_allclose(y, out[i : i + 1], rtol=1e-12, atol=1e-12)
        engine.backward([r[i : i + 1]])
        total += engine.grads
        np.testing.assert_allclose(
            engine._input_grads[engine.input_names[0]], dx[i : i + 1], rtol=1e-12, atol=1e-12
        )
    np.testing.assert_allclose(total, grads, rtol=1e-10, atol=1e-12)


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="needs two Numba threads")
def test_both_window_layouts_share_one_compile_of_the_parallel_loop():
    # A 1-channel input (tap-major windows) and a 5-channel one (row-major) run through the same compiled
    # parallel loop and range kernels: the layout is a run-time choice, so an RGB model's first layer does
    # not compile the whole backward chain a second time.
    from specc.kernels import conv

    def counts():
        return [len(kernel.signatures) for kernel in (conv._split, conv._backward_range, conv._backward_rows)]

    run(conv2d(), IMG1, np.float32, 2)  # whatever this worker compiled before, float32 is in now
    before = counts()
    for shapes in (IMG1, IMG5):
        run(conv2d(padding="same"), shapes, np.float32, 2)
    assert counts() == before
