"""The summary against Keras 3's own `model.summary()` output for the same models (captured in
tests/fixtures/keras_summaries by tests/fixtures/record_keras.py), line for line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from specc.spec import load_spec, load_spec_text
from specc.summary import readable_size, summary_json, summary_text

CAPTURES = Path(__file__).parent / "fixtures" / "keras_summaries"
SPECS = sorted((Path(__file__).parent.parent / "specs").glob("*.yaml"))

# The same models as the Keras captures, written as specs.
MODELS = {
    "digits_mlp": """
specc: 1
name: sequential
model:
  input: [64]
  layers:
    - {type: Dense, units: 64, activation: relu}
    - {type: Dense, units: 10, activation: softmax}
""",
    "cnn": """
specc: 1
name: sequential
model:
  input: [8, 8, 1]
  layers:
    - {type: Conv2D, filters: 16, kernel_size: 3, activation: relu}
    - {type: MaxPooling2D, pool_size: 2}
    - {type: Flatten}
    - {type: Dense, units: 10, activation: softmax, name: head}
""",
    "two_inputs": """
specc: 1
name: functional
model:
  inputs: {image: [16, 16, 1], meta: [5]}
  layers:
    - {type: Conv2D, name: conv, filters: 4, kernel_size: 3, padding: same, inputs: image}
    - {type: GlobalAveragePooling2D, name: pooled, inputs: conv}
    - {type: Concatenate, name: merged, inputs: [pooled, meta]}
    - {type: Dense, name: label, units: 3, activation: softmax, inputs: merged}
  outputs: label
""",
    "residual": """
specc: 1
name: functional
model:
  inputs: {input_layer: [16]}
  layers:
    - {type: Dense, units: 16, activation: relu, inputs: input_layer}
    - {type: Dense, units: 16, inputs: dense}
    - {type: Add, inputs: [input_layer, dense_1]}
    - {type: Dense, units: 4, inputs: add}
  outputs: dense_2
""",
    "nested_frozen": """
specc: 1
name: sequential
model:
  input: [8]
  layers:
    - type: Sequential
      name: block
      trainable: false
      layers:
        - {type: Dense, units: 32}
        - {type: BatchNormalization}
    - {type: Dense, units: 2}
""",
    "lstm_text": """
specc: 1
name: sequential
model:
  input: [20]
  layers:
    - {type: Embedding, input_dim: 1000, output_dim: 16}
    - {type: LSTM, units: 32}
    - {type: Dense, units: 1, activation: sigmoid}
""",
}

VARIANTS = [
    ("digits_mlp", "digits_mlp", {}),
    ("cnn", "cnn", {}),
    ("two_inputs", "two_inputs", {}),
    ("residual", "residual", {}),
    ("nested_frozen", "nested_frozen", {}),
    ("nested_frozen_expand", "nested_frozen", {"expand_nested": True}),
    ("nested_frozen_trainable", "nested_frozen", {"show_trainable": True}),
    ("nested_frozen_expand_trainable", "nested_frozen", {"expand_nested": True, "show_trainable": True}),
    ("lstm_text", "lstm_text", {}),
]


def _graph(model: str):
    spec, errors = load_spec_text(MODELS[model], f"{model}.yaml")
    assert not errors, [e.text() for e in errors]
    return spec.graph


@pytest.mark.parametrize("capture,model,options", VARIANTS, ids=[v[0] for v in VARIANTS])
def test_summary_matches_keras_line_for_line(capture, model, options):
    expected = (CAPTURES / f"{capture}.txt").read_text(encoding="utf-8").rstrip("\n").splitlines()
    got = summary_text(_graph(model), **options).splitlines()
    # specc prints Keras's lines, then its own extra estimates after them.
    assert got[: len(expected)] == expected
    assert got[len(expected)].startswith(" Forward mult-adds per sample: ")


@pytest.mark.parametrize("capture,model", [(v[0], v[1]) for v in VARIANTS if not v[2]])
def test_summary_json_matches_keras_layers(capture, model):
    keras = json.loads((CAPTURES / f"{capture}.json").read_text())
    got = summary_json(_graph(model))
    assert [(row["name"], row["type"], row["output_shape"][1:], row["params"]) for row in got["layers"]] == [
        (row["name"], row["class_name"], row["output_shape"], row["params"]) for row in keras["layers"]]
    assert got["total_params"] == keras["params"]
    assert got["trainable_params"] == keras["trainable_params"]
    assert got["non_trainable_params"] == keras["non_trainable_params"]
    assert all(row["output_shape"][0] is None for row in got["layers"])


@pytest.mark.parametrize("n_bytes,text", [(0, "0.00 B"), (264, "264.00 B"), (1924, "1.88 KB"),
                                          (6444, "6.29 KB"), (3 * 1024**2, "3.00 MB")])
def test_readable_size_follows_keras(n_bytes, text):
    assert readable_size(n_bytes) == text


@pytest.mark.parametrize("path", SPECS, ids=[p.name for p in SPECS])
def test_every_example_spec_validates_and_summarises(path):
    spec, errors = load_spec(path)
    assert not errors, [e.text() for e in errors]
    text = summary_text(spec.graph, expand_nested=True, show_trainable=True)
    total = spec.graph.params()
    assert f" Total params: {total:,} " in text
    assert all(f" {node.name} (" in text or f"│ {node.name}" in text for node in spec.graph.nodes)
    data = summary_json(spec.graph)
    assert data["total_params"] == data["trainable_params"] + data["non_trainable_params"] == total


def test_multiply_adds_of_a_small_cnn_by_hand():
    # conv 3x3x1->16 on 8x8 valid: 6*6*9*16 = 5184; dense 144*10 = 1440... after pooling 3x3x16 = 144
    graph = _graph("cnn")
    assert graph.macs() == 6 * 6 * 9 * 1 * 16 + 144 * 10


def test_summary_default_batch_is_the_schemas():
    from specc.spec.schema import FitDef
    from specc.summary import DEFAULT_BATCH

    assert DEFAULT_BATCH == FitDef.model_fields["batch_size"].default
