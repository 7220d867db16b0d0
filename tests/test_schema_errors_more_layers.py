"""Spec mistakes with the layers added after v1: each error's file, line, column, spec path and key words,
positions computed from the test text (see test_schema_errors.py)."""

from __future__ import annotations

import pytest

from .test_schema_errors import expect, only

SEQ = """specc: 1
model:
  input: [6, 4]
  layers:
    - LAYER
"""
FUN = """specc: 1
model:
  inputs: {x: [6, 4], y: [3, 4]}
  layers:
    - LAYER
  outputs: mha
"""
L0 = "model.layers[0]"

# (id, template, layer entry, token the error points at (None: the layer's `{`), spec path, words)
CASES = [
    ("relu_negative_max", SEQ, "{type: ReLU, max_value: -1}", "-1", f"{L0}.max_value", ["non-negative", "-1"]),
    ("relu_string_slope", SEQ, "{type: ReLU, negative_slope: '0.3'}", "'0.3'", f"{L0}.negative_slope",
     ["non-negative number"]),
    ("relu_unknown_key", SEQ, "{type: ReLU, max_val: 6}", "max_val", f"{L0}.max_val", ["did you mean max_value"]),
    ("leaky_relu_negative", SEQ, "{type: LeakyReLU, negative_slope: -0.3}", "-0.3", f"{L0}.negative_slope",
     ["non-negative"]),
    ("elu_alpha_string", SEQ, "{type: ELU, alpha: high}", "high", f"{L0}.alpha", ["a number"]),
    ("prelu_shared_axis_out_of_range", SEQ, "{type: PReLU, shared_axes: [3]}", None, L0,
     ["shared_axes entry 3", "axes 1 to 2"]),
    ("prelu_shared_axis_zero", SEQ, "{type: PReLU, shared_axes: [0]}", "0]", f"{L0}.shared_axes[0]",
     ["positive integer"]),
    ("prelu_bad_initializer", SEQ, "{type: PReLU, alpha_initializer: zero_s}", "zero_s", f"{L0}.alpha_initializer",
     ["unknown initializer"]),
    ("softmax_batch_axis", SEQ, "{type: Softmax, axis: 0}", None, L0, ["batch axis"]),
    ("softmax_axis_twice", SEQ, "{type: Softmax, axis: [1, -2]}", None, L0, ["given twice"]),
    ("rescaling_missing_scale", SEQ, "{type: Rescaling}", None, f"{L0}.scale", ["missing required key `scale`"]),
    ("rescaling_scale_length", SEQ, "{type: Rescaling, scale: [1.0, 2.0]}", None, L0, ["2 values", "1 or 4"]),
    ("normalization_mean_only", SEQ, "{type: Normalization, mean: 1.0}", None, L0, ["both `mean` and `variance`"]),
    ("normalization_negative_variance", SEQ, "{type: Normalization, mean: 0.0, variance: -1.0}", None, L0,
     ["must not be negative"]),
    ("normalization_axis", SEQ, "{type: Normalization, axis: 3}", None, L0, ["out of range"]),
    ("normalization_mean_length", SEQ, "{type: Normalization, mean: [1.0, 2.0], variance: [1.0, 1.0]}", None, L0,
     ["2 values", "size 4"]),
    ("gaussian_noise_stddev", SEQ, "{type: GaussianNoise, stddev: 2}", "2}", f"{L0}.stddev", ["[0, 1]"]),
    ("spatial_dropout2d_rank", SEQ, "{type: SpatialDropout2D, rate: 0.5}", None, L0, ["rank 3"]),
    ("spatial_dropout_rate", SEQ, "{type: SpatialDropout1D, rate: 1.0}", "1.0", f"{L0}.rate", ["[0, 1)"]),
    ("mha_heads", FUN, "{type: MultiHeadAttention, name: mha, num_heads: 0, key_dim: 2, inputs: [x, y]}", "0,",
     f"{L0}.num_heads", ["positive integer"]),
    ("mha_missing_key_dim", FUN, "{type: MultiHeadAttention, name: mha, num_heads: 2, inputs: [x, y]}", None,
     f"{L0}.key_dim", ["missing required key `key_dim`"]),
    ("mha_unknown_input_name", FUN, "{type: MultiHeadAttention, name: mha, num_heads: 2, key_dim: 2, "
     "inputs: {query: x, vale: y}}", None, L0, ["unknown name 'vale'", "attention_mask"]),
    ("mha_mask_shape", FUN, "{type: MultiHeadAttention, name: mha, num_heads: 2, key_dim: 2, "
     "inputs: {query: x, value: y, attention_mask: y}}", None, L0, ["attention_mask", "(queries, keys)"]),
    ("mha_key_value_mismatch", FUN, "{type: MultiHeadAttention, name: mha, num_heads: 2, key_dim: 2, "
     "inputs: [x, y, x]}", None, L0, ["value", "key", "but the last must be equal"]),
    ("mha_one_input", FUN.replace("{x: [6, 4], y: [3, 4]}", "{x: [6, 4]}"),
     "{type: MultiHeadAttention, name: mha, num_heads: 2, key_dim: 2, inputs: [x]}", "[x]", f"{L0}.inputs",
     ["2 to 4 inputs, got 1"]),
    ("mha_attention_axes", FUN, "{type: MultiHeadAttention, name: mha, num_heads: 2, key_dim: 2, attention_axes: -1, "
     "inputs: [x, y]}", None, L0, ["attention_axes entry -1"]),
    ("mha_in_sequential", SEQ, "{type: MultiHeadAttention, num_heads: 2, key_dim: 2}", None, L0, ["Functional"]),
    ("bidirectional_inner_key", SEQ, "{type: Bidirectional, layer: {type: LSTM, units: 3, unit: 3}}", "unit:",
     f"{L0}.layer.unit", ["did you mean units"]),
    ("bidirectional_merge_mode", SEQ, "{type: Bidirectional, layer: {type: LSTM, units: 3}, merge_mode: concatenate}",
     "concatenate", f"{L0}.merge_mode", ["did you mean concat"]),
    ("bidirectional_not_recurrent", SEQ, "{type: Bidirectional, layer: {type: Dense, units: 3}}", "{type: Dense",
     f"{L0}.layer", ["recurrent layer", "Dense"]),
    ("bidirectional_go_backwards", SEQ, "{type: Bidirectional, layer: {type: LSTM, units: 3, go_backwards: true}}",
     None, L0, ["go_backwards"]),
    ("bidirectional_twin_sequences", SEQ, "{type: Bidirectional, layer: {type: LSTM, units: 3}, backward_layer: "
     "{type: LSTM, units: 3, return_sequences: true, go_backwards: true}}", "{type: LSTM, units: 3, return",
     f"{L0}.backward_layer", ["return_sequences"]),
    ("bidirectional_missing_layer", SEQ, "{type: Bidirectional}", None, f"{L0}.layer", ["missing required key"]),
    ("bidirectional_layer_not_mapping", SEQ, "{type: Bidirectional, layer: LSTM}", "LSTM}", f"{L0}.layer",
     ["must be a mapping"]),
    ("time_distributed_unknown_type", SEQ, "{type: TimeDistributed, layer: {type: Dense2, units: 3}}", "Dense2",
     f"{L0}.layer.type", ["did you mean Dense"]),
    ("time_distributed_inner_shape", SEQ, "{type: TimeDistributed, layer: {type: Conv2D, filters: 2, kernel_size: 3}}",
     None, L0, ["wrapped Conv2D gets each step", "rank 3"]),
    ("time_distributed_merge", SEQ, "{type: TimeDistributed, layer: {type: Add}}", "{type: Add", f"{L0}.layer",
     ["several inputs"]),
    ("time_distributed_nested", SEQ, "{type: TimeDistributed, layer: {type: TimeDistributed, layer: {type: Dense, "
     "units: 2}}}", "{type: TimeDistributed, layer: {type: Dense", f"{L0}.layer", ["plain layer"]),
    ("conv3d_kernel_size_length", SEQ, "{type: Conv3D, filters: 2, kernel_size: [3, 3]}", "[3, 3]",
     f"{L0}.kernel_size", ["list of 3"]),
    ("conv3d_rank", SEQ, "{type: Conv3D, filters: 2, kernel_size: 3}", None, L0, ["rank 4", "depth"]),
    ("conv3d_strides_and_dilation", SEQ.replace("[6, 4]", "[6, 6, 6, 1]"), "{type: Conv3D, filters: 2, kernel_size: 2, "
     "strides: 2, dilation_rate: 2}", None, L0, ["dilation_rate"]),
    ("conv3d_window_too_large", SEQ.replace("[6, 4]", "[2, 6, 6, 1]"), "{type: Conv3D, filters: 2, kernel_size: 3}",
     None, L0, ["does not fit", "padding 'same'"]),
    ("average_pooling3d_needs_pool_size", SEQ.replace("[6, 4]", "[4, 4, 4, 1]"), "{type: AveragePooling3D}", None,
     f"{L0}.pool_size", ["missing required key `pool_size`"]),
]


@pytest.mark.parametrize("template,layer,token,path,words", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_new_layer_mistakes_are_positioned(errors_of, at, template, layer, token, path, words):
    text = template.replace("LAYER", layer)
    errors = [e for e in errors_of(text) if "is not used by any output" not in e.message]
    e = only(errors)
    pos = at(text, layer) if token is None else at(text, token)
    expect(e, pos, path, *words)


def test_json_schema_describes_wrapped_layers_and_named_attention_inputs():
    """`specc schema` (what editors complete from): a wrapper's `layer` is any layer entry, and
    MultiHeadAttention's `inputs` may be a mapping; the example specs that use them validate against it."""
    import json
    from pathlib import Path

    import yaml

    from specc.spec.jsonschema import spec_json_schema

    jsonschema = pytest.importorskip("jsonschema")
    schema = spec_json_schema()
    defs = schema["$defs"]
    layer_ref = {"$ref": "#/$defs/Layer"}  # a wrapped layer: a layer entry, or a ${...} reference to one
    wrapped = defs["TimeDistributed"]["properties"]["layer"]
    assert wrapped == layer_ref or layer_ref in wrapped["anyOf"]
    assert '"$ref": "#/$defs/Layer"' in json.dumps(defs["Bidirectional"]["properties"]["backward_layer"])
    named = next(a for a in defs["MultiHeadAttention"]["properties"]["inputs"]["anyOf"]
                 if a.get("type") == "object")
    assert set(named["properties"]) == {"query", "value", "key", "attention_mask"}
    for name in ("synthetic_attention.yaml", "digits_mobile.yaml"):
        jsonschema.validate(yaml.safe_load((Path(__file__).parent.parent / "specs" / name).read_text()), schema)
    bad = yaml.safe_load((Path(__file__).parent.parent / "specs" / "synthetic_attention.yaml").read_text())
    bad["model"]["layers"][4]["layer"] = {"type": "LSTM", "unitz": 8}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema)
