"""Mistakes a Keras user makes through the Python API: each is a clear Keras-style error, or accepted where
Keras 3 accepts it (one callback instead of a list, a schedule's positional arguments, integral float
labels for a sparse loss). Empty training data is a ValueError before any work, in the API and in the
training loop the CLI runs."""

from __future__ import annotations

import numpy as np
import pytest

import specc
from specc import layers


@pytest.fixture(autouse=True)
def fresh_session():
    specc.clear_session()
    specc.set_random_seed(0)


def data(n=20, features=6, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, features)).astype(np.float32)
    return x, x[:, :classes].argmax(axis=1).astype(np.int64)


def mlp(loss="sparse_categorical_crossentropy", seed=0):
    specc.set_random_seed(seed)
    model = specc.Sequential([specc.Input(shape=(6,)), layers.Dense(8, activation="relu"),
                              layers.Dense(3, activation="softmax")])
    model.compile(optimizer="adam", loss=loss)
    return model


# --- no training data --------------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs, n, message", [
    ({}, 0, r"^Expected input data to be non-empty: x has 0 samples$"),
    ({"validation_split": 0.99}, 20, r"^Training data contains 20 samples, which is not sufficient to split it into "
                                     r"a validation and training set as specified by `validation_split=0\.99`"),
], ids=["no samples", "validation_split takes them all"])
def test_fit_without_training_samples_is_a_value_error_before_any_work(kwargs, n, message):
    from specc.train.callbacks import Callback

    class Spy(Callback):
        began = False

        def on_train_begin(self):
            Spy.began = True

    x, y = data()
    model = mlp()
    before = model.get_weights()
    with pytest.raises(ValueError, match=message):
        model.fit(x[:n], y[:n], callbacks=[Spy()], verbose=0, **kwargs)
    assert not Spy.began
    for w, w0 in zip(model.get_weights(), before):
        np.testing.assert_array_equal(w, w0)


def test_trainer_fit_without_samples_is_a_value_error():
    """The training loop the CLI runs says the same (it ended in UnboundLocalError: 'logs')."""
    model = mlp()
    x, y = data()
    trainer = model._get_trainer()
    with pytest.raises(ValueError, match=r"^Expected input data to be non-empty: x has 0 samples$"):
        trainer.fit(x[:0], y[:0], verbose=0)
    with pytest.raises(ValueError, match=r"not sufficient to split it into a validation and training set"):
        trainer.fit(x, y, validation_split=0.99, verbose=0)


# --- fit arguments --------------------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs, error, message", [
    ({"validation_data": (np.zeros((2, 6)),)}, ValueError,
     r"^validation_data must be a tuple \(x_val, y_val\) or \(x_val, y_val, val_sample_weight\); got a tuple of "
     r"1 item$"),
    ({"validation_data": np.zeros((2, 6))}, ValueError, r"^validation_data must be a tuple .*; got a ndarray$"),
    ({"batch_size": 0}, ValueError, r"^batch_size must be a positive integer, got 0$"),
    ({"batch_size": -1}, ValueError, r"^batch_size must be a positive integer, got -1$"),
    ({"batch_size": 2.5}, ValueError, r"^batch_size must be a positive integer, got 2\.5$"),
    ({"batch_size": True}, ValueError, r"^batch_size must be a positive integer, got True$"),
    ({"validation_batch_size": 0}, ValueError, r"^validation_batch_size must be a positive integer, got 0$"),
    ({"epochs": 1.5}, ValueError, r"^epochs must be a non-negative integer, got 1\.5$"),
    ({"class_weight": [1.0, 2.0, 1.0]}, ValueError, r"^class_weight must be a dict mapping class indices"),
    ({"callbacks": "early_stopping"}, TypeError, r"^callbacks must be a specc\.callbacks object or a list of them"),
    ({"callbacks": [print]}, TypeError, r"^callbacks must be specc\.callbacks objects"),
], ids=["validation_data (x,)", "validation_data array", "batch_size 0", "batch_size -1", "batch_size float",
        "batch_size bool", "validation_batch_size 0", "epochs float", "class_weight list", "callbacks string",
        "callbacks function"])
def test_fit_arguments_keras_rejects(kwargs, error, message):
    x, y = data()
    with pytest.raises(error, match=message):
        mlp().fit(x, y, verbose=0, **kwargs)


@pytest.mark.parametrize("method", ["evaluate", "predict"])
def test_evaluate_and_predict_reject_a_bad_batch_size(method):
    x, y = data()
    model = mlp()
    args = (x, y) if method == "evaluate" else (x,)
    with pytest.raises(ValueError, match=r"^batch_size must be a positive integer, got 0$"):
        getattr(model, method)(*args, batch_size=0, verbose=0)


def test_fit_takes_a_single_callback_as_keras_3_does():
    seen = []

    class Record(specc.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            seen.append(epoch)

    x, y = data()
    mlp().fit(x, y, epochs=3, callbacks=Record(), verbose=0)
    assert seen == [0, 1, 2]
    stop = specc.callbacks.EarlyStopping(monitor="loss", patience=0, min_delta=1e9)  # no epoch ever improves enough
    history = mlp().fit(x, y, epochs=5, callbacks=stop, verbose=0)
    assert len(history.epoch) == 2


def test_validation_data_with_none_sample_weights_is_accepted():
    x, y = data()
    history = mlp().fit(x, y, validation_data=(x[:5], y[:5], None), verbose=0)
    assert "val_loss" in history.history


# --- sparse labels ----------------------------------------------------------------------------------------


def test_integral_float_labels_train_like_integer_labels():
    x, y = data()
    as_int = mlp(seed=3).fit(x, y, epochs=2, batch_size=8, shuffle=False, verbose=0).history["loss"]
    as_float = mlp(seed=3).fit(x, y.astype(np.float32), epochs=2, batch_size=8, shuffle=False,
                               verbose=0).history["loss"]
    assert as_float == as_int
    conv = specc.Sequential([specc.Input(shape=(4, 4, 1)), layers.Conv2D(2, 3), layers.Flatten(),
                             layers.Dense(3, activation="softmax")])
    conv.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    history = conv.fit(x[:, :1].reshape(-1, 1, 1, 1) * np.ones((1, 4, 4, 1)), y.astype(np.float64).reshape(-1, 1),
                       verbose=0)
    assert np.isfinite(history.history["loss"][0])


@pytest.mark.parametrize("labels, message", [
    (lambda y: y + 0.5, r"^y: sparse_categorical_crossentropy takes integer class indices, but y has the value "
                        r"\d\.5 \(flat position 0\)"),
    (lambda y: np.where(np.arange(len(y)) == 4, np.nan, y), r"takes integer class indices, but y has the value nan "
                                                            r"\(flat position 4\)"),
    (lambda y: y.astype(np.float32) + 3, r"^y: received a label value of \d\.0 which is outside the valid range of "
                                         r"\[0, 3\) for output 'dense_1'"),
], ids=["fractional", "nan", "out of range"])
def test_float_labels_that_are_not_class_indices_are_an_error(labels, message):
    x, y = data()
    with pytest.raises(ValueError, match=message):
        mlp().fit(x, labels(y.astype(np.float64)), verbose=0)


# --- evaluate, weights, build, config -------------------------------------------------------------------


def test_evaluate_with_fewer_targets_than_samples():
    x, y = data()
    with pytest.raises(ValueError, match=r"^Data cardinality is ambiguous\. Make sure all arrays contain the same "
                                         r"number of samples\. 'x' sizes: 20, 'y' sizes: 3$"):
        mlp().evaluate(x, y[:3], verbose=0)


@pytest.mark.parametrize("weights", [None, 3, "weights.npz", {"dense": 1}], ids=["None", "int", "str", "dict"])
def test_set_weights_of_something_else_than_a_list(weights):
    model = mlp()
    for target in (model, model.layers[0]):
        with pytest.raises((TypeError, ValueError), match=r"set_weights\(\) on layer '.*' takes a list of NumPy "
                                                          r"arrays, as get_weights\(\) returns; got "):
            target.set_weights(weights)


@pytest.mark.parametrize("content", [b"", b"not a weights file\n", "truncated"], ids=["empty", "text", "truncated"])
def test_load_weights_of_a_damaged_file(tmp_path, content):
    model = mlp()
    path = tmp_path / "model.weights.npz"
    model.save_weights(path)
    path.write_bytes(path.read_bytes()[:200] if content == "truncated" else content)
    with pytest.raises(ValueError, match=r"^cannot load .*model\.weights\.npz into model 'sequential': it is not a "
                                         r"weights file written by save_weights"):
        model.load_weights(path)


@pytest.mark.parametrize("shape", [16, 16.0, "16"], ids=["int", "float", "str"])
def test_build_with_a_bare_number(shape):
    """Keras 3's Sequential.build returns without building for a non-tuple (an int could mean the batch size
    or the features); specc says so instead of leaving the model silently unbuilt."""
    model = specc.Sequential([layers.Dense(2)])
    with pytest.raises(ValueError, match=r"^build\(\) takes the input shape as a tuple with the batch axis first, "
                                         r"e\.g\. model\.build\(\(None, "):
        model.build(shape)
    assert not model.built
    model.build((None, 16))
    assert model.built and model.layers[0].weights[0].shape == (16, 2)


def test_layer_build_with_a_bare_number():
    with pytest.raises(ValueError, match=r"^build\(\) of Dense 'dense' takes the input shape as a tuple with the batch "
                                         r"axis first, e\.g\. build\(\(None, 16\)\); got 16$"):
        layers.Dense(2).build(16)
    with pytest.raises(ValueError, match=r"\(one per input\); got \[4, 4\]$"):
        layers.Add().build([4, 4])
    dense = layers.Dense(2)
    dense.build((None, 16))
    assert dense.weights[0].shape == (16, 2)


def test_get_config_of_an_unbuilt_sequential():
    model = specc.Sequential([layers.Dense(4, activation="relu"), layers.Dense(2, name="head")])
    config = model.get_config()
    assert [(entry["type"], entry["name"], entry["units"]) for entry in config["layers"]] == \
           [("Dense", "dense", 4), ("Dense", "head", 2)]
    assert "input" not in config  # Keras 3: no build_input_shape before the model is built
    model.build((None, 3))
    built = model.get_config()
    assert built["input"]["shape"] == [3] and built["layers"] == config["layers"]


# --- learning-rate schedules ------------------------------------------------------------------------------


@pytest.mark.parametrize("name, args, kwargs", [
    ("ExponentialDecay", (0.01, 10, 0.9), {"initial_learning_rate": 0.01, "decay_steps": 10, "decay_rate": 0.9}),
    ("ExponentialDecay", (0.01, 10, 0.9, True, "decay"),
     {"initial_learning_rate": 0.01, "decay_steps": 10, "decay_rate": 0.9, "staircase": True}),
    ("CosineDecay", (0.1, 100, 0.01), {"initial_learning_rate": 0.1, "decay_steps": 100, "alpha": 0.01}),
    ("PiecewiseConstantDecay", ([10, 20], [0.1, 0.01, 0.001]), {"boundaries": [10, 20], "values": [0.1, 0.01, 0.001]}),
])
def test_schedules_take_keras_positional_arguments(name, args, kwargs):
    schedule_cls = getattr(specc.optimizers.schedules, name)
    assert schedule_cls(*args).definition == schedule_cls(**kwargs).definition
    optimizer = specc.optimizers.SGD(learning_rate=schedule_cls(*args))
    assert optimizer.definition.learning_rate.type == name
    assert optimizer.learning_rate == pytest.approx(args[1][0] if name == "PiecewiseConstantDecay" else args[0])


def test_schedule_positional_argument_errors():
    decay = specc.optimizers.schedules.ExponentialDecay
    with pytest.raises(TypeError, match=r"^ExponentialDecay\(\) takes at most 5 positional argument\(s\)"):
        decay(0.01, 10, 0.9, False, "name", 1)
    with pytest.raises(TypeError, match=r"^ExponentialDecay\(\) got multiple values for argument 'decay_steps'"):
        decay(0.01, 10, decay_steps=20, decay_rate=0.9)
    with pytest.raises(ValueError, match=r"decay_steps"):
        decay(0.01, -10, 0.9)


def test_a_model_name_with_a_slash_round_trips_through_to_yaml_as_a_file_name():
    # Keras allows '/' in a model's name; a spec's name is a directory name under --out, so to_yaml cleans it
    from specc.spec import load_spec_text

    model = specc.Sequential([specc.layers.Input((3,)), specc.layers.Dense(2)], name="team/model")
    spec, errors = load_spec_text(model.to_yaml(), "m.yaml")
    assert not errors, errors
    assert spec.name == "team_model"


def test_a_checkpoint_path_naming_an_unlogged_metric_is_a_clear_error():
    from specc.train.callbacks import ModelCheckpoint

    class Config:
        monitor, mode, save_best_only, filepath = "loss", "auto", False, "ckpt_{val_loss:.2f}.npz"

    checkpoint = ModelCheckpoint(Config())
    checkpoint.trainer = type("T", (), {"run_dir": "/nonexistent", "save_weights": lambda self, path: None})()
    with pytest.raises(ValueError, match="names 'val_loss', which this run does not log; it logs: epoch, loss"):
        checkpoint.on_epoch_end(0, {"loss": 0.5})
