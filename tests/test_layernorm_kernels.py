"""LayerNormalization's kernels (kernels/layernorm.py) against a float64 NumPy reference of Keras's
definition (mean and biased variance over the last axis, then gamma * xhat + beta), on arrays cut into
several chunks; the same bits at one and two threads; and the layer, whose inference and training
forwards agree and whose backward follows the latest forward.

Finite differences through the layer are in tests/test_gradcheck_misc.py, Keras in test_reference_misc.py."""

from __future__ import annotations

import numba
import numpy as np
import pytest

from specc.kernels import layernorm

from .gradcheck import build


def reference(x, gamma, beta, eps, dy):
    x, gamma, beta, dy = (a.astype(np.float64) for a in (x, gamma, beta, dy))
    mean = x.mean(-1, keepdims=True)
    inv = 1 / np.sqrt(((x - mean) ** 2).mean(-1, keepdims=True) + eps)
    xhat = (x - mean) * inv
    g = dy * gamma
    dx = inv * (g - g.mean(-1, keepdims=True) - xhat * (g * xhat).mean(-1, keepdims=True))
    return xhat * gamma + beta, (dy * xhat).sum(0), dy.sum(0), dx


def operands(dtype, rows, c, seed=0):
    rng = np.random.default_rng(seed)
    x = (rng.normal(size=(rows, c)) * 3 + 5).astype(dtype)  # a mean large against the spread
    return x, *(rng.normal(size=c).astype(dtype) for _ in range(2)), rng.normal(size=(rows, c)).astype(dtype)


def run(x, gamma, beta, eps, dy, need_dx=True):
    rows, c = x.shape
    out = np.full_like(x, np.nan)
    mean, inv = np.full(rows, np.nan), np.full(rows, np.nan)
    layernorm.forward(x, gamma, beta, eps, mean, inv, out)
    dgamma, dbeta = np.full(c, np.nan, x.dtype), np.full(c, np.nan, x.dtype)
    dx = np.full_like(x, np.nan) if need_dx else x[:0]
    layernorm.backward(dy, x, mean, inv, gamma, need_dx, dgamma, dbeta, dx)
    return out, dgamma, dbeta, dx


@pytest.mark.parametrize("dtype,rtol", [(np.float32, 2e-5), (np.float64, 1e-11)])
@pytest.mark.parametrize("rows,c", [(1, 7), (300, 64), (41, 300)])
def test_forward_and_backward_match_float64(dtype, rtol, rows, c):
    assert layernorm.chunking(300, 64)[1] > 1 and layernorm.chunking(41, 300)[1] > 1  # several chunks
    x, gamma, beta, dy = operands(dtype, rows, c)
    got = run(x, gamma, beta, 1e-3, dy)
    for g, want in zip(got, reference(x, gamma, beta, 1e-3, dy)):
        np.testing.assert_allclose(g, want, rtol=rtol, atol=rtol * np.abs(want).max())


def test_parameter_gradients_without_the_input_gradient():
    x, gamma, beta, dy = operands(np.float32, 300, 64)
    full = run(x, gamma, beta, 1e-6, dy)
    partial = run(x, gamma, beta, 1e-6, dy, need_dx=False)
    assert np.array_equal(full[1], partial[1]) and np.array_equal(full[2], partial[2])


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="needs two Numba threads")
def test_same_bits_at_one_and_two_threads():
    x, gamma, beta, dy = operands(np.float32, 2048, 64)
    assert 2048 * 64 >= 2 * layernorm.MIN_SHARE_VALUES  # large enough to be split
    results = []
    previous = numba.get_num_threads()
    for threads in (1, 2):
        numba.set_num_threads(threads)
        try:
            results.append(run(x, gamma, beta, 1e-6, dy))
        finally:
            numba.set_num_threads(previous)
    for a, b in zip(*results):
        assert np.array_equal(a, b)


def test_layer_inference_matches_training_and_backward_follows_the_last_forward():
    engine = build({"type": "LayerNormalization", "epsilon": 1e-6}, [[6, 8]])
    rng = np.random.default_rng(1)
    engine.params[...] += rng.normal(size=engine.params.shape) * 0.1
    a, b = rng.normal(size=(2, 5, 6, 8))
    infer = engine.forward([a], training=False)[0].copy()
    train = engine.forward([a], training=True)[0]
    np.testing.assert_array_equal(infer, train)
    engine.forward([b], training=True)
    r = rng.normal(size=a.shape)
    engine.backward([r])
    gamma, beta = engine.params[:8], engine.params[8:16]
    _, dgamma, dbeta, dx = reference(b.reshape(-1, 8), gamma, beta, 1e-6, r.reshape(-1, 8))
    np.testing.assert_allclose(engine.grads[:8], dgamma, rtol=1e-10)
    np.testing.assert_allclose(engine.grads[8:16], dbeta, rtol=1e-10)
    np.testing.assert_allclose(engine._input_grads[engine.input_names[0]], dx.reshape(b.shape), rtol=1e-9,
                               atol=1e-12)
