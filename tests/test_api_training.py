"""compile / fit / evaluate / predict through the Python API, on specc's training loop: Keras's argument
forms, History and log names, callbacks, freezing (transfer learning), the recompile warning, and
run_eagerly (the same numbers without any compiled kernel)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import specc
from specc import layers

from .test_guide_examples import summary_of, totals


@pytest.fixture(autouse=True)
def fresh_session():
    specc.clear_session()
    specc.set_random_seed(0)


def data(n=48, features=6, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, features)).astype(np.float32)
    return x, (x[:, :classes].argmax(axis=1)).astype(np.int64)


def mlp(classes=3, features=6):
    return specc.Sequential([specc.Input(shape=(features,)), layers.Dense(16, activation="relu"),
                             layers.Dense(classes, activation="softmax")])


@pytest.mark.parametrize("optimizer", ["adam", "Adam", specc.optimizers.Adam(learning_rate=0.01),
                                       {"type": "sgd", "momentum": 0.9}])
@pytest.mark.parametrize("loss", ["sparse_categorical_crossentropy", specc.losses.SparseCategoricalCrossentropy()])
def test_compile_forms_train(optimizer, loss):
    x, y = data()
    model = mlp()
    model.compile(optimizer=optimizer, loss=loss, metrics=["accuracy"])
    history = model.fit(x, y, epochs=8, batch_size=16, verbose=0)
    assert history.history["loss"][-1] < history.history["loss"][0]
    assert model.metrics_names == ["loss", "accuracy"]


def test_fit_returns_keras_history_with_validation():
    x, y = data()
    model = mlp()
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["acc", specc.metrics.SparseTopKCategoricalAccuracy(name="top5")])
    history = model.fit(x, y, epochs=3, batch_size=8, validation_split=0.25, verbose=0)
    assert list(history.history) == ["loss", "acc", "top5", "val_loss", "val_acc", "val_top5"]
    assert history.epoch == [0, 1, 2] and history.params == {"verbose": 0, "epochs": 3, "steps": 5}
    assert history.model is model
    history = model.fit(x, y, epochs=1, validation_data=(x[:10], y[:10]), verbose=0)
    assert history.history["val_loss"][0] == pytest.approx(model.evaluate(x[:10], y[:10], verbose=0)[0])


def test_evaluate_return_forms_and_predict():
    x, y = data()
    model = mlp()
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    assert isinstance(model.evaluate(x, y, verbose=0), float)  # just the loss
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    loss, acc = model.evaluate(x, y, verbose=0)
    assert model.evaluate(x, y, verbose=0, return_dict=True) == {"loss": loss, "accuracy": acc}
    probabilities = model.predict(x, batch_size=7, verbose=0)
    np.testing.assert_allclose(probabilities, model(x), rtol=1e-5, atol=1e-7)
    assert acc == pytest.approx(np.mean(probabilities.argmax(axis=1) == y))


def test_loss_objects_with_options():
    x, y = data()
    logits = specc.Sequential([specc.Input(shape=(6,)), layers.Dense(3)])
    logits.compile(optimizer="adam", loss=specc.losses.SparseCategoricalCrossentropy(from_logits=True))
    history = logits.fit(x, y, epochs=5, verbose=0)
    assert history.history["loss"][-1] < history.history["loss"][0]
    reg = specc.Sequential([specc.Input(shape=(6,)), layers.Dense(1)])
    reg.compile(optimizer=specc.optimizers.SGD(0.01), loss=specc.losses.Huber(delta=0.5),
                metrics=[specc.metrics.MeanAbsoluteError(name="mae")])
    assert reg.fit(x, x[:, :1] * 2, epochs=2, verbose=0).history.keys() == {"loss", "mae"}


def test_learning_rate_schedule_object():
    schedule = specc.optimizers.schedules.ExponentialDecay(initial_learning_rate=0.1, decay_steps=10, decay_rate=0.5)
    model = mlp()
    model.compile(optimizer=specc.optimizers.SGD(learning_rate=schedule), loss="sparse_categorical_crossentropy")
    x, y = data()
    model.fit(x, y, epochs=1, verbose=0)


def test_compile_errors_are_clear():
    model = mlp()
    with pytest.raises(ValueError, match="unknown optimizer 'adamm' \\(did you mean adam\\?\\)"):
        model.compile(optimizer="adamm", loss="mse")
    with pytest.raises(ValueError, match="unknown loss 'mse2'"):
        model.compile(optimizer="adam", loss="mse2")
    with pytest.raises(ValueError, match="'nope', which is not a model output"):
        model.compile(optimizer="adam", loss={"nope": "mse"})
    with pytest.raises(TypeError, match="loss given as a Python function .* needs|loss given as a Python function"):
        model.compile(optimizer="adam", loss=lambda t, p: 0.0)
    with pytest.raises(ValueError, match="adam has no argument `momentum`"):
        specc.optimizers.Adam(momentum=0.9)
    with pytest.raises(RuntimeError, match="You must call `compile\\(\\)`"):
        mlp().fit(*data(), verbose=0)
    model.compile(optimizer="adam")
    with pytest.raises(ValueError, match="without a loss"):
        model.fit(*data(), verbose=0)


def test_callbacks_early_stopping_and_custom():
    class Recorder(specc.callbacks.Callback):
        def __init__(self):
            self.epochs = []

        def on_epoch_end(self, epoch, logs=None):
            self.epochs.append((epoch, sorted(logs)))
            if epoch == 1:
                self.model.stop_training = True  # Keras's way to stop from a callback

    x, y = data()
    model = mlp()
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    recorder = Recorder()
    history = model.fit(x, y, epochs=10, verbose=0, callbacks=[recorder])
    assert recorder.model is model and [e for e, _ in recorder.epochs] == [0, 1] and len(history.epoch) == 2

    stopper = specc.callbacks.EarlyStopping(monitor="loss", patience=0, min_delta=100.0)
    history = model.fit(x, y, epochs=10, verbose=0, callbacks=[stopper])
    assert len(history.epoch) == 2  # no epoch improves by 100: stop after the second
    with pytest.raises(ValueError, match="must be a non-negative integer"):
        specc.callbacks.EarlyStopping(patience=-1)
    with pytest.raises(TypeError, match="callbacks must be specc.callbacks"):
        model.fit(x, y, verbose=0, callbacks=[object()])


def test_checkpoint_and_csv_logger_write_relative_to_the_current_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    x, y = data()
    model = mlp()
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    model.fit(x, y, epochs=2, verbose=0, callbacks=[specc.callbacks.ModelCheckpoint("ckpt/epoch_{epoch}.npz"),
                                                      specc.callbacks.CSVLogger("log.csv")])
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["epoch_1.npz", "epoch_2.npz"]
    assert (tmp_path / "log.csv").read_text().startswith("epoch,loss")
    model.load_weights(tmp_path / "ckpt" / "epoch_2.npz")


def test_frozen_layers_are_not_updated_and_move_to_non_trainable():
    x, y = data()
    model = mlp()
    model.layers[0].trainable = False
    assert totals(summary_of(model)) == {"Total params": "163", "Trainable params": "51",
                                         "Non-trainable params": "112"}
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    before = model.get_weights()
    model.fit(x, y, epochs=2, verbose=0)
    after = model.get_weights()
    assert [np.array_equal(a, b) for a, b in zip(before, after)] == [True, True, False, False]
    assert [v.path for v in model.trainable_weights] == ["dense_1/kernel", "dense_1/bias"]


def test_trainable_change_after_compile_warns_and_needs_a_recompile():
    x, y = data()
    model = mlp()
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    with pytest.warns(UserWarning, match="changed after model 'sequential' was compiled.*compile"):
        model.layers[0].trainable = False
    before = model.get_weights()
    model.fit(x, y, epochs=1, verbose=0)
    assert not np.array_equal(model.get_weights()[0], before[0])  # still trainable: compile-time state, as in Keras
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    before = model.get_weights()
    model.fit(x, y, epochs=1, verbose=0)
    np.testing.assert_array_equal(model.get_weights()[0], before[0])  # recompiled: now frozen
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model.layers[0].trainable = False  # no change: no warning


def test_whole_nested_model_frozen():
    base = specc.Sequential([specc.Input(shape=(6,)), layers.Dense(8, activation="relu"), layers.BatchNormalization()],
                            name="base")
    base.trainable = False
    assert all(not layer.trainable for layer in base.layers)  # Keras: a frozen model freezes its layers
    model = specc.Sequential([base, layers.Dense(3, activation="softmax")])
    assert totals(summary_of(model)) == {"Total params": "115", "Trainable params": "27", "Non-trainable params": "88"}
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    before = base.get_weights()
    model.fit(*data(), epochs=2, verbose=0)
    for a, b in zip(base.get_weights(), before):
        np.testing.assert_array_equal(a, b)
    with pytest.warns(UserWarning, match="compile"):
        base.trainable = True
    assert all(layer.trainable for layer in base.layers)


def _eager_vs_compiled(build, x, y, **fit_kwargs):
    results = []
    for eager in (False, True):
        specc.clear_session()
        specc.set_random_seed(3)
        model = build()
        model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"],
                      run_eagerly=eager)
        kinds = []

        class Probe(specc.callbacks.Callback):
            def on_train_batch_end(self, batch, logs=None, kinds=kinds):
                from specc.kernels import dense

                kinds.append(type(dense.forward).__name__)  # what the layers call right now

        history = model.fit(x, y, verbose=0, callbacks=[Probe()], **fit_kwargs)
        results.append((history.history, model.get_weights(), model.predict(x, verbose=0), model(x), set(kinds)))
    return results


def test_run_eagerly_gives_the_compiled_numbers_without_compiled_kernels():
    x = np.random.default_rng(0).random((40, 6, 6, 2)).astype(np.float32)
    y = np.random.default_rng(1).integers(0, 4, 40)

    def build():
        return specc.Sequential([specc.Input(shape=(6, 6, 2)), layers.Conv2D(3, 3, activation="relu"),
                                 layers.MaxPooling2D(2), layers.Flatten(), layers.Dropout(0.2),
                                 layers.BatchNormalization(), layers.Dense(4, activation="softmax")])

    (h1, w1, p1, c1, k1), (h2, w2, p2, c2, k2) = _eager_vs_compiled(build, x, y, epochs=2, batch_size=8,
                                                                    validation_split=0.2)
    assert k1 == {"CPUDispatcher"} and k2 == {"function"}  # compiled kernels vs plain Python functions
    assert h1.keys() == h2.keys()
    for key in h1:
        np.testing.assert_allclose(h1[key], h2[key], rtol=1e-5)
    for a, b in zip(w1, w2):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(p1, p2, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(c1, c2, rtol=1e-5, atol=1e-6)


def test_run_eagerly_is_a_settable_attribute_and_covers_recurrent_layers():
    x = np.random.default_rng(0).random((16, 5, 3)).astype(np.float32)
    y = np.random.default_rng(1).integers(0, 2, 16)

    def build():
        return specc.Sequential([specc.Input(shape=(5, 3)), layers.LSTM(4, return_sequences=True), layers.GRU(3),
                                 layers.Dense(2, activation="softmax")])

    (h1, w1, *_), (h2, w2, *_) = _eager_vs_compiled(build, x, y, epochs=1, batch_size=8)
    np.testing.assert_allclose(h1["loss"], h2["loss"], rtol=1e-5)
    model = build()
    model.run_eagerly = True
    assert model.run_eagerly and model(x).shape == (16, 2)


def test_other_models_sharing_the_weights_can_run_during_fit():
    """A callback that runs a feature extractor (another engine over the same layers) mid-fit sees the
    current weights and does not disturb training: the result equals a run without it."""

    def run(probe: bool):
        specc.clear_session()
        specc.set_random_seed(0)
        model = specc.Sequential([specc.Input(shape=(4,)), layers.Dense(8, activation="relu"), layers.Dense(2)])
        extractor = specc.Model(model.inputs, model.layers[0].output)
        model.compile(optimizer="adam", loss="mse")
        seen = []

        class Probe(specc.callbacks.Callback):
            def on_epoch_end(self, epoch, logs=None):
                seen.append(extractor.predict(np.ones((1, 4)), verbose=0))
                self.model.set_weights(self.model.get_weights())

        rng = np.random.default_rng(0)
        model.fit(rng.random((32, 4)), rng.random((32, 2)), epochs=3, verbose=0, callbacks=[Probe()] if probe else [])
        return model.get_weights(), seen

    plain, _ = run(False)
    probed, seen = run(True)
    for a, b in zip(plain, probed):
        np.testing.assert_array_equal(a, b)
    assert len({float(s.sum()) for s in seen}) == 3  # the extractor saw the weights move each epoch
