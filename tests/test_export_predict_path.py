"""The small-batch inference path that `model.predict` and `model(x)` take for at most SMALL_BATCH samples (one
forward pass in the engine's workspace, or an MLP's fused chain kept with its engine): the same numbers as the
batched path, results that later calls do not overwrite, and weights or structure changed between calls seen
by the next call. Its speed against ONNX Runtime is bench/latency.py's."""

from __future__ import annotations

import numpy as np
import pytest

import specc
from specc import layers
from specc.api.model import SMALL_BATCH


def mlp():
    return specc.Sequential([specc.Input(shape=(12,)), layers.Dense(16, activation="relu"),
                             layers.Dense(8, activation="tanh"), layers.Dense(3, activation="softmax")])


def cnn():
    return specc.Sequential([specc.Input(shape=(8, 8, 2)), layers.Conv2D(4, 3, activation="relu"),
                             layers.MaxPooling2D(), layers.Flatten(), layers.Dropout(0.5),
                             layers.Dense(3, activation="softmax")])


def data(model, n, seed=0):
    return np.random.default_rng(seed).standard_normal((n, *model.input_shape[1:])).astype(np.float32)


@pytest.mark.parametrize("build", [mlp, cnn], ids=["mlp-fused-chain", "cnn-workspace"])
def test_small_batches_give_the_batched_path_numbers_and_keep_their_results(build):
    model = build()
    x = data(model, SMALL_BATCH + 6)
    batched = model.predict(x, batch_size=SMALL_BATCH + 6, verbose=0)  # more than SMALL_BATCH: predict_with
    first = model.predict(x[:1], verbose=0)
    kept = first.copy()
    called = model(x[1:2])
    small = model.predict(x[2:9], verbose=0)
    np.testing.assert_allclose(first, batched[:1], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(called, batched[1:2], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(small, batched[2:9], rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(first, kept)  # later calls reuse buffers, not the arrays they returned
    assert not np.shares_memory(first, called) and not np.shares_memory(called, small)


@pytest.mark.parametrize("build", [mlp, cnn], ids=["mlp-fused-chain", "cnn-workspace"])
def test_weights_set_between_calls_are_used(build):
    model = build()
    x = data(model, 1)
    before = model.predict(x, verbose=0)
    model.set_weights([w * 1.7 for w in model.get_weights()])
    after = model.predict(x, verbose=0)
    assert not np.allclose(before, after)
    fresh = build()
    fresh.set_weights(model.get_weights())
    np.testing.assert_allclose(after, fresh.predict(x, batch_size=SMALL_BATCH + 1, verbose=0), rtol=1e-6, atol=1e-7)


def test_a_structure_change_between_calls_takes_the_new_engine():
    model = mlp()
    x = data(model, 2)
    expected = model.predict(x, verbose=0)
    model.layers[0].trainable = False  # another engine (frozen weights laid out apart): no fused chain
    np.testing.assert_allclose(model.predict(x, verbose=0), expected, rtol=1e-6, atol=1e-7)
    model.add(layers.Dense(2))
    assert model.predict(x, verbose=0).shape == (2, 2)


def test_training_calls_still_run_dropout():
    model = cnn()
    x = data(model, 4)
    inference = model(x)
    np.testing.assert_array_equal(model(x), inference)
    assert not np.allclose(model(x, training=True), inference)


def test_small_batch_of_several_inputs_checks_their_sizes():
    a, b = specc.Input(shape=(3,), name="a"), specc.Input(shape=(2,), name="b")
    model = specc.Model([a, b], layers.Dense(1)(layers.Concatenate()([a, b])))
    with pytest.raises(ValueError, match=r"Data cardinality is ambiguous.*'x\['a'\]' sizes: 2, 'x\['b'\]' sizes: 3"):
        model.predict([np.ones((2, 3)), np.ones((3, 2))], verbose=0)
    assert model.predict([np.ones((2, 3)), np.ones((2, 2))], verbose=0).shape == (2, 1)


def test_large_batches_reuse_the_chain_and_see_new_weights():
    """predict on more than the small-batch rows keeps its DenseChain (and the chain's workspace) with the
    engine across calls, and still reads the weights as they are now."""
    import specc
    from specc.train.fused import DenseChain

    model = specc.Sequential([specc.Input((6,)), specc.layers.Dense(5, activation="relu"),
                              specc.layers.Dense(3, activation="softmax")])
    x = np.random.default_rng(0).normal(size=(300, 6)).astype(np.float32)
    first = model.predict(x, batch_size=256, verbose=0)
    engine = model._engine()
    chain = DenseChain.cached(engine)
    assert chain is not None and DenseChain.cached(engine) is chain
    again = model.predict(x, batch_size=256, verbose=0)
    np.testing.assert_array_equal(first, again)
    assert DenseChain.cached(model._engine()) is chain
    model.set_weights([w * 2 for w in model.get_weights()])
    changed = model.predict(x, batch_size=256, verbose=0)
    k, b, k2, b2 = model.get_weights()
    h = np.maximum(x @ k + b, 0) @ k2 + b2
    want = np.exp(h - h.max(1, keepdims=True))
    want /= want.sum(1, keepdims=True)
    np.testing.assert_allclose(changed, want, rtol=1e-5, atol=1e-6)
