"""Blocks, repeat, vars, includes and shared layers (`use`): what they expand to, what the summary shows, what
the CLI prints, and that v1 files mean what they meant. Positioned errors of these constructs are in
tests/test_schema_errors.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from specc.spec import load_spec, load_spec_text
from specc.spec.expand import expand, uses_templates
from specc.spec.overrides import apply_overrides
from specc.spec.resolve import resolved_yaml
from specc.spec.yamlpos import load_yaml
from specc.summary import summary_json, summary_text

ROOT = Path(__file__).parent.parent
SPECS = sorted((ROOT / "specs").glob("*.yaml"))


def ok(text: str, file: str = "spec.yaml"):
    spec, errors = load_spec_text(text, file)
    assert not errors, "\n".join(e.text() for e in errors)
    return spec


def cli(*args, cwd=None, env=None):
    return subprocess.run([sys.executable, "-m", "specc.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}, timeout=120)


def dense_params(n_in: int, units: int) -> int:
    return n_in * units + units


RESIDUAL = """specc: 1
blocks:
  res:
    params: [units, {act: relu}]
    layers:
      - {type: Dense, name: a, units: "${units}", activation: "${act}"}
      - {type: Dense, name: b, units: "${units}"}
      - {type: Add, name: out, inputs: [x, b]}
model:
  input: [8]
  layers:
    - {type: Dense, units: 8}
    - {block: res, units: 8}
    - {block: res, units: 8, act: tanh}
    - {type: Dense, units: 3, activation: softmax}
"""


# --- blocks -------------------------------------------------------------------------------------------------


def test_block_in_a_sequential_chain_expands_to_named_layers_with_inputs():
    spec = ok(RESIDUAL)
    names = [n.name for n in spec.graph.nodes]
    # Keras-like auto names: the instances are res and res_1; their layers <instance>_<layer>
    assert names == ["dense", "res_a", "res_b", "res_out", "res_1_a", "res_1_b", "res_1_out", "dense_1"]
    assert spec.graph.node("res_out").inbound == ["dense", "res_b"]  # the block input x is the chain's previous
    assert spec.graph.node("res_1_a").inbound == ["res_out"]  # the next instance takes the block's output
    assert spec.graph.node("res_1_a").layer.activation == "tanh" and spec.graph.node("res_a").layer.activation == "relu"
    assert spec.graph.params() == dense_params(8, 8) + 4 * dense_params(8, 8) + dense_params(8, 3)
    assert [i.name for i in spec.instances] == ["res", "res_1"]
    assert spec.instances[1].inputs == ["res_out"] and spec.instances[1].outputs == ["res_1_out"]


def test_functional_block_with_two_inputs_and_two_outputs():
    spec = ok("""specc: 1
blocks:
  mix:
    inputs: [a, b]
    layers:
      - {type: Concatenate, name: cat, inputs: [a, b]}
      - {type: Dense, name: left, units: 2, inputs: cat}
      - {type: Dense, name: right, units: 3, inputs: cat}
    outputs: [left, right]
model:
  inputs: {p: [4], q: [5]}
  layers:
    - {block: mix, name: m, inputs: [p, q]}
    - {type: Concatenate, name: both, inputs: [m.left, m.right]}
    - {type: Dense, name: head, units: 1, inputs: m}
  outputs: [both, head]
""")
    g = spec.graph
    assert g.node("m_cat").inbound == ["p", "q"]
    assert g.node("both").inbound == ["m_left", "m_right"]
    assert g.node("head").inbound == ["m_left"]  # the instance's name stands for its first output
    assert g.node("both").output_shape == (5,)


def test_block_layers_without_inputs_chain_and_nested_blocks_prefix_names():
    spec = ok("""specc: 1
blocks:
  unit:
    params: [n]
    layers: [{type: Dense, units: "${n}"}, {type: Dense, units: "${n}"}]
  pair:
    params: [n]
    layers:
      - {block: unit, n: "${n}"}
      - {block: unit, n: "${n * 2}"}
model:
  input: [3]
  layers:
    - {block: pair, name: p, n: 4}
""")
    names = [n.name for n in spec.graph.nodes]
    assert names == ["p_unit_dense", "p_unit_dense_1", "p_unit_1_dense", "p_unit_1_dense_1"]
    assert spec.graph.node("p_unit_1_dense").output_shape == (8,)
    (pair,) = spec.instances
    assert [c.name for c in pair.children] == ["p_unit", "p_unit_1"]
    assert pair.members() == names


def test_summary_shows_an_instance_as_one_row_and_expands_it():
    spec = ok(RESIDUAL)
    text = summary_text(spec.graph, instances=spec.instances)
    assert "res (res)" in text and "res_1 (res)" in text and "res_a" not in text
    block = dense_params(8, 8) * 2
    assert f"│ {block:,} │" in text.replace(" ", "").replace("│", "│ ", 1) or f"{block:,}" in text
    assert f"Total params: {spec.graph.params():,}" in text
    nested = summary_text(spec.graph, expand_nested=True, instances=spec.instances)
    assert "└ res_a (Dense)" in nested and "└ res_1_out (Add)" in nested
    data = summary_json(spec.graph, instances=spec.instances)
    rows = {r["name"]: r for r in data["layers"]}
    assert list(rows) == ["input_layer", "dense", "res", "res_1", "dense_1"]
    assert rows["res"]["params"] == block and rows["res"]["type"] == "res"
    assert rows["res_1"]["connected_to"] == ["res"]
    assert [c["name"] for c in rows["res"]["layers"]] == ["res_a", "res_b", "res_out"]
    assert data["total_params"] == spec.graph.params()


# --- repeat ---------------------------------------------------------------------------------------------------


def test_repeat_chains_copies_and_counts_from_index_0():
    spec = ok(RESIDUAL.replace("    - {block: res, units: 8}\n    - {block: res, units: 8, act: tanh}\n",
                               "    - {repeat: 3, block: res, units: 8, name: \"stage${index + 1}\"}\n"))
    assert [i.name for i in spec.instances] == ["stage1", "stage2", "stage3"]
    assert spec.graph.node("stage3_a").inbound == ["stage2_out"]
    plain = ok(RESIDUAL.replace("    - {block: res, units: 8}\n    - {block: res, units: 8, act: tanh}\n",
                                "    - {repeat: 2, block: res, units: 8, name: s}\n"))
    assert [i.name for i in plain.instances] == ["s_1", "s_2"]


def test_repeat_over_parameter_sets_and_of_a_single_layer():
    spec = ok("""specc: 1
blocks:
  fc: {params: [units], layers: [{type: Dense, name: d, units: "${units}"}]}
model:
  input: [3]
  layers:
    - {repeat: [{units: 4}, {units: 5}, {units: 6}], block: fc}
    - {repeat: 2, type: Dense, units: 7, name: "extra${index}"}
""")
    shapes = [(n.name, n.output_shape) for n in spec.graph.nodes]
    assert shapes == [("fc_d", (4,)), ("fc_1_d", (5,)), ("fc_2_d", (6,)), ("extra0", (7,)), ("extra1", (7,))]


# --- vars -------------------------------------------------------------------------------------------------------


VARS = """specc: 1
vars: {width: 16, half: "${width // 2}", rate: "${1 / 4}"}
model:
  input: ["${width}"]
  layers:
    - {type: Dense, units: "${width * 2 + 1}", name: "wide${width}"}
    - {type: Dropout, rate: "${rate}"}
    - {type: Dense, units: "${(half - 2) * 3}"}
fit: {batch_size: "${half}"}
"""


def test_vars_and_arithmetic_anywhere_a_value_is():
    spec = ok(VARS)
    assert spec.graph.inputs[0].output_shape == (16,)
    assert spec.graph.node("wide16").output_shape == (33,)
    assert spec.graph.nodes[1].layer.rate == 0.25
    assert spec.graph.nodes[2].output_shape == (18,)
    assert spec.fit.batch_size == 8


def test_set_overrides_a_var():
    spec, errors = apply_overrides(VARS, ["vars.width=32"], "spec.yaml")
    assert not errors
    assert spec.graph.node("wide32").output_shape == (65,)
    assert spec.fit.batch_size == 16  # half follows width


def test_expand_cli_prints_the_flat_v1_spec_and_takes_set(tmp_path):
    path = tmp_path / "m.yaml"
    path.write_text(RESIDUAL)
    proc = cli("expand", path, "--set", "model.layers[3].units=5")
    assert proc.returncode == 0, proc.stderr
    flat = yaml.safe_load(proc.stdout)
    assert "blocks" not in flat and not uses_templates(flat)
    assert [layer["name"] for layer in flat["model"]["layers"]][:3] == ["dense", "res_a", "res_b"]
    assert flat["model"]["outputs"] == ["dense_1"]
    again = ok(proc.stdout)  # what the compiler sees is itself a valid v1 spec of the same model
    original, _ = apply_overrides(RESIDUAL, ["model.layers[3].units=5"], "m.yaml")
    assert again.graph.params() == original.graph.params()
    assert [n.name for n in again.graph.nodes] == [n.name for n in original.graph.nodes]


@pytest.mark.parametrize("path", SPECS, ids=[p.stem for p in SPECS])
def test_v1_examples_are_unchanged_by_expansion(path):
    data, positions, errors = load_yaml(path.read_bytes(), str(path))
    assert not errors
    assert not uses_templates(data)
    assert expand(data, positions, str(path)).data is data
    proc = cli("expand", path)
    assert proc.returncode == 0 and yaml.safe_load(proc.stdout) == yaml.safe_load(path.read_text())


# --- includes ---------------------------------------------------------------------------------------------------


def test_include_brings_blocks_and_vars_relative_to_the_including_file(tmp_path):
    (tmp_path / "blocks").mkdir()
    (tmp_path / "blocks" / "common.yaml").write_text("vars: {width: 6}\nblocks:\n  fc: {params: [units], layers: "
                                                     "[{type: Dense, name: d, units: \"${units}\"}]}\n")
    (tmp_path / "blocks" / "lib.yaml").write_text("include: common.yaml\nblocks:\n  two: {layers: [{block: fc, "
                                                  "units: \"${width}\"}, {block: fc, units: 2}]}\n")
    spec_path = tmp_path / "m.yaml"
    spec_path.write_text("specc: 1\ninclude: [blocks/lib.yaml, blocks/common.yaml]\nvars: {width: 5}\n"
                         "model:\n  input: [3]\n  layers:\n    - {block: two}\n")
    spec, errors = load_spec(spec_path)
    assert not errors, [e.text() for e in errors]
    assert [n.output_shape for n in spec.graph.nodes] == [(5,), (2,)]  # the spec's own vars win


def test_include_outside_the_tree_is_allowed_by_specc_include_path(tmp_path):
    lib = tmp_path / "lib"
    lib.mkdir()
    (lib / "b.yaml").write_text("blocks:\n  fc: {layers: [{type: Dense, units: 2}]}\n")
    project = tmp_path / "project"
    project.mkdir()
    (project / "m.yaml").write_text("specc: 1\ninclude: ../lib/b.yaml\nmodel:\n  input: [3]\n  layers: [{block: fc}]\n")
    refused = cli("validate", project / "m.yaml")
    assert refused.returncode == 1 and "outside the spec's directory" in refused.stdout
    allowed = cli("validate", project / "m.yaml", env={"SPECC_INCLUDE_PATH": str(lib)})
    assert allowed.returncode == 0, allowed.stdout


# --- shared layers ----------------------------------------------------------------------------------------------


SIAMESE = """specc: 1
model:
  inputs: {left: [4], right: [4]}
  layers:
    - {type: Dense, name: encoder, units: 4, activation: tanh, inputs: left}
    - {use: encoder, name: encoder_right, inputs: right}
    - {use: encoder_right, name: again, inputs: encoder}
    - {type: Subtract, name: diff, inputs: [again, encoder_right]}
    - {type: Dense, name: head, units: 1, inputs: diff}
  outputs: head
"""


def test_use_shares_weights_and_counts_them_once():
    spec = ok(SIAMESE)
    g = spec.graph
    assert g.params() == dense_params(4, 4) + dense_params(4, 1)
    assert g.node("encoder_right").params() == 0
    rows = {r["name"]: r for r in summary_json(g)["layers"]}
    assert rows["encoder_right"]["type"] == "Dense" and rows["encoder_right"]["params"] == 0
    assert g.node("again").output_shape == (4,)
    flat = yaml.safe_load(resolved_yaml(spec))  # the resolved spec (run directories) keeps the sharing
    assert flat["model"]["layers"][1] == {"use": "encoder", "name": "encoder_right", "inputs": ["right"]}
    assert ok(resolved_yaml(spec)).graph.params() == g.params()


def test_shared_layer_gradients_match_finite_differences():
    """The owner's gradient sums its own and every use's contribution (float64, through the engine)."""
    from specc.engine import Engine

    spec = ok(SIAMESE)
    engine = Engine(spec.graph, np.float64)
    engine.initialize(0)
    rng = np.random.default_rng(0)
    engine.params += rng.standard_normal(engine.params.shape) * 0.1
    xs = [rng.standard_normal((3, 4)), rng.standard_normal((3, 4))]
    weights = rng.standard_normal((3, 1))

    def loss() -> float:
        return float(np.sum(engine.forward(xs)[0] * weights))

    for _ in range(2):  # a second pass must not keep the first one's gradients
        engine.forward(xs)
        engine.backward([weights])
    analytic = engine.grads.copy()
    assert engine.n_trainable == spec.graph.params()
    h = 1e-6
    for idx in range(engine.n_trainable):
        old = engine.params[idx]
        engine.params[idx] = old + h
        up = loss()
        engine.params[idx] = old - h
        down = loss()
        engine.params[idx] = old
        assert np.isclose(analytic[idx], (up - down) / (2 * h), rtol=1e-5, atol=1e-7), idx


# --- editor schema ------------------------------------------------------------------------------------------------


def test_json_schema_accepts_the_zoo_and_block_specs():
    jsonschema = pytest.importorskip("jsonschema")
    from specc.spec.jsonschema import spec_json_schema

    validator = jsonschema.Draft202012Validator(spec_json_schema())
    texts = [p.read_text() for p in sorted((ROOT / "specs" / "zoo").glob("*.yaml")) + SPECS]
    for text in texts + [RESIDUAL, VARS, SIAMESE]:
        errors = [e.message for e in validator.iter_errors(yaml.safe_load(text))]
        assert not errors, errors[:3]
    bad = yaml.safe_load(RESIDUAL.replace("params: [units", "parms: [units"))
    assert list(validator.iter_errors(bad)), "an unknown key in a block definition must be flagged"


def test_validate_json_carries_the_block_definition_position(tmp_path):
    path = tmp_path / "m.yaml"
    path.write_text(RESIDUAL.replace("name: b, units: \"${units}\"", "name: b, units: \"${units}\", bogus: 1"))
    proc = cli("validate", "--format", "json", path)
    assert proc.returncode == 1
    errors = json.loads(proc.stdout)
    assert len(errors) == 2  # once per instance
    first = errors[0]
    text = path.read_text()
    instance_line = text.splitlines().index("    - {block: res, units: 8}") + 1
    definition_line = next(i for i, line in enumerate(text.splitlines(), 1) if "bogus" in line)
    assert (first["line"], first["path"]) == (instance_line, "blocks.res.layers[1].bogus")
    assert first["context"] == [{"block": "res", "file": str(path), "line": definition_line,
                                 "column": text.splitlines()[definition_line - 1].index("bogus") + 1,
                                 "path": "blocks.res.layers[1].bogus"}]
    assert f"(in block 'res' defined at {path}:{definition_line})" in first["message"]


def test_use_on_an_input_of_another_size_is_an_error(errors_of, at):
    text = SIAMESE.replace("inputs: {left: [4], right: [4]}", "inputs: {left: [4], right: [5]}")
    errors = errors_of(text)
    assert len(errors) == 1, [e.text() for e in errors]
    e = errors[0]
    assert (e.line, e.column) == at(text, "encoder, name: encoder_right")
    assert "kernel" in e.message and "(5, 4)" in e.message and "(4, 4)" in e.message


def test_shared_layer_trains_through_the_cli(tmp_path):
    """`specc train` of a spec with `use`: the shared weights are saved once, and the run's resolved.yaml
    (which keeps the `use`) validates to the same model."""
    path = tmp_path / "siamese.yaml"
    path.write_text(SIAMESE + "seed: 0\ndata: {source: synthetic, samples: 32}\ncompile: {optimizer: adam, loss: mse}\n"
                              "fit: {batch_size: 8, epochs: 2}\n")
    proc = cli("train", path, "--out", tmp_path / "runs", "--quiet", "--threads", "1")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (run,) = (tmp_path / "runs" / "siamese").iterdir()
    weights = np.load(run / "weights.final.npz")
    assert sorted(weights.files) == ["encoder/bias", "encoder/kernel", "head/bias", "head/kernel"]
    resolved, errors = load_spec(run / "resolved.yaml")
    assert not errors and resolved.graph.params() == ok(SIAMESE).graph.params()
    assert len(json.loads((run / "history.json").read_text())["loss"]) == 2


def test_shared_layer_in_a_dense_chain_trains(tmp_path):
    """A layer used twice in one chain of Dense layers (the case the fused Dense-chain path must leave to
    the general one): it trains, and its loss goes down."""
    path = tmp_path / "chain.yaml"
    path.write_text("""specc: 1
seed: 0
model:
  input: [4]
  layers:
    - {type: Dense, name: d, units: 4, activation: tanh}
    - {use: d, name: d_again}
    - {type: Dense, units: 1}
data: {source: synthetic, samples: 64}
compile: {optimizer: {type: adam, learning_rate: 0.01}, loss: mse}
fit: {batch_size: 16, epochs: 5, shuffle: false}
""")
    proc = cli("train", path, "--out", tmp_path / "runs", "--quiet", "--threads", "1")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (run,) = (tmp_path / "runs" / "chain").iterdir()
    loss = json.loads((run / "history.json").read_text())["loss"]
    assert loss[-1] < loss[0]


def test_readme_example_of_blocks_validates():
    readme = (ROOT / "README.md").read_text()
    start = readme.index("```yaml", readme.index("### Blocks, repeat, variables, includes")) + len("```yaml\n")
    spec = ok(readme[start: readme.index("```", start)])
    assert [i.name for i in spec.instances] == ["conv_bn", "stage1_1", "stage1_2", "stage1_3"]
    assert spec.graph.node("stage1_3_add").output_shape == (16, 16, 64)


def test_a_long_repeat_summarises():
    """A chain of 3,000 layers (deeper than Python's recursion limit) validates and summarises."""
    chain = "".join(f"    - {{repeat: 1000, type: Dense, units: 2, name: \"d${{index + {k}}}\"}}\n"
                    for k in (0, 1000, 2000))
    spec = ok("specc: 1\nmodel:\n  input: [2]\n  layers:\n" + chain)
    assert len(spec.graph.nodes) == 3000 and spec.graph.nodes[-1].inbound == ["d2998"]
    text = summary_text(spec.graph, instances=spec.instances)
    assert "d2999 (Dense)" in text and f"Total params: {3000 * 6:,}" in text
