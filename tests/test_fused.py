"""The fused MLP path (specc/train/fused.py + specc/kernels/fused.py) against the general engine path:
the same loss, gradients, predictions and training trajectory for every activation and loss it takes;
the models it must refuse; and a steady state that allocates no arrays.

The general path is itself checked against finite differences and PyTorch/Keras elsewhere, so equality
with it (float64: to rounding) is what proves the fused kernel.
"""

from __future__ import annotations

import numpy as np
import pytest

from specc.engine import Engine
from specc.kernels import configure_threads
from specc.spec import load_spec_text
from specc.train.fit import Trainer
from specc.train.fused import DenseChain

from .stepmemory import StepPeak


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    configure_threads(1)


def make(layers: str, loss: str, dtype=np.float64, n_in: int = 6, optimizer: str = "sgd", extra: str = ""):
    text = f"""
specc: 1
model:
  input: [{n_in}]
  layers: {layers}
compile:
  optimizer: {{type: {optimizer}, learning_rate: 0.05}}
  loss: {loss}
{extra}
"""
    spec, errors = load_spec_text(text)
    assert not errors, errors
    engine = Engine(spec.graph, dtype)
    engine.initialize(3)
    return spec, engine


def data(n_in: int, n_out: int, loss: str, n: int = 40, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, n_in))
    if loss == "sparse_categorical_crossentropy":
        y = rng.integers(0, n_out, n)
    elif loss in ("categorical_crossentropy", "kl_divergence"):
        y = np.eye(n_out)[rng.integers(0, n_out, n)]
    elif loss == "binary_crossentropy":
        y = rng.integers(0, 2, (n, n_out)).astype(np.float64)
    else:
        y = rng.standard_normal((n, n_out))
    return x, y


CASES = [
    # (layers, loss)
    ("[{type: Dense, units: 5, activation: relu}, {type: Dense, units: 4, activation: softmax}]",
     "sparse_categorical_crossentropy"),
    ("[{type: Dense, units: 5, activation: tanh}, {type: Dense, units: 4, activation: softmax}]",
     "categorical_crossentropy"),
    ("[{type: Dense, units: 5, activation: elu, use_bias: false}, {type: Dense, units: 3, activation: sigmoid}]",
     "binary_crossentropy"),
    ("[{type: Dense, units: 7, activation: sigmoid}, {type: Dense, units: 5, activation: gelu},"
     " {type: Dense, units: 1}]", "mse"),
    ("[{type: Dense, units: 5, activation: softmax}, {type: Dense, units: 2, activation: selu}]", "mae"),
    ("[{type: Dense, units: 5, activation: leaky_relu}, {type: Dense, units: 2}]", "huber"),
    ("[{type: Dense, units: 4, activation: softmax}]", "kl_divergence"),
    # A loss that does not fuse with the output activation: the kernel runs the activation's backward.
    ("[{type: Dense, units: 5, activation: relu}, {type: Dense, units: 3, activation: sigmoid}]", "mse"),
    ("[{type: Dense, units: 5}, {type: Dense, units: 3, activation: softmax}]", "binary_crossentropy"),
]


def _one_step(spec, engine, x, y, allow_fused: bool):
    engine = Engine(spec.graph, engine.dtype)
    engine.initialize(3)
    trainer = Trainer(engine, spec.compile, 0)
    trainer.allow_fused = allow_fused
    history = trainer.fit(x, y, batch_size=16, epochs=2, shuffle=True, verbose=0)
    return trainer, engine, history


@pytest.mark.parametrize("layers,loss", CASES)
def test_fused_step_equals_general_path(layers, loss):
    spec, engine = make(layers, loss)
    n_out = engine.steps[-1].output_shape[-1]
    x, y = data(6, n_out, loss)
    fused, e_fused, h_fused = _one_step(spec, engine, x, y, True)
    general, e_general, h_general = _one_step(spec, engine, x, y, False)
    assert fused.fused_step is not None, "this model should take the fused path"
    assert general.fused_step is None
    np.testing.assert_allclose(h_fused.history["loss"], h_general.history["loss"], rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(e_fused.params, e_general.params, rtol=1e-11, atol=1e-13)
    np.testing.assert_allclose(e_fused.grads, e_general.grads, rtol=1e-10, atol=1e-13)
    p_fused = Trainer.predict_with(e_fused, x, batch_size=7)[0]
    p_general = e_general.forward([x])[0]
    np.testing.assert_allclose(p_fused, p_general, rtol=1e-12, atol=1e-14)


def test_float32_adam_with_metrics_and_sample_weights_agree():
    layers = "[{type: Dense, units: 32, activation: relu}, {type: Dense, units: 10, activation: softmax}]"
    spec, engine = make(layers, "sparse_categorical_crossentropy", np.float32, n_in=20, optimizer="adam",
                        extra="  metrics: [accuracy]")
    x, y = data(20, 10, "sparse_categorical_crossentropy", n=300)
    x = x.astype(np.float32)
    histories = []
    for allow in (True, False):
        e = Engine(spec.graph, np.float32)
        e.initialize(1)
        t = Trainer(e, spec.compile, 0)
        t.allow_fused = allow
        histories.append((t.fit(x, y, batch_size=32, epochs=3, class_weight={0: 2.0, 3: 0.5}, verbose=0,
                                validation_split=0.2), e))
    (h1, e1), (h2, e2) = histories
    for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
        np.testing.assert_allclose(h1.history[key], h2.history[key], rtol=2e-5, err_msg=key)
    np.testing.assert_allclose(e1.params, e2.params, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("layers,why", [
    ("[{type: Dense, units: 4}, {type: Dropout, rate: 0.5}, {type: Dense, units: 2}]", "not only Dense"),
    ("[{type: Dense, units: 4, trainable: false}, {type: Dense, units: 2}]", "a frozen layer"),
    ("[{type: Reshape, target_shape: [3, 2]}, {type: Dense, units: 2}]", "Dense on a 3-D input"),
])
def test_models_the_chain_does_not_take(layers, why):
    spec, engine = make(layers, "mse")
    assert DenseChain.of(engine) is None, why


def test_loss_weights_and_hinge_keep_the_general_path():
    layers = "[{type: Dense, units: 2}]"
    spec, engine = make(layers, "hinge")
    trainer = Trainer(engine, spec.compile, 0)
    x, y = data(6, 2, "mse")
    trainer.fit(x, np.sign(y), epochs=1, verbose=0)
    assert trainer.chain is not None and trainer.fused_step is None
    spec, engine = make(layers, "mse", extra="  loss_weights: [0.5]")
    trainer = Trainer(engine, spec.compile, 0)
    trainer.fit(x, y, epochs=1, verbose=0)
    assert trainer.fused_step is None


def test_bad_labels_are_reported_before_the_first_step():
    spec, engine = make("[{type: Dense, units: 3, activation: softmax}]", "sparse_categorical_crossentropy")
    before = engine.params.copy()
    x = np.zeros((10, 6))
    with pytest.raises(ValueError, match=r"labels must be in \[0, 3\), got values in \[0, 3\]"):
        Trainer(engine, spec.compile, 0).fit(x, np.array([0, 1, 2, 3, 0, 0, 0, 0, 0, 0]), epochs=1, verbose=0)
    np.testing.assert_array_equal(engine.params, before)


def test_nan_loss_is_reported_as_nan():
    spec, engine = make("[{type: Dense, units: 3, activation: softmax}]", "sparse_categorical_crossentropy")
    trainer = Trainer(engine, spec.compile, 0)
    trainer.fit(np.zeros((4, 6)), np.zeros(4, int), epochs=1, verbose=0)  # builds the fused step
    engine.params[:] = np.nan
    value, _ = trainer.fused_step(np.ones((4, 6)), np.zeros(4, np.int64))
    assert np.isnan(value)


@pytest.mark.parametrize("shuffle", [False, True])
def test_steady_state_allocates_no_arrays(shuffle):
    """Once each batch size has its workspace and batch buffers, a training step allocates no array.
    NumPy's allocations are all traced by tracemalloc, so the peak traced memory within each step (reset
    after every step by a callback) would include any per-step batch copy, activation or gradient buffer;
    here the smallest of those is a 256 x 64 float32 array (64 KB). What a step does allocate is small
    Python objects: the logs dict, floats, array views (about 2 KB)."""
    layers = "[{type: Dense, units: 64, activation: relu}, {type: Dense, units: 10, activation: softmax}]"
    spec, engine = make(layers, "sparse_categorical_crossentropy", np.float32, n_in=64, optimizer="adam",
                        extra="  metrics: [accuracy]")
    x, y = data(64, 10, "sparse_categorical_crossentropy", n=256 * 8 + 100)  # and a partial last batch
    x, y = x.astype(np.float32), y.astype(np.int64)
    trainer = Trainer(engine, spec.compile, 0)

    with StepPeak() as record:
        trainer.fit(x, y, batch_size=256, epochs=3, shuffle=shuffle, verbose=0, callbacks=[record])
    assert trainer.fused_step is not None
    steps = len(record.peaks) // 3
    first_epoch, steady = record.peaks[:steps], record.peaks[steps:]
    assert max(first_epoch) > 64 * 1024  # the workspaces are made here: the measurement sees them
    # Each epoch's first step also holds the epoch's permutation (2,148 int64 = 17 KB) when shuffling.
    later_steps = [p for k, p in enumerate(steady) if k % steps]
    assert max(later_steps) < 8 * 1024, steady
