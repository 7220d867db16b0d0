"""Output shapes, parameter counts and weight layouts of every layer type, against figures recorded from
Keras 3 itself (tests/fixtures/keras_layers.json, written by tests/fixtures/record_keras.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from specc.spec import load_spec_text

from .modelspec import model_yaml

CASES = json.loads((Path(__file__).parent / "fixtures" / "keras_layers.json").read_text())

# Where specc deliberately differs from Keras 3 (documented in the README), by case id.
REJECTED_ON_PURPOSE = {
    # Keras arguments specc v1 does not implement: reported as such.
    "conv1d_groups": "groups", "conv2d_groups2": "groups", "conv2d_groups4_same": "groups",
    "ln_axis_12": "must be an integer", "embedding_mask_zero": "mask_zero",
    # Keras silently crops with negative padding; a spec with negative padding is a mistake.
    "err_zeropad2d_negative": "non-negative", "err_zeropad2d_negative_to_zero": "non-negative",
    # Keras lets a merge layer take a single input; in a spec that is a wiring mistake.
    "err_add_single_input": "merges several inputs",
}


def _errors(case):
    shapes = case.get("input_shapes") or [case["input_shape"]]
    return load_spec_text(model_yaml(case["layer"], shapes), f"{case['id']}.yaml")


@pytest.mark.parametrize("case", [c for c in CASES if "error" not in c and c["id"] not in REJECTED_ON_PURPOSE],
                         ids=lambda c: c["id"])
def test_shape_params_and_weights_match_keras(case):
    spec, errors = _errors(case)
    assert not errors, [e.text() for e in errors]
    node = spec.graph.nodes[0]
    assert list(node.output_shape) == case["output_shape"]
    assert node.params() == case["params"]
    assert node.params(trainable=True) == case["trainable_params"]
    assert node.params(trainable=False) == case["non_trainable_params"]
    assert [[w.name, list(w.shape)] for w in node.weights] == case["weights"]


@pytest.mark.parametrize("case", [c for c in CASES if "error" in c and c["id"] not in REJECTED_ON_PURPOSE],
                         ids=lambda c: c["id"])
def test_keras_errors_are_spec_errors(case):
    spec, errors = _errors(case)
    assert spec is None and errors, f"Keras rejects this ({case['error']}) but specc accepted it"
    for e in errors:
        assert e.line >= 1 and e.column >= 1 and e.path.startswith("model")


@pytest.mark.parametrize("case_id,expected", sorted(REJECTED_ON_PURPOSE.items()))
def test_deliberate_differences_from_keras(case_id, expected):
    case = next(c for c in CASES if c["id"] == case_id)
    spec, errors = _errors(case)
    assert spec is None and any(expected in e.message for e in errors), [e.message for e in errors]


def test_fixture_covers_every_layer_type():
    from specc.layers import REGISTRY

    covered = {c["layer"]["type"] for c in CASES}
    # the layers added after v1 have their own recording (tests/test_reference_more_layers.py)
    more = json.loads((Path(__file__).parent / "fixtures" / "keras_more_layers.json").read_text())
    covered |= {c["layer"]["type"] for c in more}
    assert set(REGISTRY) - {"Sequential"} <= covered
