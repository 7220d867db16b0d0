"""An MLP's prediction through its fused chain (train/fused.py DenseChain.predict): the same bits on one
thread (kernels/fused.py forward_rows) and two (float32: kernels/dense_chain.py forward_split, each thread
the whole chain on its rows; float64: forward, its products split between BLAS's threads, within a few units
in the last place, as OpenBLAS's bits for a row depend on how it splits the rows), written straight
into an array the caller gives when it can be, and within rounding of a float64 NumPy reference."""

from __future__ import annotations

import numpy as np
import pytest

from specc.engine import Engine
from specc.kernels import configure_threads, native
from specc.spec import load_spec_text
from specc.train.fused import DenseChain

ROWS = 126  # a batch size that is not a multiple of a register tile's rows

LAYERS = {
    "relu_softmax": "[{type: Dense, units: 48, activation: relu}, {type: Dense, units: 20, activation: relu},"
                    " {type: Dense, units: 7, activation: softmax}]",
    "tanh_linear_no_bias": "[{type: Dense, units: 33, activation: tanh},"
                           " {type: Dense, units: 5, use_bias: false}]",
}


def assert_same_on_sgemm(got, want):
    """The same bits where the products run on sgemm (each thread the whole chain on its rows); on BLAS
    (the portable build), whose threads split each product, within float32 rounding."""
    if native.sgemm is not None:
        np.testing.assert_array_equal(got, want)
    else:
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def chain_for(layers: str, dtype, n_in: int = 30) -> DenseChain:
    spec, errors = load_spec_text(f"specc: 1\nmodel:\n  input: [{n_in}]\n  layers: {layers}\n")
    assert not errors, errors
    engine = Engine(spec.graph, dtype)
    engine.initialize(5)
    chain = DenseChain.of(engine)
    assert chain is not None
    return chain


def reference(chain: DenseChain, x: np.ndarray) -> np.ndarray:
    """The chain in float64 NumPy, from its layout (kernel offset, bias offset, in, out, activation)."""
    from specc.kernels import activations as A

    params = chain.engine.params.astype(np.float64)
    h = x.astype(np.float64)
    for w_at, b_at, n_in, n_out, act in chain.layout:
        h = h @ params[w_at: w_at + n_in * n_out].reshape(n_in, n_out)
        if b_at >= 0:
            h = h + params[b_at: b_at + n_out]
        if act == A.RELU:
            h = np.maximum(h, 0)
        elif act == A.TANH:
            h = np.tanh(h)
        elif act == A.SOFTMAX:
            e = np.exp(h - h.max(axis=1, keepdims=True))
            h = e / e.sum(axis=1, keepdims=True)
    return h


@pytest.mark.parametrize("dtype, batch", [(np.float32, ROWS + 3), (np.float64, 3 * ROWS)])
def test_predict_on_two_threads_equals_one_thread(dtype, batch):
    chain = chain_for(LAYERS["relu_softmax"], dtype)
    x = np.random.default_rng(2).standard_normal((batch, 30)).astype(dtype)
    configure_threads(1)
    one = chain.predict(x).copy()
    configure_threads(2)
    two = chain.predict(x)
    if dtype == np.float32:
        assert_same_on_sgemm(two, one)
    else:  # OpenBLAS's threads split each product, and its bits for a row may depend on that split
        np.testing.assert_allclose(two, one, rtol=8 * np.finfo(dtype).eps, atol=0)
    np.testing.assert_allclose(one, reference(chain, x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("layers", list(LAYERS))
def test_split_rows_give_the_bits_of_the_whole_batch(layers):
    """forward_split's row ranges, for part counts that do and do not divide the batch (and more parts
    than a thread pool has), write what forward_rows writes over the whole batch: the same bits on sgemm,
    which DenseChain.predict splits on (it leaves BLAS's products to BLAS's threads)."""
    from specc.kernels import dense_chain, fused

    chain = chain_for(LAYERS[layers], np.float32)
    batch = ROWS + 5
    x = np.random.default_rng(4).standard_normal((batch, 30)).astype(np.float32)
    plan, work = chain.plan(batch)
    expected = np.full((batch, chain.units_out), np.nan, np.float32)
    fused.forward_rows(x, chain.engine.params, plan, work, 0, batch, expected)
    params = chain.engine.params
    replicas = np.stack([params, params])  # threads 1 and 2 read copies, the others params itself
    for parts, copies in ((1, replicas[:0]), (2, replicas[:0]), (3, replicas), (7, replicas)):
        out = np.full((batch, chain.units_out), np.nan, np.float32)
        dense_chain.forward_split(x, params, copies, plan, work, out, parts)
        assert_same_on_sgemm(out, expected)
    np.testing.assert_allclose(expected, reference(chain, x), rtol=1e-4, atol=1e-5)


def test_a_large_batch_on_two_threads_equals_one_thread():
    """A batch with enough work to be split between the threads (DenseChain.PARALLEL_MIN_FLOPS), as the
    benchmark's MLP's: the same bits as on one thread."""
    from specc.train import fused

    chain = chain_for(LAYERS["relu_softmax"], np.float32, n_in=200)
    batch = fused.PARALLEL_MIN_FLOPS // chain.flops_per_row + 13
    x = np.random.default_rng(5).standard_normal((batch, 200)).astype(np.float32)
    configure_threads(1)
    one = chain.predict(x).copy()
    configure_threads(2)
    assert_same_on_sgemm(chain.predict(x), one)
    out = np.empty((batch, chain.units_out), np.float32)
    assert_same_on_sgemm(chain.predict(x, out), one)
    np.testing.assert_allclose(one, reference(chain, x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("layers", list(LAYERS))
def test_predict_writes_into_the_array_it_is_given(layers, dtype, threads):
    chain = chain_for(LAYERS[layers], dtype)
    batch = 3 * ROWS + 5
    x = np.random.default_rng(3).standard_normal((batch, 30)).astype(dtype)
    configure_threads(threads)
    expected = chain.predict(x).copy()
    out = np.full((batch + 4, chain.units_out), np.nan, dtype)
    assert chain.predict(x, out[2: 2 + batch]) is not None
    np.testing.assert_array_equal(out[2: 2 + batch], expected)
    assert np.isnan(out[:2]).all() and np.isnan(out[2 + batch:]).all()  # nothing written outside it
    other = np.full((batch, chain.units_out), np.nan, np.float64 if dtype == np.float32 else np.float32)
    chain.predict(x, other)  # another dtype: a copy
    np.testing.assert_array_equal(other, expected.astype(other.dtype))
    np.testing.assert_allclose(expected, reference(chain, x), rtol=1e-4, atol=1e-5)


def test_predict_with_reads_weight_copies_that_follow_the_weights():
    """Trainer.predict_with on two threads gives the threads after the first a copy of the weights
    (DenseChain.replicate): the same bits as one thread, and a weight change between two calls reaches
    the copies (a stale copy would give the old model's rows on the second thread)."""
    from specc.train import fused
    from specc.train.fit import Trainer

    chain = chain_for(LAYERS["relu_softmax"], np.float32, n_in=200)
    engine = chain.engine
    batch = fused.PARALLEL_MIN_FLOPS // chain.flops_per_row + 13
    x = np.random.default_rng(6).standard_normal((3 * batch, 200)).astype(np.float32)
    configure_threads(2)
    before = Trainer.predict_with(engine, x, batch_size=batch)[0]
    engine.params[: engine.n_trainable] *= np.float32(1.5)
    two = Trainer.predict_with(engine, x, batch_size=batch)[0]
    if native.sgemm is not None:
        assert DenseChain.cached(engine)._replicas.shape[0] == 1  # copies were made: one for the second thread
    configure_threads(1)
    one = Trainer.predict_with(engine, x, batch_size=batch)[0]
    assert_same_on_sgemm(two, one)
    np.testing.assert_allclose(one, reference(chain, x), rtol=1e-4, atol=1e-5)
    assert not np.allclose(before, two)


def test_model_predict_on_two_threads_follows_set_weights():
    """The API's repeated predict (its quick path, an MLP's fused call per batch) reads the same copies
    of the weights at two threads: after set_weights it predicts with the new weights, the bits of one
    thread."""
    import specc
    from specc import layers

    model = specc.Sequential([specc.Input(shape=(200,)), layers.Dense(48, activation="relu"),
                              layers.Dense(7, activation="softmax")])
    x = np.random.default_rng(7).standard_normal((600, 200)).astype(np.float32)
    configure_threads(2)
    model.predict(x, batch_size=300, verbose=0)
    before = model.predict(x, batch_size=300, verbose=0)  # the quick path: the copies are made here
    model.set_weights([w * np.float32(1.5) for w in model.get_weights()])
    two = model.predict(x, batch_size=300, verbose=0)
    configure_threads(1)
    one = model.predict(x, batch_size=300, verbose=0)
    assert_same_on_sgemm(two, one)
    assert not np.allclose(before, two)
