"""Engine.pre_activation: an output's values before the activation the engine applies (the Trainer's fused
softmax + cross-entropy loss starts from them)."""

from __future__ import annotations

import numpy as np

from specc.engine import Engine
from specc.spec import load_spec_text

SPEC = """
specc: 1
seed: 0
model:
  inputs: {a: [4]}
  layers:
    - {type: Dense, units: 5, activation: relu, name: hidden, inputs: [a]}
    - {type: Dense, units: 3, activation: softmax, name: probs, inputs: [hidden]}
    - {type: Dense, units: 2, name: raw, inputs: [hidden]}
  outputs: [raw, probs]
"""


def test_pre_activation_is_the_named_outputs_dense_values_before_softmax():
    spec, errors = load_spec_text(SPEC, "pre.yaml")
    assert not errors, [e.text() for e in errors]
    engine = Engine(spec.graph, np.float64)
    engine.initialize(0)
    x = np.random.default_rng(1).normal(size=(6, 4))
    _, probs = engine.forward([x], training=True)
    (w1, b1), (w2, b2) = [(s.weights[0], s.weights[1]) for s in engine.steps[:2]]
    logits = np.maximum(x @ w1 + b1, 0) @ w2 + b2
    z = engine.pre_activation(1)  # the second output's
    np.testing.assert_allclose(z, logits, rtol=1e-12)
    e = np.exp(z - z.max(axis=1, keepdims=True))
    np.testing.assert_allclose(probs, e / e.sum(axis=1, keepdims=True), rtol=1e-12)
