"""Whole example models, float64, against central finite differences: checks the executor itself —
topological order, gradients summed where a tensor feeds several layers (the residual stem), merges,
nested blocks, frozen layers (no gradient slots) and the flat buffer layout."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from specc.engine import Engine
from specc.spec import load_spec

from .gradcheck import central_difference

SPECS = sorted((Path(__file__).parent.parent / "specs").glob("*.yaml"))
H = 1e-6


@pytest.mark.parametrize("path", SPECS, ids=[p.stem for p in SPECS])
def test_model_gradients_match_finite_differences(path):
    spec, errors = load_spec(path)
    assert not errors
    engine = Engine(spec.graph, np.float64)
    engine.initialize(0)
    rng = np.random.default_rng(0)
    engine.params += rng.standard_normal(engine.params.shape) * 0.05
    xs = []
    for node in spec.graph.inputs:
        first = spec.layers[0]
        if first.type == "Embedding":
            xs.append(rng.integers(0, first.input_dim, (2, *node.output_shape)).astype(np.float64))
        else:
            xs.append(rng.standard_normal((2, *node.output_shape)))
    outs = engine.forward(xs)
    weights = [rng.standard_normal(o.shape) for o in outs]

    def loss() -> float:
        return sum(float(np.sum(o * w)) for o, w in zip(engine.forward(xs), weights))

    engine.forward(xs)
    engine.backward(weights)
    analytic = engine.grads.copy()
    assert engine.n_trainable == spec.graph.params(trainable=True)
    trainable = engine.params[: engine.n_trainable]
    for idx in rng.choice(trainable.size, min(40, trainable.size), replace=False):
        numeric = central_difference(loss, trainable, idx, H)
        assert np.isclose(analytic[idx], numeric, rtol=1e-5, atol=1e-7), (idx, analytic[idx], numeric)
