"""One test per class of spec mistake: each checks file, 1-based line and column, spec path and the key words
of the message. Expected positions are computed from the test text (`at(text, token)`), not hard-coded.

"""

from __future__ import annotations

import os
import re
import time

import pytest

FILE = "spec.yaml"


def only(errors):
    assert len(errors) == 1, "\n".join(e.text() for e in errors)
    return errors[0]


def expect(e, pos, path, *words):
    """e is at `pos` (line, col) in FILE with spec path `path` and a message containing every word."""
    assert e.file == FILE, e
    assert (e.line, e.column) == pos, e.text()
    if path is not None:
        assert e.path == path, e.text()
    for w in words:
        assert w in e.message, f"{w!r} not in {e.message!r}"


def shape_re(*dims) -> str:
    """A shape as specc or Keras prints it: (3, 3, 8) or (None, 3, 3, 8); (4,) or (None, 4)."""
    inner = ", ".join(map(str, dims))
    return r"\((None, )?" + re.escape(inner) + r",?\)"


SEQ = """specc: 1
model:
  input: [8]
  layers:
    - {type: Dense, units: 4}
"""


# --- YAML level ---------------------------------------------------------------------------------------


def test_yaml_syntax_error_points_at_the_offending_character(errors_of, at):
    text = "specc: 1\nname: demo\nmodel:\n  input: [8]]\n"
    e = only(errors_of(text))
    line, col = at(text, "]]")
    expect(e, (line, col + 1), "", "YAML syntax error")  # the second, unmatched ']'
    assert "']'" in e.message


def test_yaml_syntax_error_unclosed_flow_sequence(errors_of, at):
    text = "specc: 1\nmodel:\n  input: [8\n  layers: []\n"
    e = only(errors_of(text))
    # PyYAML notices the problem at the ':' after `layers` (the first token a flow sequence cannot hold)
    expect(e, at(text, ": []"), "", "YAML syntax error", "']'")


@pytest.mark.parametrize("text", ["", b""], ids=["str", "bytes"])
def test_empty_file(errors_of, text):
    e = only(errors_of(text))
    expect(e, (1, 1), "", "empty", "specc: 1")


@pytest.mark.parametrize("text", ["   \n\n\t\n  ", b" \r\n\n   \n", "# only a comment\n"],
                         ids=["spaces-tabs", "crlf-bytes", "comment"])
def test_whitespace_only_file_is_empty(errors_of, text):
    e = only(errors_of(text))
    expect(e, (1, 1), "", "empty")


def test_top_level_list(errors_of):
    e = only(errors_of("- specc: 1\n- model: {}\n"))
    assert (e.line, e.column) == (1, 1)
    assert e.path in ("", "<root>")
    assert "mapping" in e.message and "list" in e.message


@pytest.mark.parametrize("text, shown", [("42\n", "42"), ("hello\n", "hello")])
def test_top_level_scalar(errors_of, text, shown):
    e = only(errors_of(text))
    assert (e.line, e.column) == (1, 1)
    assert e.path in ("", "<root>")
    assert "mapping" in e.message and shown in e.message


def test_binary_garbage_with_nul(errors_of):
    data = bytes(range(256)) * 3  # every byte value, NUL included
    e = only(errors_of(data))
    expect(e, (1, 1), "", "NUL")
    assert "text" in e.message


def test_invalid_utf8(errors_of):
    data = b"specc: 1\nname: caf\xe9\nmodel: {}\n"  # latin-1 e-acute
    e = only(errors_of(data))
    expect(e, (2, len("name: caf") + 1), "", "UTF-8")


def test_invalid_utf8_column_counts_characters(errors_of):
    data = "name: é".encode() + b"\xff\n"
    e = only(errors_of(data))
    expect(e, (1, len("name: é") + 1), "", "UTF-8")


def test_python_object_apply_tag_is_rejected_and_not_executed(errors_of, at, tmp_path):
    marker = tmp_path / "pwned"
    text = f"specc: 1\nname: !!python/object/apply:os.system ['touch {marker}']\n"
    e = only(errors_of(text))
    expect(e, at(text, "!!python"), "", "python/object/apply", "not allowed")
    assert not marker.exists()


def test_python_name_tag_is_rejected(errors_of, at):
    text = "specc: 1\nname: !!python/name:os.system ''\n"
    e = only(errors_of(text))
    expect(e, at(text, "!!python"), "", "python/name", "not allowed")


def test_billion_laughs_fails_fast(errors_of):
    text = "specc: 1\nlol: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]\n"
    for i in range(1, 10):
        text += f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 10) + "]\n"
    start = time.perf_counter()
    errors = errors_of(text)
    elapsed = time.perf_counter() - start
    assert elapsed < 1.0
    e = only(errors)
    assert 1 <= e.line <= text.count("\n") and e.column >= 1
    assert e.path == ""
    assert "alias" in e.message


def test_deeply_nested_brackets_fail_fast(errors_of):
    text = "[" * 100_000
    start = time.perf_counter()
    e = only(errors_of(text))
    assert time.perf_counter() - start < 1.0
    assert e.line == 1 and 1 <= e.column <= 100_000
    assert e.path == ""
    assert "nest" in e.message


def test_duplicate_key(errors_of, at):
    text = "specc: 1\nname: a\nseed: 1\nname: b\nmodel: {}\n"
    e = only(errors_of(text))
    expect(e, at(text, "name", 2), "", "duplicate key", "'name'")


@pytest.mark.parametrize("text, token", [
    ("specc: 1\nseed: !!bool maybe\n", "!!bool"),
    ("specc: 1\nseed: !!int\n", "!!int"),
    ("specc: 1\nseed: !!float\n", "!!float"),
], ids=["bool-maybe", "empty-int", "empty-float"])
def test_tagged_scalar_that_cannot_be_built_is_an_error_not_a_crash(errors_of, at, text, token):
    e = only(errors_of(text))
    expect(e, at(text, token), "")


@pytest.mark.parametrize("text, token", [
    ("specc: 1\nseed: !!int abc\n", "!!int"),
    ("specc: 1\nseed: !!float abc\n", "!!float"),
], ids=["int-tag", "float-tag"])
def test_refused_scalar_is_reported_at_the_scalar(errors_of, at, text, token):
    e = only(errors_of(text))
    expect(e, at(text, token), "")
    assert "sys." not in e.message and "int()" not in e.message


def test_integer_beyond_pythons_digit_limit_names_its_field(errors_of, at):
    text = "specc: 1\nseed: 1" + "0" * 5000 + "\n"
    e = only(errors_of(text))
    expect(e, at(text, "1000"), "seed", "5,001 digits", "out of range")
    assert "sys." not in e.message and "int()" not in e.message and len(e.message) < 200


@pytest.mark.parametrize("text", [
    "specc: 1\n\"com\\npile\": {loss: mse}\nmodel:\n  input: [8]\n  layers:\n    - {type: Dense, units: 4}\n",
    "specc: 1\nmodel:\n  inputs: {\"x\\ny\": [8]}\n  layers:\n    - {type: Dense, name: d, units: 4, inputs: x}\n"
    "  outputs: d\n",
], ids=["top-level-key", "input-name"])
def test_each_error_renders_on_one_line(errors_of, text):
    errors = errors_of(text)
    assert errors
    for e in errors:
        assert "\n" not in e.text(), e.text()


# --- top level ----------------------------------------------------------------------------------------


def test_missing_version(errors_of):
    text = SEQ.replace("specc: 1\n", "")
    e = only(errors_of(text))
    assert (e.line, e.column) == (1, 1)
    assert e.path in ("", "<root>")
    assert "missing" in e.message and "specc: 1" in e.message


def test_unknown_version_lists_known_versions(errors_of, at):
    text = SEQ.replace("specc: 1", "specc: 2")
    e = only(errors_of(text))
    expect(e, at(text, "2"), "specc", "unknown", "version", "2")
    assert re.search(r"known versions?: .*\b1\b", e.message), e.message


def test_version_must_be_an_integer(errors_of, at):
    text = SEQ.replace("specc: 1", "specc: 1.0")
    e = only(errors_of(text))
    expect(e, at(text, "1.0"), "specc", "version")


def test_unknown_top_level_key_with_suggestion(errors_of, at):
    text = SEQ + "compiel:\n  loss: mse\n"
    e = only(errors_of(text))
    expect(e, at(text, "compiel"), "compiel", "unknown top-level key", "did you mean compile?")


# --- layers -------------------------------------------------------------------------------------------


def test_unknown_layer_type_with_suggestion(errors_of, at):
    text = SEQ.replace("Dense", "Dnese")
    e = only(errors_of(text))
    expect(e, at(text, "Dnese"), "model.layers[0].type", "unknown layer type", "'Dnese'", "did you mean Dense?")


def test_unknown_layer_key_with_suggestion(errors_of, at):
    text = SEQ.replace("units: 4", "unit: 4")
    errors = errors_of(text)
    assert all(e.path.startswith("model.layers[0]") for e in errors), errors
    (e,) = [e for e in errors if e.path == "model.layers[0].unit"]
    expect(e, at(text, "unit"), "model.layers[0].unit", "unknown key", "`unit`", "did you mean units?")


def test_unsupported_keras_argument(errors_of, at):
    text = SEQ.replace("units: 4", "units: 4, kernel_regularizer: l2")
    e = only(errors_of(text))
    expect(e, at(text, "kernel_regularizer"), "model.layers[0].kernel_regularizer",
           "Keras argument", "not support")


def test_negative_units(errors_of, at):
    text = SEQ.replace("units: 4", "units: -3")
    e = only(errors_of(text))
    expect(e, at(text, "-3"), "model.layers[0].units", "must be a positive integer, got -3")
    assert e.text() == f"{FILE}:5:28: error: model.layers[0].units: must be a positive integer, got -3"


@pytest.mark.parametrize("value, shown", [
    ('"10"', "'10'"),  # a string is never a number: specs are strict
    ("'4'", "'4'"),
    ("4.5", "4.5"),
    ("4.0", "4.0"),  # a float is not an integer, even a whole one
    ("true", "true"),  # a bool is not an integer
    ("null", "null"),
], ids=["str-dq", "str-sq", "float", "whole-float", "bool", "null"])
def test_units_must_be_a_real_integer(errors_of, at, value, shown):
    text = SEQ.replace("units: 4", f"units: {value}")
    e = only(errors_of(text))
    expect(e, at(text, value), "model.layers[0].units", "must be a positive integer", f"got {shown}")


def test_bad_activation_with_suggestion(errors_of, at):
    text = SEQ.replace("units: 4", "units: 4, activation: rleu")
    e = only(errors_of(text))
    expect(e, at(text, "rleu"), "model.layers[0].activation", "unknown activation", "'rleu'",
           "did you mean relu?")


CONV = """specc: 1
model:
  input: [8, 8, 1]
  layers:
    - {type: Conv2D, filters: 2, kernel_size: 3}
"""


def test_bad_padding(errors_of, at):
    text = CONV.replace("kernel_size: 3", "kernel_size: 3, padding: full")
    e = only(errors_of(text))
    expect(e, at(text, "full"), "model.layers[0].padding", "unknown padding", "'full'", "valid", "same")


def test_kernel_size_list_of_wrong_length(errors_of, at):
    text = CONV.replace("kernel_size: 3", "kernel_size: [3, 3, 3]")
    e = only(errors_of(text))
    expect(e, at(text, "[3, 3, 3]"), "model.layers[0].kernel_size", "list of 2", "[3, 3, 3]")


def test_duplicate_layer_names_mention_the_first(errors_of, at):
    text = """specc: 1
model:
  input: [8]
  layers:
    - {type: Dense, units: 8, name: hidden}
    - {type: Dropout, rate: 0.5}
    - {type: Dense, units: 4, name: hidden}
"""
    e = only(errors_of(text))
    first_line = at(text, "hidden")[0]
    expect(e, at(text, "hidden", 2), "model.layers[2].name", "duplicate name", "'hidden'", f"line {first_line}")


def test_layer_name_clashing_with_the_input_name(errors_of, at):
    text = SEQ.replace("input: [8]", "input: {shape: [8], name: x}").replace("units: 4", "units: 4, name: x")
    e = only(errors_of(text))
    expect(e, at(text, "x}", 2), "model.layers[0].name", "duplicate name", "'x'", f"line {at(text, 'x}')[0]}")


# --- Functional graphs --------------------------------------------------------------------------------

FUNC = """specc: 1
model:
  inputs:
    x: [8]
  layers:
    - {type: Dense, name: d1, units: 4, inputs: x}
    - {type: Dense, name: d2, units: 4, inputs: d1}
  outputs: d2
"""


def test_functional_baseline_is_valid(errors_of):
    assert errors_of(FUNC) == []


def test_unknown_reference_with_suggestion(errors_of, at):
    text = FUNC.replace("inputs: d1", "inputs: d11")
    e = only(errors_of(text))
    expect(e, at(text, "d11"), "model.layers[1].inputs[0]", "unknown input", "'d11'", "did you mean d1?")


def test_cycle_names_its_members(errors_of, at):
    text = """specc: 1
model:
  inputs:
    x: [8]
  layers:
    - {type: Dense, name: enc, units: 4, inputs: dec}
    - {type: Dense, name: mid, units: 4, inputs: enc}
    - {type: Dense, name: dec, units: 4, inputs: mid}
    - {type: Dense, name: head, units: 4, inputs: x}
  outputs: head
"""
    e = only(errors_of(text))
    assert e.file == FILE
    assert "cycle" in e.message
    for member in ("enc", "mid", "dec"):
        assert re.search(rf"\b{member}\b", e.message), e.message
    assert "head" not in e.message and "'x'" not in e.message
    cycle_lines = {at(text, f"name: {m}")[0] for m in ("enc", "mid", "dec")}
    assert e.line in cycle_lines and e.column >= 1
    assert re.fullmatch(r"model\.layers\[[012]\](\.inputs.*)?", e.path), e.path


def test_layer_taking_itself_as_input(errors_of, at):
    text = FUNC.replace("inputs: d1", "inputs: d2")
    errors = errors_of(text)
    assert errors and all(e.line == at(text, "name: d2")[0] for e in errors), errors
    assert any("d2" in e.message and ("itself" in e.message or "cycle" in e.message) for e in errors)


def test_unused_input(errors_of, at):
    text = FUNC.replace("    x: [8]\n", "    x: [8]\n    meta: [3]\n")
    e = only(errors_of(text))
    assert (e.line, e.column) in (at(text, "meta"), at(text, "[3]")), e.text()
    assert e.path == "model.inputs.meta"
    assert "'meta'" in e.message and "not used" in e.message


def test_dangling_layer(errors_of, at):
    text = FUNC.replace("  outputs: d2", "    - {type: Dense, name: d3, units: 2, inputs: d1}\n  outputs: d2")
    e = only(errors_of(text))
    expect(e, at(text, "{type: Dense, name: d3"), "model.layers[2]", "'d3'", "does not lead to any output")


def test_unknown_output_with_suggestion(errors_of, at):
    text = FUNC.replace("outputs: d2", "outputs: [d2, d22]")
    e = only(errors_of(text))
    expect(e, at(text, "d22"), "model.outputs[1]", "unknown output", "'d22'", "did you mean d2?")


def test_empty_outputs_list(errors_of, at):
    text = FUNC.replace("outputs: d2", "outputs: []")
    e = only(errors_of(text))
    expect(e, at(text, "[]"), "model.outputs")


def test_add_with_one_input(errors_of, at):
    text = FUNC.replace("{type: Dense, name: d2, units: 4, inputs: d1}", "{type: Add, name: d2, inputs: [d1]}")
    e = only(errors_of(text))
    expect(e, at(text, "[d1]"), "model.layers[1].inputs", "Add", "at least 2 inputs", "got 1")


def test_dense_with_two_inputs(errors_of, at):
    text = FUNC.replace("inputs: d1}", "inputs: [d1, x]}")
    e = only(errors_of(text))
    expect(e, at(text, "[d1, x]"), "model.layers[1].inputs", "Dense", "exactly 1 input", "got 2")


def test_merge_layer_in_sequential_model(errors_of, at):
    text = SEQ + "    - {type: Add}\n"
    e = only(errors_of(text))
    expect(e, at(text, "{type: Add}"), "model.layers[1]", "Add", "Sequential", "Functional")


def test_inputs_in_sequential_model(errors_of, at):
    text = SEQ.replace("units: 4", "units: 4, inputs: foo")
    e = only(errors_of(text))
    assert (e.line, e.column) in (at(text, "inputs"), at(text, "foo")), e.text()
    assert e.path == "model.layers[0].inputs"
    assert "`inputs`" in e.message and "Functional" in e.message


NESTED = """specc: 1
model:
  input: [8]
  layers:
    - type: Sequential
      name: block
      layers:
        - {type: Dense, units: 4}
        - LAYER
"""


def test_inputs_in_nested_sequential_block(errors_of, at):
    text = NESTED.replace("LAYER", "{type: Dense, units: 2, inputs: foo}")
    e = only(errors_of(text))
    assert (e.line, e.column) in (at(text, "inputs"), at(text, "foo")), e.text()
    assert e.path == "model.layers[0].layers[1].inputs"


def test_merge_layer_in_nested_sequential_block(errors_of, at):
    text = NESTED.replace("LAYER", "{type: Add}")
    e = only(errors_of(text))
    expect(e, at(text, "{type: Add}"), "model.layers[0].layers[1]", "Add", "Sequential")


def test_layer_without_inputs_in_functional_model(errors_of, at):
    text = FUNC.replace(", inputs: d1}", "}")
    errors = errors_of(text)
    (e,) = [e for e in errors if "needs `inputs`" in e.message]
    expect(e, at(text, "{type: Dense, name: d2"), "model.layers[1]", "'d2'", "Functional")


def test_layer_without_inputs_reports_one_error(errors_of, at):
    text = FUNC.replace(", inputs: d1}", "}")
    e = only(errors_of(text))
    expect(e, at(text, "{type: Dense, name: d2"), "model.layers[1]", "needs `inputs`")


# --- shapes -------------------------------------------------------------------------------------------


def test_conv_kernel_larger_than_feature_map(errors_of, at):
    text = """specc: 1
model:
  input: [3, 3, 8]
  layers:
    - {type: Conv2D, name: conv, filters: 4, kernel_size: 5}
"""
    e = only(errors_of(text))
    expect(e, at(text, "{type: Conv2D"), "model.layers[0]", "Conv2D", "'conv'", "does not fit", "5", "valid")
    assert re.search(shape_re(3, 3, 8), e.message), e.message


def test_max_pooling_window_too_large(errors_of, at):
    text = """specc: 1
model:
  input: [3, 3, 8]
  layers:
    - {type: MaxPooling2D, pool_size: 4}
"""
    e = only(errors_of(text))
    expect(e, at(text, "{type: MaxPooling2D"), "model.layers[0]", "MaxPooling2D", "'max_pooling2d'",
           "pool_size", "does not fit")
    assert re.search(shape_re(3, 3, 8), e.message), e.message


MERGE = """specc: 1
model:
  inputs:
    a: {a}
    b: {b}
  layers:
    - {{type: {layer}, name: m, inputs: [a, b]}}
  outputs: m
"""


def test_add_shape_mismatch_shows_both_shapes(errors_of, at):
    text = MERGE.format(a="[3]", b="[4]", layer="Add")
    e = only(errors_of(text))
    expect(e, at(text, "{type: Add"), "model.layers[0]", "Add", "'m'")
    assert re.search(shape_re(3), e.message) and re.search(shape_re(4), e.message), e.message


def test_concatenate_mismatch_shows_both_shapes(errors_of, at):
    text = MERGE.format(a="[3, 5]", b="[4, 6]", layer="Concatenate")
    e = only(errors_of(text))
    expect(e, at(text, "{type: Concatenate"), "model.layers[0]", "Concatenate", "'m'", "axis")
    assert re.search(shape_re(3, 5), e.message) and re.search(shape_re(4, 6), e.message), e.message


def test_concatenate_rank_mismatch(errors_of, at):
    text = MERGE.format(a="[3]", b="[4, 2]", layer="Concatenate")
    e = only(errors_of(text))
    expect(e, at(text, "{type: Concatenate"), "model.layers[0]", "Concatenate", "rank")


def test_reshape_to_wrong_size(errors_of, at):
    text = """specc: 1
model:
  input: [12]
  layers:
    - {type: Reshape, target_shape: [5, 2]}
"""
    e = only(errors_of(text))
    expect(e, at(text, "{type: Reshape"), "model.layers[0]", "Reshape", "12", "10")
    assert re.search(shape_re(5, 2), e.message)


def test_repeat_vector_on_rank_2_input(errors_of, at):
    text = """specc: 1
model:
  input: [4, 3]
  layers:
    - {type: RepeatVector, n: 3}
"""
    e = only(errors_of(text))
    expect(e, at(text, "{type: RepeatVector"), "model.layers[0]", "RepeatVector", "rank 1")
    assert re.search(shape_re(4, 3), e.message)


@pytest.mark.parametrize("rnn", ["SimpleRNN", "LSTM", "GRU"])
def test_rnn_on_rank_1_input(errors_of, at, rnn):
    text = SEQ + f"    - {{type: {rnn}, units: 3}}\n"
    e = only(errors_of(text))
    expect(e, at(text, f"{{type: {rnn}"), "model.layers[1]", rnn, "rank 2")
    assert re.search(shape_re(4), e.message), e.message  # the Dense before it outputs 4 features


# --- compile / fit / data -----------------------------------------------------------------------------


def test_unknown_loss_with_suggestion(errors_of, at):
    text = SEQ + "compile:\n  loss: categorical_crosentropy\n"
    e = only(errors_of(text))
    expect(e, at(text, "categorical_crosentropy"), "compile.loss", "unknown loss",
           "did you mean categorical_crossentropy?")


def test_unknown_optimizer(errors_of, at):
    text = SEQ + "compile:\n  optimizer: adamm\n  loss: mse\n"
    e = only(errors_of(text))
    expect(e, at(text, "adamm"), None, "unknown optimizer", "'adamm'", "did you mean adam?")
    assert e.path.startswith("compile.optimizer")


def test_argument_not_applicable_to_optimizer(errors_of, at):
    text = SEQ + "compile:\n  optimizer: {type: sgd, beta_1: 0.9}\n  loss: mse\n"
    e = only(errors_of(text))
    assert e.line == at(text, "beta_1")[0]
    assert e.path.startswith("compile.optimizer")
    assert "sgd" in e.message and "beta_1" in e.message and "momentum" in e.message


def test_argument_not_applicable_to_optimizer_points_at_the_argument(errors_of, at):
    text = SEQ + "compile:\n  optimizer:\n    type: sgd\n    beta_1: 0.9\n  loss: mse\n"
    e = only(errors_of(text))
    expect(e, at(text, "beta_1"), None, "beta_1")


@pytest.mark.parametrize("text, token, path, wanted, unwanted", [
    (SEQ + "compile:\n  optimizer: {type: sgd, momentun: 0.9}\n  loss: mse\n", "momentun",
     "compile.optimizer.momentun", "did you mean momentum?", "compile takes"),
    (SEQ.replace("input: [8]", "input: {shape: [8], nme: x}"), "nme",
     "model.input.nme", "did you mean name?", "model takes"),
    (SEQ + "data:\n  source: {path: d.npz, xx: a}\n", "xx", "data.source.xx", "path", "data takes"),
    (SEQ + "compile:\n  optimizer: {type: adam, learning_rate: {type: CosineDecay, initial_learning_rate: 0.1, "
           "decay_steps: 10, alpa: 0.1}}\n  loss: mse\n", "alpa",
     "compile.optimizer.learning_rate.alpa", "did you mean alpha?", "compile takes"),
    (FUNC + "  output: d2\n", "output:", "model.output", "inputs", "takes: layers, outputs"),
], ids=["optimizer", "input", "data-source", "schedule", "functional-model"])
def test_unknown_nested_key_lists_its_own_mapping_keys(errors_of, at, text, token, path, wanted, unwanted):
    e = only(errors_of(text))
    expect(e, at(text, token), path, "unknown key", wanted)
    assert unwanted not in e.message


def test_negative_learning_rate(errors_of, at):
    text = SEQ + "compile:\n  optimizer: {type: adam, learning_rate: -0.1}\n  loss: mse\n"
    e = only(errors_of(text))
    expect(e, at(text, "-0.1"), "compile.optimizer.learning_rate", "must be a positive number", "-0.1")


def test_exponent_notation_learning_rate(errors_of):
    text = SEQ + "compile:\n  optimizer: {type: adam, learning_rate: 1e-3}\n  loss: mse\n"
    assert errors_of(text) == []


def test_validation_split_out_of_range(errors_of, at):
    text = SEQ + "fit:\n  epochs: 3\n  validation_split: 1.5\n"
    e = only(errors_of(text))
    expect(e, at(text, "1.5"), "fit.validation_split", "[0, 1)", "1.5")


def test_unknown_callback_with_suggestion(errors_of, at):
    text = SEQ + "fit:\n  callbacks:\n    - {type: EarlyStoping, patience: 3}\n"
    e = only(errors_of(text))
    expect(e, at(text, "EarlyStoping"), "fit.callbacks[0].type", "unknown callback", "'EarlyStoping'",
           "did you mean EarlyStopping?")


def test_loss_mapping_names_missing_output(errors_of, at):
    text = FUNC + "compile:\n  loss: {d22: mse}\n"
    e = only(errors_of(text))
    expect(e, at(text, "d22"), "compile.loss.d22", "'d22'", "not a model output", "did you mean d2?", "outputs: d2")


# --- every error at once ------------------------------------------------------------------------------


def test_all_independent_errors_are_reported_with_their_own_lines(errors_of, at):
    text = """specc: 1
name: many_mistakes
model:
  input: [8]
  layers:
    - {type: Dense, units: -3}
    - {type: Dropout, rate: 1.5}
    - {type: Dense, units: 4, activation: rleu}
compile:
  loss: mse
fit:
  epochs: 0
"""
    errors = errors_of(text)
    assert len(errors) == 4, "\n".join(e.text() for e in errors)
    got = {(e.path, e.line, e.column) for e in errors}
    assert got == {
        ("model.layers[0].units", *at(text, "-3")),
        ("model.layers[1].rate", *at(text, "1.5")),
        ("model.layers[2].activation", *at(text, "rleu")),
        ("fit.epochs", at(text, "epochs: 0")[0], at(text, "epochs: 0")[1] + len("epochs: ")),
    }
    assert len({e.line for e in errors}) == 4
    assert all(e.file == FILE for e in errors)


# --- blocks, repeat, vars, includes, shared layers ---------------------------------------------------------

BLOCKS = """specc: 1
vars: {width: 8}
blocks:
  res:
    params: [units, {act: relu}]
    layers:
      - {type: Dense, name: a, units: "${units}", activation: "${act}"}
      - {type: Add, name: out, inputs: [x, a]}
model:
  input: [8]
  layers:
    - {block: res, units: 8}
"""


def test_unknown_block(errors_of, at):
    text = BLOCKS.replace("{block: res, units: 8}", "{block: rse, units: 8}")
    e = only(errors_of(text))
    expect(e, at(text, "rse"), "model.layers[0].block", "unknown block 'rse'", "did you mean res", "defined blocks: res")


def test_missing_block_parameter(errors_of, at):
    text = BLOCKS.replace("{block: res, units: 8}", "{block: res}")
    e = only(errors_of(text))
    expect(e, at(text, "{block: res}"), "model.layers[0]", "block 'res' needs parameter `units`")


def test_unknown_block_parameter_points_at_its_key(errors_of, at):
    text = BLOCKS.replace("{block: res, units: 8}", "{block: res, units: 8, unit: 3}")
    e = only(errors_of(text))
    expect(e, at(text, "unit: 3"), "model.layers[0].unit", "no parameter 'unit'", "did you mean units",
           "takes: units, act")


def test_bad_value_from_a_parameter_points_at_the_instance_argument(errors_of, at):
    text = BLOCKS.replace("{block: res, units: 8}", "{block: res, units: -2}")
    errors = errors_of(text)
    e = errors[0]
    expect(e, at(text, "-2"), "model.layers[0].units", "positive integer", "-2",
           f"(in block 'res' defined at {FILE}:{at(text, 'name: a')[0]})")
    assert e.context[0]["block"] == "res" and e.context[0]["line"] == at(text, "{type: Dense, name: a")[0]


def test_error_in_a_block_body_points_at_the_instance_and_names_the_definition(errors_of, at):
    text = BLOCKS.replace('activation: "${act}"', 'activation: "${act}", unit: 3')
    e = only(errors_of(text))
    # file:line:col of the instance, the spec path and line of the definition
    expect(e, at(text, "{block: res"), "blocks.res.layers[0].unit", "unknown key `unit`",
           f"(in block 'res' defined at {FILE}:{at(text, 'unit: 3')[0]})")
    assert e.context[0]["column"] == at(text, "unit: 3")[1]


NESTED_BLOCKS = BLOCKS.replace("""model:""", """  outer:
    layers:
      - {block: res, units: 4}
model:""").replace("{block: res, units: 8}", "{block: outer}")


def test_nested_block_error_names_each_block(errors_of, at):
    text = NESTED_BLOCKS.replace('activation: "${act}"', 'activation: "${act}", unit: 3')
    e = only(errors_of(text))
    expect(e, at(text, "{block: outer}"), "blocks.res.layers[0].unit",
           f"(in block 'outer' defined at {FILE}:{at(text, 'units: 4')[0]}, in block 'res' defined at "
           f"{FILE}:{at(text, 'unit: 3')[0]})")
    assert [c["block"] for c in e.context] == ["outer", "res"]


def test_nested_block_argument_error_points_where_the_argument_is_written(errors_of, at):
    text = NESTED_BLOCKS.replace("units: 4", "units: 0")
    errors = errors_of(text)
    e = errors[0]
    # the argument is written in block outer and used in block res: both are named
    used = at(text, '"${units}"')
    expect(e, at(text, "{block: outer}"), "blocks.outer.layers[0].units", "positive integer",
           f"(in block 'outer' defined at {FILE}:{at(text, 'units: 0')[0]}, in block 'res' defined at "
           f"{FILE}:{used[0]})")
    assert (e.context[1]["line"], e.context[1]["column"]) == at(text, '"${units}"')


def test_block_that_instantiates_itself(errors_of, at):
    text = BLOCKS.replace("      - {type: Add, name: out, inputs: [x, a]}\n",
                          "      - {type: Add, name: out, inputs: [x, a]}\n      - {block: res, units: 8}\n")
    e = only(errors_of(text))
    expect(e, at(text, "{block: res, units: 8}\n", 2), "blocks.res.layers[2].block", "cycle: res -> res",
           f"in block 'res' defined at {FILE}:{at(text, '{block: res, units: 8}')[0]}")


def test_unknown_input_inside_a_block(errors_of, at):
    text = BLOCKS.replace("inputs: [x, a]", "inputs: [x, b]")
    e = only(errors_of(text))
    expect(e, at(text, "{block: res"), "blocks.res.layers[1].inputs[1]", "unknown input 'b'", "known: x, a",
           "in block 'res'")


def test_block_definition_errors_are_positioned(errors_of, at):
    text = BLOCKS.replace("    params: [units, {act: relu}]\n", "    params: [units, {act: relu}]\n    outputz: a\n")
    e = only(errors_of(text))
    expect(e, at(text, "outputz"), "blocks.res.outputz", "unknown key `outputz`", "did you mean outputs")


@pytest.mark.parametrize("count, words", [("0", ("from 1 to 1000", "0")), ("-1", ("from 1 to 1000",)),
                                          ("1001", ("from 1 to 1000",)), ("true", ("true",)),
                                          ("two", ("'two'",)), ("[3, 4]", ("list of parameter mappings",)),
                                          ('"${width / 2}"', ("4.0",))])
def test_repeat_count_invalid(errors_of, at, count, words):
    text = BLOCKS.replace("{block: res, units: 8}", f"{{repeat: {count}, block: res, units: 8}}")
    e = only(errors_of(text))
    expect(e, at(text, count), "model.layers[0].repeat", *words)


def test_repeat_without_block_or_type(errors_of, at):
    text = BLOCKS.replace("{block: res, units: 8}", "{repeat: 2, units: 8}")
    e = only(errors_of(text))
    expect(e, at(text, "{repeat: 2"), "model.layers[0]", "needs the `block`")


@pytest.mark.parametrize("expr, words", [
    ("${widht}", ("unknown name 'widht'", "did you mean width")),
    ("${width / 0}", ("division by zero",)),
    ("${width * }", ("ends too early",)),
    ("${width ** 2}", ("unexpected '*'",)),
    ("${__import__}", ("unknown name '__import__'",)),
    ("${width + [1]}", ("unexpected '['",)),
    ("${width * 9999999999 * 9999999999}", ("out of range",)),
    ("${width", ("unclosed",)),
])
def test_bad_reference_points_at_the_value(errors_of, at, expr, words):
    text = BLOCKS.replace("{block: res, units: 8}", f'{{type: Dense, units: "{expr}"}}')
    e = only(errors_of(text))
    expect(e, at(text, f'"{expr}"'), "model.layers[0].units", "cannot evaluate", *words)


def test_reference_to_a_list_var_where_a_number_is_needed(errors_of, at):
    text = BLOCKS.replace("vars: {width: 8}", "vars: {width: [8]}").replace("{block: res, units: 8}",
                                                                           '{type: Dense, units: "${width}"}')
    e = only(errors_of(text))
    expect(e, at(text, '"${width}"'), "model.layers[0].units", "integer")


def test_var_cycle_is_reported_once_at_a_definition(errors_of, at):
    text = BLOCKS.replace("vars: {width: 8}", 'vars: {width: "${depth}", depth: "${width + 1}"}')
    e = only(errors_of(text))
    assert "cycle" in e.message and e.path.startswith("vars.")


def test_bad_var_name(errors_of, at):
    text = BLOCKS.replace("vars: {width: 8}", "vars: {width: 8, 2x: 3}")
    e = only(errors_of(text))
    expect(e, at(text, "2x"), "vars.2x", "letters, digits and '_'")


def test_set_override_of_a_var_is_blamed_on_the_command_line():
    from specc.spec.overrides import apply_overrides

    text = BLOCKS.replace("{block: res, units: 8}", '{type: Dense, units: "${width}"}')
    _, errors = apply_overrides(text, ["vars.width=abc"], FILE)
    e = only(errors)
    assert e.file == "--set vars.width=abc" and (e.line, e.column) == (0, 0)
    assert "integer" in e.message and "abc" in e.message


def test_use_of_unknown_layer(errors_of, at):
    text = """specc: 1
model:
  inputs: {a: [4], b: [4]}
  layers:
    - {type: Dense, name: encoder, units: 3, inputs: a}
    - {use: encodr, name: enc_b, inputs: b}
    - {type: Concatenate, name: cat, inputs: [encoder, enc_b]}
  outputs: cat
"""
    e = only(errors_of(text))
    expect(e, at(text, "encodr"), "model.layers[1].use", "unknown layer 'encodr'", "did you mean encoder")


def test_use_with_layer_arguments(errors_of, at):
    text = """specc: 1
model:
  inputs: {a: [4], b: [4]}
  layers:
    - {type: Dense, name: encoder, units: 3, inputs: a}
    - {use: encoder, name: enc_b, units: 5, inputs: b}
    - {type: Concatenate, name: cat, inputs: [encoder, enc_b]}
  outputs: cat
"""
    e = only(errors_of(text))
    expect(e, at(text, "units: 5"), "model.layers[1].units", "takes only use, name, inputs")


def test_use_before_its_layer_in_the_graph(errors_of, at):
    text = """specc: 1
model:
  inputs: {a: [4]}
  layers:
    - {type: Dense, name: encoder, units: 4, inputs: shared}
    - {use: encoder, name: shared, inputs: a}
  outputs: encoder
"""
    e = only(errors_of(text))
    expect(e, at(text, "encoder, name: shared"), "model.layers[1].use", "before that layer's own place")


def _project(write_spec, files: dict[str, str]):
    for name, text in files.items():
        write_spec(text, name)


def test_include_cycle_lists_the_chain(write_spec):
    from specc.spec import load_spec

    write_spec("include: b.yaml\nblocks: {}\n", "lib/a.yaml")
    write_spec("include: a.yaml\n", "lib/b.yaml")
    path = write_spec("specc: 1\ninclude: lib/a.yaml\nmodel: {input: [3], layers: [{type: Dense, units: 2}]}\n")
    _, errors = load_spec(path)
    e = only(errors)
    assert e.file.endswith("b.yaml") and (e.line, e.column) == (1, 10)
    assert "include cycle:" in e.message and e.message.count("a.yaml") == 2 and "b.yaml ->" in e.message


def test_include_outside_the_spec_tree(write_spec, tmp_path):
    from specc.spec import load_spec

    write_spec("blocks: {}\n", "lib.yaml")
    path = write_spec("specc: 1\ninclude: [../lib.yaml]\nmodel: {input: [3], layers: [{type: Dense, units: 2}]}\n",
                      "project/spec.yaml")
    _, errors = load_spec(path)
    e = only(errors)
    assert e.file == str(path) and (e.line, e.column) == (2, 11) and e.path == "include[0]"
    assert "outside the spec's directory" in e.message and "SPECC_INCLUDE_PATH" in e.message


def test_include_missing_file_and_bad_content(write_spec):
    from specc.spec import load_spec

    write_spec("model: {}\nblocks: [1]\n", "bad.yaml")
    path = write_spec("specc: 1\ninclude: [nope.yaml, bad.yaml]\nmodel: {input: [3], layers: [{type: Dense, "
                      "units: 2}]}\n")
    _, errors = load_spec(path)
    assert len(errors) == 3, [e.text() for e in errors]
    missing, model_key, blocks = sorted(errors, key=lambda e: (e.file.endswith("bad.yaml"), e.line))
    assert missing.file == str(path) and "cannot include 'nope.yaml'" in missing.message
    assert model_key.file.endswith("bad.yaml") and model_key.line == 1 and "`model` belongs in the spec" in model_key.message
    assert blocks.file.endswith("bad.yaml") and blocks.line == 2 and "mapping of block names" in blocks.message


def test_block_defined_twice_across_files(write_spec):
    from specc.spec import load_spec

    write_spec("blocks:\n  fc: {layers: [{type: Dense, units: 2}]}\n", "lib.yaml")
    path = write_spec("specc: 1\ninclude: lib.yaml\nblocks:\n  fc: {layers: [{type: Dense, units: 3}]}\n"
                      "model: {input: [3], layers: [{block: fc}]}\n")
    _, errors = load_spec(path)
    e = only(errors)
    assert e.file == str(path) and (e.line, e.column) == (4, 3)
    assert "block 'fc' is already defined at" in e.message and "lib.yaml:2" in e.message


def test_error_in_an_included_block_names_the_included_file(write_spec):
    from specc.spec import load_spec

    write_spec("blocks:\n  fc:\n    layers:\n      - {type: Dense, units: 0}\n", "blocks/lib.yaml")
    path = write_spec("specc: 1\ninclude: blocks/lib.yaml\nmodel:\n  input: [3]\n  layers:\n    - {block: fc}\n")
    _, errors = load_spec(path)
    e = only(errors)
    assert e.file == str(path) and (e.line, e.column) == (6, 7)  # the instance, in the spec
    assert e.path == "blocks.fc.layers[0].units"
    lib = os.path.join(os.path.dirname(str(path)), "blocks", "lib.yaml")
    assert f"(in block 'fc' defined at {lib}:4)" in e.message
    assert e.context[0]["file"] == lib and (e.context[0]["line"], e.context[0]["column"]) == (4, 30)


def test_expansion_too_large(errors_of, at):
    text = BLOCKS.replace("""model:""", """  big:
    layers:
      - {repeat: 1000, block: res, units: 8}
model:""").replace("{block: res, units: 8}\n", "{repeat: 1000, block: big}\n", 1)
    text = text.replace("{repeat: 1000, block: big}", "{repeat: 30, block: big}")
    errors = errors_of(text)
    assert len(errors) == 1 and "more than 20,000 layers" in errors[0].message
