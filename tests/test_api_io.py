"""One engine, two front doors: specc.load(spec) and model.to_yaml() round trips for every file in specs/,
weights in Keras's order and layouts, save_weights/load_weights, and the CLI's engine giving the same
numbers as the Python API."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import specc
from specc import layers
from specc.spec import load_spec, load_spec_text
from specc.summary import summary_text

from .test_guide_examples import summary_of

REPO = Path(__file__).resolve().parent.parent
SPEC_FILES = sorted((REPO / "specs").glob("*.yaml"))


@pytest.fixture(autouse=True)
def fresh_session():
    specc.clear_session()
    specc.set_random_seed(0)


def sample_inputs(spec, n=5, seed=0):
    rng = np.random.default_rng(seed)
    xs = []
    for node in spec.graph.inputs:
        shape = (n, *node.output_shape)
        first = next(c for c in spec.graph.nodes if node.name in c.inbound)
        if first.layer.type == "Embedding":
            xs.append(rng.integers(0, first.layer.input_dim, shape).astype(np.float32))
        else:
            xs.append(rng.standard_normal(shape).astype(np.float32))
    return xs[0] if len(xs) == 1 else xs


def as_list(p):
    return p if isinstance(p, list) else [p]


@pytest.mark.parametrize("path", SPEC_FILES, ids=lambda p: p.stem)
def test_spec_to_model_to_yaml_to_model(path, tmp_path):
    spec, errors = load_spec(path)
    assert not errors
    model = specc.load(path)
    text = model.to_yaml()
    again_spec, errors = load_spec_text(text, "roundtrip.yaml")
    assert errors == []  # the written spec validates
    (tmp_path / "roundtrip.yaml").write_text(text)
    again = specc.load(tmp_path / "roundtrip.yaml")
    assert summary_of(again) == summary_of(model) == summary_text(spec.graph).rstrip("\n")
    x = sample_inputs(spec)
    for a, b in zip(as_list(model.predict(x, verbose=0)), as_list(again.predict(x, verbose=0))):
        np.testing.assert_array_equal(a, b)
    assert again.to_yaml() == text  # and the YAML is a fixed point


@pytest.mark.parametrize("path", SPEC_FILES, ids=lambda p: p.stem)
def test_loaded_model_runs_on_the_clis_engine_numbers(path):
    """specc.load initialises weights exactly as `specc train` does, and runs the same Engine."""
    from specc.engine import Engine
    from specc.train.fit import Trainer

    spec, _ = load_spec(path)
    engine = Engine(spec.graph)
    engine.initialize(spec.seed)
    model = specc.load(path)
    for a, b in zip(model.get_weights(), engine.get_weights()):
        np.testing.assert_array_equal(a, b)
    x = sample_inputs(spec)
    for a, b in zip(as_list(model.predict(x, verbose=0)), Trainer.predict_with(engine, as_list(x))):
        np.testing.assert_array_equal(a, b)


def test_loaded_model_is_compiled_from_the_spec_and_trains():
    model = specc.load(REPO / "specs" / "iris_mlp.yaml")
    assert model.metrics_names == ["loss", "accuracy"]
    rng = np.random.default_rng(0)
    history = model.fit(rng.standard_normal((30, 4)), rng.integers(0, 3, 30), epochs=2, verbose=0)
    assert len(history.history["loss"]) == 2


def test_invalid_spec_raises_with_every_error(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("specc: 1\nmodel:\n  input: [4]\n  layers:\n    - {type: Dense, units: -1}\n"
                   "    - {type: Dense, units: 2, activation: relux}\n")
    with pytest.raises(specc.SpecInvalid) as info:
        specc.load(bad)
    assert len(info.value.errors) == 2 and "bad.yaml:5" in str(info.value)


def test_python_models_write_specs_that_load_back():
    image = specc.Input(shape=(8, 8, 1), name="image")
    meta = specc.Input(shape=(3,), name="meta")
    h = layers.GlobalMaxPooling2D()(layers.Conv2D(4, 3, padding="same", activation="relu")(image))
    out = layers.Dense(2, activation="softmax", name="label")(layers.Concatenate()([h, layers.Dense(4)(meta)]))
    model = specc.Model(inputs=[image, meta], outputs=out, name="two_in")
    model.compile(optimizer=specc.optimizers.Adam(learning_rate=0.01), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    text = model.to_yaml()
    spec, errors = load_spec_text(text)
    assert not errors and spec.compile.optimizer.learning_rate == 0.01
    again = specc.load(spec)
    again.set_weights(model.get_weights())
    assert summary_of(again) == summary_of(model)
    x = [np.random.default_rng(0).random((3, 8, 8, 1)), np.random.default_rng(1).random((3, 3))]
    np.testing.assert_array_equal(again.predict(x, verbose=0), model.predict(x, verbose=0))


def test_to_yaml_refuses_what_a_spec_cannot_say():
    with pytest.raises(ValueError, match="not yet been built"):
        specc.Sequential([layers.Dense(2)]).to_yaml()


def test_shared_layers_round_trip_through_yaml(tmp_path):
    """A Siamese model: one encoder applied to two inputs is written with `use` and loads back sharing
    its weights, predicting the same."""
    a, b = specc.Input(shape=(4,), name="left"), specc.Input(shape=(4,), name="right")
    encoder = layers.Dense(3, activation="tanh", name="encoder")
    model = specc.Model([a, b], layers.Dense(1, name="score")(layers.Subtract()([encoder(a), encoder(b)])))
    text = model.to_yaml()
    assert "use: encoder" in text
    spec = tmp_path / "siamese.yaml"
    spec.write_text(text)
    again = specc.load(spec)
    assert again.count_params() == model.count_params() == 3 * 4 + 3 + 3 + 1
    again.set_weights(model.get_weights())
    x = [np.random.default_rng(0).random((5, 4)), np.random.default_rng(1).random((5, 4))]
    np.testing.assert_array_equal(again.predict(x, verbose=0), model.predict(x, verbose=0))


def test_weights_follow_keras_order_and_layouts():
    model = specc.Sequential([
        specc.Input(shape=(6, 6, 3)),
        layers.Conv2D(4, 3, name="conv"),
        layers.BatchNormalization(name="bn"),
        layers.Reshape((16, 4)),
        layers.LSTM(5, name="lstm"),
        layers.Dense(2, name="head"),
    ])
    assert [(v.path, v.shape) for v in model.weights] == [
        ("conv/kernel", (3, 3, 3, 4)), ("conv/bias", (4,)),
        ("bn/gamma", (4,)), ("bn/beta", (4,)), ("bn/moving_mean", (4,)), ("bn/moving_variance", (4,)),
        ("lstm/kernel", (4, 20)), ("lstm/recurrent_kernel", (5, 20)), ("lstm/bias", (20,)),
        ("head/kernel", (5, 2)), ("head/bias", (2,)),
    ]
    weights = [np.random.default_rng(i).random(w.shape).astype(np.float32) for i, w in enumerate(model.weights)]
    model.set_weights(weights)
    for a, b in zip(model.get_weights(), weights):
        np.testing.assert_array_equal(a, b)
    assert [v.trainable for v in model.weights].count(False) == 2  # the BN statistics
    with pytest.raises(ValueError, match="weight list of length 2, but the layer was expecting 11 weights"):
        model.set_weights(weights[:2])


def test_save_and_load_weights_round_trip_and_mismatch(tmp_path):
    def build(units=3):
        return specc.Sequential([specc.Input(shape=(4,)), layers.Dense(units), layers.Dense(2)])

    model = build()
    path = tmp_path / "model.weights.npz"
    model.save_weights(path)
    other = build()  # different auto-names (dense_2, dense_3): loads by structure, as Keras 3 does
    other.load_weights(path)
    x = np.ones((1, 4))
    np.testing.assert_array_equal(other(x), model(x))
    with pytest.raises(ValueError, match=r"cannot load .* into model 'sequential_2': array 0 \(dense/kernel\) has "
                                         r"shape \(4, 3\), but the model's weight dense_4/kernel has shape \(4, 5\)"):
        build(units=5).load_weights(path)
    with pytest.raises(ValueError, match="the file has 4 weight arrays, the model has 2"):
        specc.Sequential([specc.Input(shape=(4,)), layers.Dense(3)]).load_weights(path)
    with pytest.raises(ValueError, match="ending in .weights.h5 or .npz"):
        model.save_weights(tmp_path / "model.h5")
    with pytest.raises(FileNotFoundError):
        model.load_weights(tmp_path / "missing.npz")


def test_cli_run_weights_load_into_the_python_model(tmp_path):
    """A weights file in the CLI's format (layer/weight keys) loads by name into specc.load's model."""
    from specc.engine import Engine
    from specc.train.run import save_weights

    spec, _ = load_spec(REPO / "specs" / "digits_mlp.yaml")
    engine = Engine(spec.graph)
    engine.initialize(123)
    save_weights(str(tmp_path / "weights.final.npz"), engine)
    model = specc.load(REPO / "specs" / "digits_mlp.yaml")
    model.load_weights(tmp_path / "weights.final.npz")
    for a, b in zip(model.get_weights(), engine.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_importing_specc_and_building_models_does_not_load_numba():
    code = ("import sys, specc\nfrom specc import layers\n"
            "m = specc.Sequential([specc.Input(shape=(3,)), layers.Dense(2)])\n"
            "m.summary(print_fn=lambda s: None)\nm.to_yaml()\n"
            "print('numba' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
