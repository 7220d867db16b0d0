"""The layers added after v1 against Keras 3, from figures recorded by tests/fixtures/record_keras_layers.py
into tests/fixtures/keras_more_layers.json (so this runs without Keras): output shapes, parameter counts,
weight names and shapes, and, in float64 with Keras's weights, outputs and the gradients of sum(R * y)
with respect to inputs and weights. Keras's rejections must be specc errors with positions.

Keras's torch backend computes float64 matrix products in float32 (its type promotion maps float64 to
float32 there), so the numbers agree to float32's precision, not float64's."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import yaml

from specc.engine import Engine
from specc.spec import load_spec_text

from .modelspec import model_yaml

CASES = json.loads((Path(__file__).parent / "fixtures" / "keras_more_layers.json").read_text())
NUMBERS = [c for c in CASES if "output" in c]
SHAPES = [c for c in CASES if "error" not in c]
ERRORS = [c for c in CASES if "error" in c]
TOL = dict(rtol=1e-4, atol=2e-5)  # float32 products in Keras, with cancellation in the gradients

# Keras rejects these for reasons specc states differently, or not at all (each is still an error here).
ERROR_WORDS = {
    "bidirectional_go_backwards": "go_backwards",
    "err_relu_negative_max": "non-negative", "err_relu_negative_slope": "non-negative",
    "err_relu_negative_threshold": "non-negative", "err_leaky_relu_negative": "non-negative",
    "err_gaussian_noise_stddev": "[0, 1]", "err_spatial_dropout2d_rank": "rank 3",
    "err_spatial_dropout1d_rank": "rank 2", "err_normalization_mean_only": "both `mean` and `variance`",
    "err_normalization_axis": "out of range", "err_mha_heads": "positive integer",
    "err_mha_key_value": "but the last must be equal", "err_bidirectional_dense": "recurrent layer",
    "err_time_distributed_rank": "rank 2 or more",
    "err_conv3d_rank": "rank 4", "err_conv3d_too_small": "does not fit", "err_max_pooling3d_rank": "rank 4",
}


def spec_text(case) -> str:
    layer, shapes, roles = case["layer"], case["input_shapes"], case.get("roles")
    if not roles:
        return model_yaml(layer, shapes)
    names = {role: f"in{i}" for i, role in enumerate(roles)}
    model = {"inputs": {names[r]: s for r, s in zip(roles, shapes)},
             "layers": [dict(layer, name="under_test", inputs=names)], "outputs": "under_test"}
    return yaml.safe_dump({"specc": 1, "seed": 0, "model": model}, sort_keys=False)


def load(case):
    return load_spec_text(spec_text(case), f"{case['id']}.yaml")


def plain_name(name: str) -> str:
    """Keras's weight path inside the layer without what is Keras-session specific: the recurrent cell's
    level (forward_lstm/lstm_cell/kernel) and auto-name counters (forward_lstm_2, dense_1)."""
    parts = [re.sub(r"_\d+$", "", p) for p in name.split("/") if not p.endswith("_cell")]
    return "/".join(parts)


@pytest.mark.parametrize("case", SHAPES, ids=lambda c: c["id"])
def test_shape_params_and_weights_match_keras(case):
    spec, errors = load(case)
    assert not errors, [e.text() for e in errors]
    node = spec.graph.node("under_test")
    assert list(node.output_shape) == case["output_shape"]
    assert node.params() == case["params"]
    assert node.params(trainable=True) == case["trainable_params"]
    assert node.params(trainable=False) == case["non_trainable_params"]
    ours = [[w.name, list(w.shape)] for w in node.weights]
    theirs = [[plain_name(n), s] for n, s in case["weights"]]
    if case["layer"]["type"] == "TimeDistributed":  # Keras names them by the inner layer (dense/kernel)
        theirs = [[n.rpartition("/")[2], s] for n, s in theirs]
    assert ours == theirs


@pytest.mark.parametrize("case", NUMBERS, ids=lambda c: c["id"])
def test_outputs_and_gradients_match_keras(case):
    spec, errors = load(case)
    assert not errors, [e.text() for e in errors]
    engine = Engine(spec.graph, np.float64)
    engine.set_weights([np.array(w, np.float64) for w in case["weight_values"]])
    xs = [np.array(x, np.float64) for x in case["inputs"]]
    y = engine.forward(xs, training=False)[0]
    np.testing.assert_allclose(y, np.array(case["output"]), **TOL)
    engine.backward([np.array(case["R"], np.float64)])
    for name, want in zip(engine.input_names, case["input_grads"]):
        if want is not None:
            np.testing.assert_allclose(engine._input_grads[name], np.array(want), **TOL, err_msg=f"d/d {name}")
    step = next(s for s in engine.steps if s.name == "under_test")
    for spec_w, got, want in zip(step.specs, step.grads, case["weight_grads"], strict=True):
        if want is not None:
            np.testing.assert_allclose(got, np.array(want), **TOL, err_msg=f"d/d {spec_w.name}")


@pytest.mark.parametrize("case", ERRORS, ids=lambda c: c["id"])
def test_keras_errors_are_positioned_spec_errors(case):
    spec, errors = load(case)
    assert spec is None and errors, f"Keras rejects this ({case['error']}) but specc accepted it"
    for e in errors:
        assert e.line >= 1 and e.column >= 1 and e.path.startswith("model.layers[0]"), e.text()
    assert any(ERROR_WORDS[case["id"]] in e.message for e in errors), [e.text() for e in errors]
