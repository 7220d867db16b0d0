"""What `model.predict(x)` and `model(x)` keep between small calls (the engine for the structure, the signature
of the structure, the way the last small batch went) must follow every change of the model: weights set,
layers added or popped, `trainable` flipped, compile, fit, another model taking shared layers' weights. Each
test predicts first (so the caches are warm), changes the model, and compares with a fresh model in that
state; and the input checks still give their errors after a warm call."""

from __future__ import annotations

import numpy as np
import pytest

import specc
from specc import layers
from specc.api.model import SMALL_BATCH


def mlp(units=(16, 8)):
    return specc.Sequential([specc.Input(shape=(12,)), *(layers.Dense(u, activation="relu") for u in units),
                             layers.Dense(3, activation="softmax")])


def cnn():
    return specc.Sequential([specc.Input(shape=(8, 8, 2)), layers.Conv2D(4, 3, activation="relu"),
                             layers.MaxPooling2D(), layers.Flatten(), layers.Dense(3, activation="softmax")])


def data(model, n, seed=0):
    return np.random.default_rng(seed).standard_normal((n, *model.input_shape[1:])).astype(np.float32)


def reference(model, x):
    """The same model state in a fresh model, predicted on the batched path (more samples than the small path)."""
    fresh = specc.Sequential.from_config(model.get_config())
    fresh.set_weights(model.get_weights())
    big = np.concatenate([x, np.zeros((100, *x.shape[1:]), x.dtype)])
    return fresh.predict(big, batch_size=128, verbose=0)[:len(x)]


def warm(model, x):
    for _ in range(3):
        model.predict(x, verbose=0)
        model(x)


BUILDS = pytest.mark.parametrize("build", [mlp, cnn], ids=["mlp", "cnn"])
# one sample (a pass in the engine's workspace, or an MLP's fused call), and more than SMALL_BATCH in batches of
# 32 with a partial last one (an MLP's fused call per batch; other models the general path)
SAMPLES = pytest.mark.parametrize("n", [1, 100])


@BUILDS
@SAMPLES
def test_set_weights_after_warm_calls(build, n):
    model = build()
    x = data(model, n)
    warm(model, x)
    before = model.predict(x, verbose=0)
    model.set_weights([w * 1.5 + 0.01 for w in model.get_weights()])
    after, called = model.predict(x, verbose=0), model(x)
    assert not np.allclose(before, after)
    np.testing.assert_allclose(after, reference(model, x), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(called, after, rtol=1e-6, atol=1e-7)


@BUILDS
@pytest.mark.parametrize("suffix", [".npz", ".weights.h5"])
def test_load_weights_after_warm_calls(build, suffix, tmp_path):
    if suffix == ".weights.h5":
        pytest.importorskip("h5py")
    model, other = build(), build()
    x = data(model, 1)
    other.set_weights([w * 0.5 - 0.02 for w in model.get_weights()])
    want = other.predict(x, verbose=0)
    path = str(tmp_path / f"other{suffix}")
    other.save_weights(path)
    warm(model, x)
    model.load_weights(path)
    np.testing.assert_allclose(model.predict(x, verbose=0), want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(model(x), want, rtol=1e-5, atol=1e-6)


@BUILDS
@SAMPLES
def test_warm_calls_give_the_general_paths_numbers(build, n):
    model = build()
    x = data(model, n)
    warm(model, x)
    general = model.predict(x, verbose=0, callbacks=[])  # callbacks (even none) take the checked path
    np.testing.assert_array_equal(model.predict(x, verbose=0), general)
    for batch_size in (7, 128):  # several batches, the last partial; one batch
        np.testing.assert_array_equal(model.predict(x, batch_size=batch_size, verbose=0),
                                      model.predict(x, batch_size=batch_size, verbose=0, callbacks=[]))
    if n <= SMALL_BATCH:
        np.testing.assert_array_equal(model(x), general)


@BUILDS
@SAMPLES
def test_pop_and_add_after_warm_calls(build, n):
    model = build()
    x = data(model, n)
    warm(model, x)
    model.pop()
    assert model.predict(x, verbose=0).shape == model(x).shape == (n, model.output_shape[-1])
    np.testing.assert_allclose(model.predict(x, verbose=0), reference(model, x), rtol=1e-5, atol=1e-6)
    model.add(layers.Dense(5))
    assert model.predict(x, verbose=0).shape == model(x).shape == (n, 5)
    np.testing.assert_allclose(model(x), reference(model, x), rtol=1e-5, atol=1e-6)


def test_trainable_flips_after_warm_calls_give_the_engine_of_the_new_flags():
    model = mlp()
    x = data(model, 1)
    warm(model, x)
    total = model.count_params()
    assert model._engine().n_trainable == total
    model.layers[0].trainable = False
    frozen = sum(w.size for w in model.layers[0].get_weights())
    assert model._engine().n_trainable == total - frozen
    np.testing.assert_allclose(model.predict(x, verbose=0), reference(model, x), rtol=1e-5, atol=1e-6)
    model.trainable = False  # a model's flag: every layer inside
    assert model._engine().n_trainable == 0
    model(x)
    model.trainable = True
    assert model._engine().n_trainable == total


def test_a_nested_models_trainable_flip_reaches_the_outer_engine():
    inner = specc.Sequential([layers.Dense(6, activation="relu"), layers.Dense(4)], name="inner")
    outer = specc.Sequential([specc.Input(shape=(5,)), inner, layers.Dense(2)])
    x = data(outer, 1)
    warm(outer, x)
    assert outer._engine().n_trainable == outer.count_params()
    inner.trainable = False
    assert outer._engine().n_trainable == outer.layers[-1].count_params()
    np.testing.assert_allclose(outer(x), outer.predict(x, batch_size=64, verbose=1), rtol=1e-6, atol=1e-7)


@BUILDS
def test_fit_between_warm_calls(build):
    model = build()
    x = data(model, 32)
    y = np.random.default_rng(1).integers(0, 3, 32)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    warm(model, x[:1])
    before = model.predict(x[:1], verbose=0)
    model.fit(x, y, epochs=2, batch_size=8, verbose=0)  # the training engine takes the weights
    after = model.predict(x[:1], verbose=0)
    assert not np.allclose(before, after)  # the trained weights, not the inference engine's stale copy
    model.train_on_batch(x[:8], y[:8])
    called = model(x[:1])
    assert not np.allclose(after, called)
    np.testing.assert_allclose(called, reference(model, x[:1]), rtol=1e-5, atol=1e-6)


def test_fit_on_its_own_engine_between_warm_calls():
    """A flag flipped after compile: fit keeps compile time's flags (a training engine of its own), predict
    runs the current ones (another engine), and each takes the weights from the other when it runs."""
    model = mlp()
    x = data(model, 32)
    y = np.random.default_rng(1).integers(0, 3, 32)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    with pytest.warns(UserWarning, match="changed after model"):
        model.layers[0].trainable = False
    warm(model, x[:1])
    before = model.predict(x[:1], verbose=0)
    model.fit(x, y, epochs=2, batch_size=8, verbose=0)
    assert model._get_trainer().engine is not model._engine()
    after = model.predict(x[:1], verbose=0)
    assert not np.allclose(before, after)
    model.train_on_batch(x[:8], y[:8])
    called = model(x[:1])
    assert not np.allclose(after, called)
    np.testing.assert_allclose(called, reference(model, x[:1]), rtol=1e-5, atol=1e-6)


def test_a_model_sharing_layers_takes_their_weights_between_warm_calls():
    hidden, head = layers.Dense(8, activation="relu"), layers.Dense(3)
    first = specc.Sequential([specc.Input(shape=(4,)), hidden, head])
    second = specc.Sequential([specc.Input(shape=(4,)), hidden, head])
    x = data(first, 1)
    warm(first, x)
    second.predict(x, verbose=0)  # second's engine takes the shared layers' weights
    second.set_weights([w + 0.25 for w in second.get_weights()])  # ... and the new values go there
    k, b, k2, b2 = second.get_weights()
    want = np.maximum(x @ k + b, 0) @ k2 + b2
    np.testing.assert_allclose(first.predict(x, verbose=0), want, rtol=1e-5, atol=1e-6)
    second.predict(x, verbose=0)
    np.testing.assert_allclose(first(x), want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(second(x), want, rtol=1e-5, atol=1e-6)


def test_run_eagerly_after_warm_calls_runs_the_python_kernels():
    from specc.api import eager

    model = mlp()
    x = data(model, 2)
    warm(model, x)
    compiled = model.predict(x, verbose=0)
    model.compile(optimizer="sgd", loss="mse", run_eagerly=True)
    seen = []
    real = eager.no_jit

    def spy():
        seen.append(1)
        return real()

    eager.no_jit, saved = spy, eager.no_jit
    try:
        eager_out, eager_call = model.predict(x, verbose=0), model(x)
    finally:
        eager.no_jit = saved
    assert len(seen) == 2
    np.testing.assert_allclose(eager_out, compiled, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(eager_call, compiled, rtol=1e-5, atol=1e-6)


def test_variable_sized_inputs_are_not_taken_for_the_last_shape():
    inp = specc.Input(shape=(None, 4))
    model = specc.Model(inp, layers.Dense(2)(layers.GlobalAveragePooling1D()(inp)))
    rng = np.random.default_rng(0)
    for steps in (5, 7, 5, 3):
        x = rng.standard_normal((1, steps, 4)).astype(np.float32)
        w, b = model.get_weights()
        np.testing.assert_allclose(model.predict(x, verbose=0), x.mean(axis=1) @ w + b, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(model(x), x.mean(axis=1) @ w + b, rtol=1e-5, atol=1e-6)


def test_results_of_warm_calls_are_not_overwritten_by_the_next():
    model = cnn()
    x = data(model, 3)
    warm(model, x[:1])
    a = model.predict(x[:1], verbose=0)
    kept = a.copy()
    b = model(x[1:2])
    c = model.predict(x[2:3], verbose=0)
    np.testing.assert_array_equal(a, kept)
    assert not np.shares_memory(a, b) and not np.shares_memory(b, c)


@pytest.mark.parametrize("call", ["predict", "call"])
def test_input_checks_after_warm_calls(call):
    model = mlp()
    x = data(model, 2)
    warm(model, x)
    run = (lambda a, **k: model.predict(a, verbose=0, **k)) if call == "predict" else (lambda a: model(a))
    with pytest.raises(ValueError, match=r'Input 0 of layer "sequential.*" is incompatible with the layer: '
                                         r"expected shape=\(None, 12\), found shape=\(2, 11\)"):
        run(x[:, :11])
    with pytest.raises(ValueError, match=r"found shape=\(12,\)"):
        run(x[0])
    with pytest.raises(ValueError, match=r"x has dtype <U1 \(strings\); expected real numbers"):
        run(np.full((1, 12), "a"))
    with pytest.raises(ValueError, match=r"x is a scalar"):
        run(np.float32(1.0) * np.ones(()))
    if call == "predict":
        with pytest.raises(ValueError, match=r"Expected input data to be non-empty: x has 0 samples"):
            run(x[:0])
        with pytest.raises(ValueError, match=r"batch_size must be a positive integer, got 0"):
            run(x, batch_size=0)
        with pytest.raises(ValueError, match=r"batch_size must be a positive integer, got True"):
            run(x, batch_size=True)
        with pytest.raises(ValueError, match=r"verbose must be 0, 1, 2 or \"auto\", got False"):
            model.predict(x, verbose=False)
    # integers and float64 are cast as before, and give the float32 input's numbers
    np.testing.assert_allclose(run(x.astype(np.float64)), run(x), rtol=1e-6, atol=1e-7)
    assert run(np.ones((1, 12), np.int64)).shape == (1, 3)


def test_predict_with_callbacks_or_a_bar_after_warm_calls_still_serves_them(capsys):
    class Count(specc.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.batches = 0

        def on_predict_batch_end(self, batch, logs=None):
            self.batches += 1

    model = mlp()
    x = data(model, 4)
    warm(model, x)
    count = Count()
    out = model.predict(x, verbose=0, callbacks=[count], batch_size=2)
    assert count.batches == 2
    np.testing.assert_allclose(out, model.predict(x, verbose=0), rtol=1e-6, atol=1e-7)
    model.predict(x, verbose=1)
    assert "1/1" in capsys.readouterr().out
