"""The fused attention kernels (kernels/attention.py) against a float64 NumPy reference, and the layer's
paths that share one projection product between inputs that are the same array."""

from __future__ import annotations

import numba
import numpy as np
import pytest

from specc.engine import Engine
from specc.kernels import attention, configure_threads, native
from specc.spec import load_spec_text

from .gradcheck import central_difference


def reference(q, k, v, mask, scale, keep):
    """probs (N, H, T, S) and ctx (N, T, H, dv) in float64; masked keys get 0, a fully masked row zeros."""
    q, k, v = (x.astype(np.float64) for x in (q, k, v))
    scores = np.einsum("nthj,nshj->nhts", q, k) * scale
    allowed = np.ones(scores.shape, bool) if mask is None else np.broadcast_to(mask[:, None] != 0, scores.shape)
    top = np.where(allowed, scores, -np.inf).max(-1, keepdims=True)
    e = np.where(allowed, np.exp(scores - np.where(np.isfinite(top), top, 0)), 0)
    total = e.sum(-1, keepdims=True)
    probs = e / np.where(total > 0, total, 1)
    dropped = probs if keep is None else probs * keep
    return probs, np.einsum("nhts,nshj->nthj", dropped, v)


def reference_backward(q, k, v, probs, keep, dctx, scale):
    q, k, v, probs, dctx = (x.astype(np.float64) for x in (q, k, v, probs, dctx))
    dropped = probs if keep is None else probs * keep
    dv = np.einsum("nhts,nthj->nshj", dropped, dctx)
    dprobs = np.einsum("nthj,nshj->nhts", dctx, v)
    if keep is not None:
        dprobs = dprobs * keep
    dscores = probs * (dprobs - (dprobs * probs).sum(-1, keepdims=True)) * scale
    return np.einsum("nhts,nshj->nthj", dscores, k), np.einsum("nhts,nthj->nshj", dscores, q), dv


def operands(dtype, seed=0, n=3, t=5, s=7, heads=2, dk=4, dv=3):
    """q, k, v as column blocks of packed (N * L, heads * sizes) arrays, the layout the layer passes."""
    rng = np.random.default_rng(seed)
    qk = rng.normal(size=(n * t, heads * 2 * dk)).astype(dtype)
    q = qk[:, : heads * dk].reshape(n, t, heads, dk)
    k = rng.normal(size=(n, s, heads, dk)).astype(dtype)
    v = rng.normal(size=(n * s, heads * (dk + dv))).astype(dtype)[:, heads * dk:].reshape(n, s, heads, dv)
    mask = (rng.random((n, t, s)) < 0.6).astype(np.uint8)
    mask[0, 1] = 0  # a query that may attend to no key
    keep = (rng.random((n, heads, t, s)) >= 0.25) / 0.75
    return rng, q, k, v, mask, keep.astype(dtype)


@pytest.mark.parametrize("dtype,rtol", [(np.float32, 2e-6), (np.float64, 1e-12)])
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("dropout", [False, True])
def test_forward_and_backward_match_float64(dtype, rtol, masked, dropout):
    rng, q, k, v, mask, keep = operands(dtype)
    n, t, heads, _ = q.shape
    s, dv = v.shape[1], v.shape[3]
    scale = dtype(0.5)
    probs = np.empty((n, heads, t, s), dtype)
    ctx = np.empty((n, t, heads, dv), dtype)
    attention.attention_forward(q, k, v, mask if masked else np.ones((1, 1, 1), np.uint8), masked, scale,
                                keep, dropout, True, probs, ctx)
    want_probs, want_ctx = reference(q, k, v, mask if masked else None, 0.5, keep if dropout else None)
    np.testing.assert_allclose(probs, want_probs, rtol=rtol, atol=rtol * 1e-2)
    np.testing.assert_allclose(ctx, want_ctx, rtol=rtol * 10, atol=rtol)
    if masked:
        assert np.all(probs[0, :, 1] == 0) and np.all(ctx[0, 1] == 0)
    scratch, ctx_only = np.empty((1, 1, t, s), dtype), np.empty_like(ctx)  # inference: probabilities not kept
    attention.attention_forward(q, k, v, mask if masked else np.ones((1, 1, 1), np.uint8), masked, scale,
                                keep, dropout, False, scratch, ctx_only)
    np.testing.assert_array_equal(ctx_only, ctx)

    dctx = rng.normal(size=ctx.shape).astype(dtype)
    grads = [np.full(x.shape, np.nan, dtype) for x in (q, k, v)]
    attention.attention_backward(q, k, v, probs, keep, dropout, dctx, scale, *grads)
    for got, want in zip(grads, reference_backward(q, k, v, probs, keep if dropout else None, dctx, 0.5)):
        np.testing.assert_allclose(got, want, rtol=rtol * 10, atol=rtol * 10)


def test_large_scores_do_not_overflow():
    """Scores far above exp's range: the row maximum is taken out before the exponential."""
    _, q, k, v, mask, keep = operands(np.float32, seed=1)
    q = q * 300
    n, t, heads, _ = q.shape
    probs = np.empty((n, heads, t, k.shape[1]), np.float32)
    ctx = np.empty((n, t, heads, v.shape[3]), np.float32)
    attention.attention_forward(q, k, v, mask, True, np.float32(1.0), keep, False, True, probs, ctx)
    want_probs, want_ctx = reference(q, k, v, mask, 1.0, None)
    assert np.isfinite(probs).all()
    np.testing.assert_allclose(probs, want_probs, atol=1e-5)


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="needs two Numba threads")
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("masked,dropout", [(False, False), (True, True)])
def test_same_bits_at_one_and_two_threads(dtype, masked, dropout):
    """The (sample, head) pairs split between threads: each computed whole by one thread, so the same
    bits as on one; also what the pairs give one sample at a time (no thread mixes samples up)."""
    rng, q, k, v, mask, keep = operands(dtype, seed=5, n=5, t=48, s=40, heads=3, dk=16, dv=24)
    assert attention._shares(q, k, v) > 1 or numba.get_num_threads() < 2  # large enough to be split
    n, t, heads, _ = q.shape
    s, dv = v.shape[1], v.shape[3]
    mask = mask if masked else np.ones((1, 1, 1), np.uint8)
    dctx = rng.normal(size=(n, t, heads, dv)).astype(dtype)
    results = []
    previous = numba.get_num_threads()
    for threads in (1, 2):
        numba.set_num_threads(threads)
        try:
            probs, ctx = np.empty((n, heads, t, s), dtype), np.empty((n, t, heads, dv), dtype)
            attention.attention_forward(q, k, v, mask, masked, dtype(0.25), keep, dropout, True, probs, ctx)
            infer = np.empty_like(ctx)
            attention.attention_forward(q, k, v, mask, masked, dtype(0.25), keep, dropout, False, probs[:1, :1],
                                        infer)
            grads = [np.full(x.shape, np.nan, dtype) for x in (q, k, v)]
            attention.attention_backward(q, k, v, probs, keep, dropout, dctx, dtype(0.25), *grads)
        finally:
            numba.set_num_threads(previous)
        assert np.array_equal(infer, ctx)
        results.append([probs, ctx, *grads])
    for a, b in zip(*results):
        assert np.array_equal(a, b)
    want_probs, want_ctx = reference(q, k, v, mask if masked else None, 0.25, keep if dropout else None)
    np.testing.assert_allclose(results[1][1], want_ctx, rtol=1e-4, atol=1e-5)


# The same array in several roles: one packed projection product, whose gradient goes to the first role.
SHARED = [
    ("query_value_key_one_array", [{"type": "MultiHeadAttention", "name": "mha", "num_heads": 2, "key_dim": 3,
                                    "inputs": ["x", "x", "x"]}]),
    ("query_is_key", [{"type": "MultiHeadAttention", "name": "mha", "num_heads": 2, "key_dim": 3, "value_dim": 2,
                       "inputs": ["x", "y", "x"]}]),
    ("value_is_key_cross", [{"type": "MultiHeadAttention", "name": "mha", "num_heads": 2, "key_dim": 3,
                             "inputs": ["x", "y", "y"]}]),
    ("causal_self_attention_output_shape", [{"type": "MultiHeadAttention", "name": "mha", "num_heads": 2,
                                             "key_dim": 2, "use_causal_mask": True, "output_shape": [3],
                                             "inputs": ["x", "x"]}]),
]


def _model(layers):
    import json

    lines = "\n".join(f"    - {json.dumps(layer)}" for layer in layers)
    used = "x: [4, 5], y: [4, 6]" if "y" in layers[0]["inputs"] else "x: [4, 5]"
    text = f"specc: 1\nmodel:\n  inputs: {{{used}}}\n  layers:\n{lines}\n  outputs: mha\n"
    spec, errors = load_spec_text(text, "shared.yaml")
    assert not errors, [e.text() for e in errors]
    return spec


@pytest.mark.parametrize("case", [c[1] for c in SHARED], ids=[c[0] for c in SHARED])
def test_gradcheck_with_shared_inputs(case):
    spec = _model(case)
    engine = Engine(spec.graph, np.float64)
    engine.initialize(0)
    rng = np.random.default_rng(2)
    engine.params += rng.standard_normal(engine.params.shape) * 0.1
    xs = [rng.standard_normal((2, 4, 5)), rng.standard_normal((2, 4, 6))][: len(engine.input_names)]
    R = rng.standard_normal(engine.forward(xs)[0].shape)

    def loss():
        return float(np.sum(engine.forward(xs)[0] * R))

    engine.forward(xs)
    engine.backward([R])
    analytic = engine.grads.copy()
    dxs = [engine._input_grads[name] for name in engine.input_names]
    dxs = [np.zeros_like(x) if d is None else d.copy() for x, d in zip(xs, dxs)]
    for array, got in [(engine.params, analytic)] + [(x.reshape(-1), d.reshape(-1)) for x, d in zip(xs, dxs)]:
        for i in rng.choice(got.size, 25, replace=False):
            assert np.isclose(got[i], central_difference(loss, array, i), rtol=1e-5, atol=1e-7)


def test_packed_projection_follows_new_weights():
    """Self-attention packs the three kernels into one product: a later set_weights (or an optimizer step,
    which writes the same arrays) must change the output exactly as a model built with those weights."""
    spec = _model(SHARED[0][1])
    engine = Engine(spec.graph, np.float32)
    engine.initialize(0)
    x = np.random.default_rng(3).standard_normal((2, 4, 5)).astype(np.float32)
    xs = [x]
    engine.forward(xs, reuse=True)
    weights = [w + np.float32(0.5) for w in engine.get_weights()]
    engine.set_weights(weights)
    got = engine.forward(xs, reuse=True)[0].copy()

    fresh = Engine(spec.graph, np.float32)
    fresh.set_weights(weights)
    np.testing.assert_allclose(got, fresh.forward(xs)[0], rtol=1e-6, atol=1e-6)


def test_weight_gradients_without_the_input_gradient():
    """Fed only by model inputs, the layer is asked for no input gradient (the engine's training mode);
    its weight gradients are the same as with one."""
    spec = _model(SHARED[1][1])
    rng = np.random.default_rng(4)
    xs = [rng.standard_normal((2, 4, 5)), rng.standard_normal((2, 4, 6))]
    grads = []
    for input_gradients in (True, False):
        engine = Engine(spec.graph, np.float64)
        engine.initialize(0)
        engine.input_gradients = input_gradients
        y = engine.forward(xs, training=True)[0]
        engine.backward([np.ones_like(y)])
        grads.append(engine.grads.copy())
    np.testing.assert_array_equal(grads[0], grads[1])
    assert np.abs(grads[1]).sum() > 0


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="needs two Numba threads")
def test_encoder_block_same_bits_at_one_and_two_threads():
    """A transformer block through the engine, its products and attention pairs on Numba's threads:
    outputs, weight and input gradients the same bits at 1 and 2 threads (where the products run on
    sgemm; on BLAS within float32 rounding)."""
    text = """specc: 1
model:
  inputs: {x: [32, 24]}
  layers:
    - {type: MultiHeadAttention, num_heads: 4, key_dim: 16, name: mha, inputs: [x, x]}
    - {type: Add, name: add, inputs: [x, mha]}
    - {type: LayerNormalization, epsilon: 1e-6, name: norm, inputs: add}
  outputs: norm
"""
    spec, errors = load_spec_text(text, "block.yaml")
    assert not errors
    rng = np.random.default_rng(6)
    x = rng.standard_normal((32, 32, 24)).astype(np.float32)  # 1024 rows: the projections split over threads
    r = rng.standard_normal(x.shape).astype(np.float32)
    results = []
    previous = numba.get_num_threads()
    for threads in (1, 2):
        configure_threads(threads)
        try:
            engine = Engine(spec.graph, np.float32)
            engine.initialize(0)
            engine.input_gradients = True
            y = engine.forward([x], training=True)[0].copy()
            engine.backward([r])
            results.append((y, engine.grads.copy(), engine._input_grads["x"].copy()))
        finally:
            configure_threads(previous)
    for a, b in zip(*results):
        if native.sgemm is not None:
            assert np.array_equal(a, b)
        else:  # the products on OpenBLAS, whose threads split each one (and its sums over the 1024 rows)
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * np.abs(b).max())
