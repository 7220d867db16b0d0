"""kernels/norm.py's BatchNormalization passes against float64 NumPy written from the definitions (batch
mean and biased variance per channel; out = act(x * scale + offset); the sums of dz and dz * (x - mean), dz
= dy where the fused activation passes; dx = k * dz + c0 - c1 * (x - mean)), over channel counts that are
and are not a multiple of a vector width, row counts that leave a partial tile and a partial chunk, each
fused activation; and through the layer, the same outputs, gradients and moving statistics at one and two
threads."""

from __future__ import annotations

import numba
import numpy as np
import pytest

from specc.kernels import norm

ACTS = [norm.ACT_NONE, norm.ACT_RELU, norm.ACT_RELU6]


def passes(out, act):
    """Where the fused activation passes the gradient, from its output."""
    if act == norm.ACT_RELU:
        return out > 0
    if act == norm.ACT_RELU6:
        return (out > 0) & (out < 6)
    return np.ones_like(out, bool)


@pytest.mark.parametrize("act", ACTS, ids=["none", "relu", "relu6"])
@pytest.mark.parametrize("rows,channels", [(7, 1), (301, 3), (2053, 16), (999, 17), (64, 48), (45, 144),
                                           (9, 1280)])
def test_passes_match_float64(rows, channels, act):
    rng = np.random.default_rng(rows * channels)
    x = (rng.standard_normal((rows, channels)) * 2 + 3).astype(np.float32)
    dy = rng.standard_normal((rows, channels)).astype(np.float32)
    per, chunks = norm.batch_chunking(rows, channels)
    x64 = x.astype(np.float64)

    s1, s2 = np.empty((chunks, channels)), np.empty((chunks, channels))
    norm.batch_sums_range(x, x[0].copy(), per, 0, chunks, s1, s2)
    mean, var = np.empty(channels), np.empty(channels)
    norm.batch_moments(s1, s2, x[0].copy(), rows, mean, var)
    np.testing.assert_allclose(mean, x64.mean(axis=0), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(var, x64.var(axis=0), rtol=1e-5, atol=1e-6)

    scale = rng.uniform(0.5, 2, channels).astype(np.float32)
    offset = rng.uniform(-1, 4, channels).astype(np.float32)
    out = np.full_like(x, np.nan)
    norm.batch_affine_range(x, scale, offset, act, per, 0, chunks, out)
    want = x64 * scale + offset
    if act == norm.ACT_RELU:
        want = np.maximum(want, 0)
    elif act == norm.ACT_RELU6:
        want = np.clip(want, 0, 6)
    np.testing.assert_allclose(out, want, rtol=1e-6, atol=1e-5)

    m32 = mean.astype(np.float32)
    dz = np.where(passes(out, act), dy.astype(np.float64), 0.0)
    norm.batch_grad_sums_range(dy, x, m32, scale, offset, act, per, 0, chunks, s1, s2)
    np.testing.assert_allclose(s1.sum(axis=0), dz.sum(axis=0), rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(s2.sum(axis=0), (dz * (x64 - m32)).sum(axis=0), rtol=1e-5, atol=1e-4)

    k, c0, c1 = (rng.standard_normal(channels).astype(np.float32) for _ in range(3))
    dx = np.full_like(x, np.nan)
    norm.batch_dx_range(dy, x, m32, scale, offset, k, c0, c1, act, per, 0, chunks, dx)
    np.testing.assert_allclose(dx, k * dz + c0 - c1 * (x64 - m32), rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="needs two Numba threads")
@pytest.mark.parametrize("channels", [5, 48])
def test_layer_same_bits_at_one_and_two_threads(channels):
    import json

    from specc.engine import Engine
    from specc.kernels import configure_threads, thread_count
    from specc.spec import load_spec_text

    spec, errors = load_spec_text(json.dumps({"specc": 1, "seed": 0, "model": {
        "input": [9, 7, channels], "layers": [{"type": "BatchNormalization"},
                                              {"type": "Activation", "activation": "relu6"}]}}), "m.yaml")
    assert not errors
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((23, 9, 7, channels)) * 3).astype(np.float32)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    previous = thread_count()
    results = []
    try:
        for threads in (1, 2):
            configure_threads(threads)
            engine = Engine(spec.graph)
            engine.initialize(0)
            out = engine.forward([x], training=True)[0].copy()
            engine.backward([dy])
            results.append((out, engine.grads.copy(), engine.params.copy()))
    finally:
        configure_threads(previous)
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b)
