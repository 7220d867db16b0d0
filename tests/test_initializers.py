"""Keras's default initializers: bounds, moments and structure of what each one draws, and the
layer-specific rules (LSTM's unit_forget_bias, Embedding's uniform(-0.05, 0.05))."""

from __future__ import annotations

import numpy as np
import pytest

from specc.engine import Engine
from specc.layers.initializers import compute_fans, initialize
from specc.spec import load_spec_text


def test_fans_follow_keras():
    assert compute_fans((5, 7)) == (5, 7)
    assert compute_fans((3, 3, 4, 8)) == (36, 72)  # receptive field 9
    assert compute_fans((6,)) == (6, 6)


@pytest.mark.parametrize("name,shape,limit", [
    ("glorot_uniform", (200, 100), np.sqrt(6 / 300)),
    ("he_uniform", (200, 100), np.sqrt(6 / 200)),
    ("lecun_uniform", (200, 100), np.sqrt(3 / 200)),
    ("random_uniform", (200, 100), 0.05),
])
def test_uniform_initializers_fill_their_interval(name, shape, limit):
    w = initialize(name, shape, np.random.default_rng(0))
    assert w.shape == shape
    assert np.abs(w).max() <= limit
    assert np.abs(w).max() > 0.98 * limit
    assert abs(w.std() - limit / np.sqrt(3)) < 0.02 * limit


@pytest.mark.parametrize("name,std", [("glorot_normal", np.sqrt(2 / 300)), ("he_normal", np.sqrt(2 / 200)),
                                      ("lecun_normal", np.sqrt(1 / 200)), ("random_normal", 0.05)])
def test_normal_initializers_have_keras_variance(name, std):
    w = initialize(name, (200, 100), np.random.default_rng(0))
    assert abs(w.std() - std) < 0.03 * std
    if name != "random_normal":  # truncated at two (pre-scaling) standard deviations
        assert np.abs(w).max() <= 2 * std / 0.87962566103423978 + 1e-12


def test_orthogonal_is_orthogonal():
    w = initialize("orthogonal", (16, 64), np.random.default_rng(0))
    np.testing.assert_allclose(w @ w.T, np.eye(16), atol=1e-10)
    w = initialize("orthogonal", (64, 16), np.random.default_rng(0))
    np.testing.assert_allclose(w.T @ w, np.eye(16), atol=1e-10)


def test_layer_defaults_in_a_model():
    spec, errors = load_spec_text("""
specc: 1
seed: 4
model:
  input: [7]
  layers:
    - {type: Embedding, input_dim: 50, output_dim: 6}
    - {type: LSTM, units: 5}
    - {type: Dense, units: 3}
""", "m.yaml")
    assert not errors
    engine = Engine(spec.graph)
    engine.initialize(spec.seed)
    emb, kernel, recurrent, bias, dense_kernel, dense_bias = engine.get_weights()
    assert np.abs(emb).max() <= 0.05
    np.testing.assert_allclose(recurrent @ recurrent.T, np.eye(5), atol=1e-5)  # (5, 20): orthonormal rows
    np.testing.assert_array_equal(bias, np.r_[np.zeros(5), np.ones(5), np.zeros(10)])  # unit_forget_bias
    np.testing.assert_array_equal(dense_bias, 0)
    again = Engine(spec.graph)
    again.initialize(spec.seed)
    for a, b in zip(engine.get_weights(), again.get_weights()):
        np.testing.assert_array_equal(a, b)  # same seed, same weights
