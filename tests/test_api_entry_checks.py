"""No array reaches a compiled kernel unchecked: every entry point of the Python API (fit's x and y,
validation_data, validation_split, evaluate, predict, model and layer calls, set_weights, load_weights)
and of the training loop the CLI runs (Trainer.fit / evaluate / predict_with, resumed runs, optimizer
state) checks shape, rank, dtype and the number of samples, and raises a Keras-style ValueError that
names the array and shows the expected and found shapes.

The positive cases at the end run each entry point on well-formed data with partial last batches, so a run
with NUMBA_BOUNDSCHECK=1 (and a fresh NUMBA_CACHE_DIR: Numba's cache does not key on bounds checking, so a
cached kernel would run unchecked) exercises the kernels behind the checks too.
"""

from __future__ import annotations

import numpy as np
import pytest

import specc
from specc import layers

N = 20


@pytest.fixture(autouse=True)
def fresh_session():
    specc.clear_session()
    specc.set_random_seed(0)


def conv_model(loss="sparse_categorical_crossentropy"):
    """(None, 8, 8, 1) -> 3 classes, through the convolution kernels (not the fused Dense chain)."""
    model = specc.Sequential([specc.Input(shape=(8, 8, 1)), layers.Conv2D(4, 3, activation="relu"),
                              layers.MaxPooling2D(2), layers.Flatten(), layers.Dense(3, activation="softmax")],
                             name="convnet")
    model.compile(optimizer="adam", loss=loss, metrics=["accuracy"])
    return model


def two_input_model():
    a, b = specc.Input(shape=(4,), name="a"), specc.Input(shape=(2,), name="b")
    out = layers.Dense(3, activation="softmax", name="out")(layers.Concatenate()([layers.Dense(5)(a), b]))
    model = specc.Model(inputs=[a, b], outputs=out, name="two")
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    return model


def images(n=N, channels=1, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, 8, 8, channels)).astype(np.float32), rng.integers(0, 3, n)


X, Y = images()
X3, _ = images(channels=3)
ONE_HOT = np.eye(3, dtype=np.float32)[Y]
A = np.random.default_rng(1).standard_normal((N, 4)).astype(np.float32)
B = np.random.default_rng(2).standard_normal((N, 2)).astype(np.float32)

# (case id, model factory, call on the model, regex the ValueError must match)
CASES = [
    # fit: x, y, and their agreement
    ("fit x channels", conv_model, lambda m: m.fit(X3, Y, verbose=0),
     r'^x: Input 0 of layer "convnet" is incompatible with the layer: expected shape=\(None, 8, 8, 1\), '
     r"found shape=\(20, 8, 8, 3\)$"),
    ("fit x rank", conv_model, lambda m: m.fit(X[..., 0], Y, verbose=0),
     r"^x: .*expected shape=\(None, 8, 8, 1\), found shape=\(20, 8, 8\)$"),
    ("fit x scalar", conv_model, lambda m: m.fit(3.0, Y, verbose=0), r"^x is a scalar"),
    ("fit x complex", conv_model, lambda m: m.fit(X.astype(np.complex64), Y, verbose=0),
     r"^x has dtype complex64 \(complex numbers\); expected real numbers"),
    ("fit x strings", conv_model, lambda m: m.fit(X.astype(str), Y, verbose=0), r"^x has dtype <U\d+ \(strings\)"),
    ("fit x objects", conv_model, lambda m: m.fit(X.astype(object), Y, verbose=0),
     r"^x has dtype object \(Python objects\)"),
    ("fit x ragged list", conv_model, lambda m: m.fit([[1.0, 2.0], [3.0]], Y, verbose=0),
     r"^x cannot be read as an array"),
    ("fit x None", conv_model, lambda m: m.fit(None, Y, verbose=0), r"^x is None"),
    ("fit y None", conv_model, lambda m: m.fit(X, None, verbose=0), r"^y is None"),
    ("fit y strings", conv_model, lambda m: m.fit(X, Y.astype(str), verbose=0), r"^y has dtype <U\d+ \(strings\)"),
    ("fit y one-hot for a sparse loss", conv_model, lambda m: m.fit(X, ONE_HOT, verbose=0),
     r"^y: sparse_categorical_crossentropy takes class indices of shape \(None,\) for output 'dense' of shape "
     r"\(None, 3\), but y has shape \(20, 3\); for one-hot targets use categorical_crossentropy$"),
    ("fit y one-hot too wide", lambda: conv_model("categorical_crossentropy"),
     lambda m: m.fit(X, np.eye(4, dtype=np.float32)[Y], verbose=0),
     r"^y: categorical_crossentropy takes one-hot targets of the output's shape: output 'dense' has shape "
     r"\(None, 3\), y has shape \(20, 4\)$"),
    ("fit y labels for a one-hot loss", lambda: conv_model("categorical_crossentropy"),
     lambda m: m.fit(X, Y, verbose=0), r"integer class labels take sparse_categorical_crossentropy"),
    ("fit y wrong width for mse", lambda: conv_model("mse"), lambda m: m.fit(X, np.ones((N, 2)), verbose=0),
     r"^y: mean_squared_error needs targets of the output's shape: output 'dense' has shape \(None, 3\), y has "
     r"shape \(20, 2\)$"),
    ("fit y shorter than x", conv_model, lambda m: m.fit(X, Y[:5], verbose=0),
     r"^Data cardinality is ambiguous\. Make sure all arrays contain the same number of samples\. 'x' sizes: 20, "
     r"'y' sizes: 5$"),
    ("fit y labels out of range", conv_model, lambda m: m.fit(X, Y + 3, verbose=0),
     r"^y: received a label value of \d which is outside the valid range of \[0, 3\) for output 'dense'"),
    ("fit y negative label", conv_model, lambda m: m.fit(X, Y - 1, verbose=0),
     r"^y: received a label value of -1 which is outside the valid range of \[0, 3\)"),
    # validation_data and validation_split
    ("validation_data x channels", conv_model, lambda m: m.fit(X, Y, validation_data=(X3, Y), verbose=0),
     r'^validation_data x: Input 0 of layer "convnet" is incompatible with the layer: expected '
     r"shape=\(None, 8, 8, 1\), found shape=\(20, 8, 8, 3\)$"),
    ("validation_data x complex", conv_model,
     lambda m: m.fit(X, Y, validation_data=(X.astype(complex), Y), verbose=0), r"^validation_data x has dtype complex"),
    ("validation_data y length", conv_model, lambda m: m.fit(X, Y, validation_data=(X, Y[:7]), verbose=0),
     r"'validation_data x' sizes: 20, 'validation_data y' sizes: 7$"),
    ("validation_data y out of range", conv_model, lambda m: m.fit(X, Y, validation_data=(X, Y * 9), verbose=0),
     r"^validation_data y: received a label value of \d+ which is outside the valid range of \[0, 3\)"),
    ("validation_data empty", conv_model, lambda m: m.fit(X, Y, validation_data=(X[:0], Y[:0]), verbose=0),
     r"^Expected input data to be non-empty: validation_data has 0 samples$"),
    ("validation_split 1", conv_model, lambda m: m.fit(X, Y, validation_split=1.0, verbose=0),
     r"^validation_split must be a number in \[0, 1\), got 1\.0$"),
    ("validation_split string", conv_model, lambda m: m.fit(X, Y, validation_split="0.2", verbose=0),
     r"^validation_split must be a number in \[0, 1\)"),
    ("validation_split leaves no validation", conv_model,
     lambda m: m.fit(X[:1], Y[:1], validation_split=0.5, verbose=0),
     r"^Training data contains 1 samples, which is not sufficient to split it into a validation and training set "
     r"as specified by `validation_split=0\.5`"),
    # evaluate / predict / calls
    ("evaluate x channels", conv_model, lambda m: m.evaluate(X3, Y, verbose=0),
     r'^x: Input 0 of layer "convnet" is incompatible with the layer: expected shape=\(None, 8, 8, 1\)'),
    ("evaluate y length", conv_model, lambda m: m.evaluate(X, Y[:3], verbose=0),
     r"'x' sizes: 20, 'y' sizes: 3$"),
    ("evaluate y float labels", conv_model, lambda m: m.evaluate(X, Y + 0.25, verbose=0),
     r"^y: sparse_categorical_crossentropy takes integer class indices, but y has the value \d\.25 \(flat position 0\)"),
    ("evaluate empty", conv_model, lambda m: m.evaluate(X[:0], Y[:0], verbose=0),
     r"^Expected input data to be non-empty: x has 0 samples$"),
    ("predict x channels", conv_model, lambda m: m.predict(X3, verbose=0),
     r'^x: Input 0 of layer "convnet" is incompatible with the layer: expected shape=\(None, 8, 8, 1\), '
     r"found shape=\(20, 8, 8, 3\)$"),
    ("predict one sample without batch axis", conv_model, lambda m: m.predict(X[0], verbose=0),
     r"found shape=\(8, 8, 1\)$"),
    ("predict strings", conv_model, lambda m: m.predict(X.astype(str), verbose=0), r"^x has dtype <U\d+"),
    ("predict empty", conv_model, lambda m: m.predict(X[:0], verbose=0),
     r"^Expected input data to be non-empty: x has 0 samples$"),
    ("call x channels", conv_model, lambda m: m(X3), r'^x: Input 0 of layer "convnet" is incompatible'),
    ("call complex", conv_model, lambda m: m(X.astype(np.complex128)), r"^x has dtype complex128"),
    ("predict_on_batch x rank", conv_model, lambda m: m.predict_on_batch(X[:, :, :, 0]), r"found shape=\(20, 8, 8\)$"),
    # several inputs: each named by its input
    ("two inputs: second has the wrong width", two_input_model, lambda m: m.fit({"a": A, "b": A}, Y, verbose=0),
     r'^x\[\'b\'\]: Input 1 of layer "two" is incompatible with the layer: expected shape=\(None, 2\), found '
     r"shape=\(20, 4\)$"),
    ("two inputs: lengths differ", two_input_model, lambda m: m.fit([A, B[:10]], Y, verbose=0),
     r"^Data cardinality is ambiguous\..*'x\['a'\]' sizes: 20, 'x\['b'\]' sizes: 10, 'y' sizes: 20$"),
    ("two inputs: one missing", two_input_model, lambda m: m.predict({"a": A}, verbose=0),
     r"^x: model 'two' expects inputs \['a', 'b'\]; missing \['b'\]$"),
    ("two inputs: validation_data second input", two_input_model,
     lambda m: m.fit([A, B], Y, validation_data=([A, B.astype(str)], Y), verbose=0),
     r"^validation_data x\['b'\] has dtype <U"),
    # weights
    ("set_weights wrong shape", conv_model, lambda m: m.set_weights([w.T for w in m.get_weights()]),
     r"^Layer 'convnet' weight shape \(3, 3, 1, 4\) \(conv2d/kernel\) is not compatible with provided weight shape"),
    ("set_weights complex", conv_model, lambda m: m.set_weights([w.astype(complex) for w in m.get_weights()]),
     r"^weights\[0\] \(conv2d/kernel\) has dtype complex128"),
    ("set_weights too few", conv_model, lambda m: m.set_weights(m.get_weights()[:-1]),
     r"with a weight list of length 3, but the layer was expecting 4 weights"),
    ("layer.set_weights wrong shape", conv_model, lambda m: m.layers[-1].set_weights([np.ones((3, 3)), np.ones(3)]),
     r"^Layer 'dense' weight shape \(36, 3\) \(dense/kernel\) is not compatible with provided weight shape \(3, 3\)"),
    ("Variable.assign strings", conv_model, lambda m: m.weights[1].assign(np.array(["0.5"] * 4)),
     r"^the value assigned to conv2d/bias has dtype <U3"),
]


@pytest.mark.parametrize("make, call, message", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_entry_point_rejects_bad_arrays_before_any_work(make, call, message):
    model = make()
    before = model.get_weights()
    with pytest.raises(ValueError, match=message):
        call(model)
    for w, w0 in zip(model.get_weights(), before):  # nothing ran: no step, no partial write
        np.testing.assert_array_equal(w, w0)


def test_deferred_sequential_checks_its_first_data():
    model = specc.Sequential([layers.Dense(3)])
    with pytest.raises(ValueError, match=r"builds from its first data, which needs a batch axis and at least one "
                                         r"more.*got an array of shape \(5,\)"):
        model.predict(np.ones(5), verbose=0)
    assert not model.built
    with pytest.raises(ValueError, match=r"^x has dtype complex128"):
        model(np.ones((2, 4), complex))
    assert not model.built
    model.compile(optimizer="sgd", loss="mse")
    model.fit(np.ones((4, 2)), np.ones((4, 3)), verbose=0)  # builds for (None, 2)
    with pytest.raises(ValueError, match=r"expected shape=\(None, 2\), found shape=\(4, 5\)"):
        model.evaluate(np.ones((4, 5)), np.ones((4, 3)), verbose=0)


def test_layer_call_checks_dtype():
    with pytest.raises(ValueError, match=r"^x has dtype complex128"):
        layers.Dense(2)(np.ones((3, 4), complex))


# --- weights files --------------------------------------------------------------------------------------


def _bad_weight_files(tmp_path, model):
    good = tmp_path / "good.weights.npz"
    model.save_weights(good)
    data = good.read_bytes()
    (tmp_path / "truncated.npz").write_bytes(data[: len(data) // 2])
    (tmp_path / "empty.npz").write_bytes(b"")
    (tmp_path / "text.npz").write_text("conv2d/kernel: [1, 2, 3]\n")
    np.save(tmp_path / "one_array.npy", np.ones(3))
    arrays = {f"w{k}": w.astype(complex) for k, w in enumerate(model.get_weights())}
    np.savez(tmp_path / "complex.npz", **arrays)
    np.savez(tmp_path / "strings.npz", **{k: np.array(["x"]) for k in arrays})
    return {"truncated.npz": r"not a weights file written by save_weights .* or it is damaged",
            "empty.npz": r"not a weights file written by save_weights .* or it is damaged",
            "text.npz": r"not a weights file written by save_weights .* or it is damaged",
            "one_array.npy": r"it holds one array, not named weights",
            "complex.npz": r"array 0 \(w0\) has dtype complex128; weights are real numbers",
            "strings.npz": r"array 0 \(w0\) has dtype <U1; weights are real numbers"}


def test_load_weights_rejects_damaged_and_foreign_files(tmp_path):
    model = conv_model()
    before = model.get_weights()
    for name, message in _bad_weight_files(tmp_path, model).items():
        with pytest.raises(ValueError, match=rf"^cannot load .*{name} into model 'convnet': .*{message}"):
            model.load_weights(tmp_path / name)
    for w, w0 in zip(model.get_weights(), before):
        np.testing.assert_array_equal(w, w0)


# --- the training loop the CLI runs (specc.train.fit.Trainer on a spec's engine) --------------------------

SPEC = """
specc: 1
seed: 0
model:
  input: [8, 8, 1]
  layers:
    - {type: Conv2D, filters: 4, kernel_size: 3, activation: relu}
    - {type: Flatten}
    - {type: Dense, units: 3, activation: softmax}
compile: {optimizer: adam, loss: sparse_categorical_crossentropy}
"""


def spec_trainer():
    from specc.engine import Engine
    from specc.spec import load_spec_text
    from specc.train.fit import Trainer

    spec, errors = load_spec_text(SPEC, "spec.yaml")
    assert not errors
    engine = Engine(spec.graph)
    engine.initialize(0)
    return Trainer(engine, spec.compile, 0)


def test_trainer_checks_what_the_cli_hands_it():
    from specc.train.fit import Trainer

    trainer = spec_trainer()
    with pytest.raises(ValueError, match=r'^x: Input 0 of layer "spec" is incompatible with the layer: expected '
                                         r"shape=\(None, 8, 8, 1\), found shape=\(20, 8, 8, 3\)$"):
        trainer.fit(X3, Y, verbose=0)
    with pytest.raises(ValueError, match=r"^validation_data x: .*found shape=\(20, 8, 8, 3\)$"):
        trainer.fit(X, Y, validation_data=(X3, Y), verbose=0)
    with pytest.raises(ValueError, match=r"^x: .*found shape=\(20, 8, 8, 3\)$"):
        trainer.evaluate(X3, Y)
    with pytest.raises(ValueError, match=r"^x: .*found shape=\(20, 8, 8, 3\)$"):
        Trainer.predict_with(trainer.engine, [X3])
    with pytest.raises(ValueError, match=r"^x: model 'spec' expects 1 input\(s\) \(input_layer\), but it received 2"):
        Trainer.predict_with(trainer.engine, [X, X])
    with pytest.raises(ValueError, match=r"^batch_size must be a positive integer, got 0$"):
        Trainer.predict_with(trainer.engine, [X], batch_size=0)
    empty = Trainer.predict_with(trainer.engine, [X[:0]])  # nothing to predict: empty outputs, no kernel
    assert [p.shape for p in empty] == [(0, 3)]


def test_trainer_rejects_a_checkpoint_that_does_not_fit_the_data():
    trainer = spec_trainer()
    stale = {"epoch": 0, "step": 1, "order": list(range(N + 5)), "total_sum": 0.0, "out_sums": [0.0], "seen": 8,
             "metrics": [[]]}
    with pytest.raises(ValueError, match=r"^the checkpoint's sample order covers 25 samples, but the training data "
                                         r"has 20: the data changed"):
        trainer.fit(X, Y, batch_size=8, verbose=0, resume=stale)
    past_the_end = dict(stale, order=list(range(N)), step=3)
    with pytest.raises(ValueError, match=r"continues at step 3 of an epoch of 3 steps"):
        trainer.fit(X, Y, batch_size=8, verbose=0, resume=past_the_end)


def test_optimizer_state_is_checked_before_it_is_loaded():
    from specc.spec.schema import OptimizerDef
    from specc.train.optimizers import make_optimizer

    opt = make_optimizer(OptimizerDef(type="adam"), np.array([0, 6, 10]))
    state = {k: np.array(v, copy=True) for k, v in opt.state_arrays().items()}
    with pytest.raises(ValueError, match=r"optimizer state 'velocity' has shape \(10,\), got \(9,\)"):
        opt.load_state_arrays(state | {"velocity": np.zeros(9)})
    with pytest.raises(ValueError, match=r"optimizer state 'momentum' has dtype complex128"):
        opt.load_state_arrays(state | {"momentum": np.zeros(10, complex)})
    with pytest.raises(ValueError, match=r"optimizer state has \[.*\], got \['momentum'\]"):
        opt.load_state_arrays({"momentum": np.zeros(10)})
    opt.load_state_arrays(state | {"momentum": np.ones(10)})
    np.testing.assert_array_equal(opt.state_arrays()["momentum"], np.ones(10))


# --- every entry point on well-formed data, through the kernels -----------------------------------------


def test_every_entry_point_runs_on_well_formed_data(tmp_path):
    model = conv_model()
    history = model.fit(X, Y.astype(np.float64), batch_size=7, epochs=2, validation_data=(X[:9], Y[:9]),
                        validation_batch_size=4, verbose=0)
    assert set(history.history) == {"loss", "accuracy", "val_loss", "val_accuracy"}
    model.fit(X, Y, batch_size=64, validation_split=0.25, verbose=0)  # one batch larger than the data
    loss, acc = model.evaluate(X[:1], Y[:1], batch_size=3, verbose=0)
    assert np.isfinite(loss) and 0 <= acc <= 1
    assert model.predict(X[:5], batch_size=2, verbose=0).shape == (5, 3)
    assert model(X[:2]).shape == (2, 3)
    model.set_weights(model.get_weights())
    model.save_weights(tmp_path / "w.weights.npz")
    model.load_weights(tmp_path / "w.weights.npz")

    two = two_input_model()
    two.fit({"a": A, "b": B}, Y, batch_size=6, validation_split=0.2, verbose=0)
    assert two.predict([A[:3], B[:3]], verbose=0).shape == (3, 3)
