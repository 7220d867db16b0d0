"""specs/zoo/: each model written with blocks and repeats matches Keras Applications' own build of it
(parameter counts, output shapes, layer by layer), as recorded in tests/fixtures/keras_zoo.json by
tests/fixtures/record_zoo.py; a cheap one trains through the CLI at a small input size."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from specc.spec import load_spec
from specc.spec.overrides import load_spec_with_overrides

ROOT = Path(__file__).parent.parent
ZOO = ROOT / "specs" / "zoo"
RECORDED = json.loads((Path(__file__).parent / "fixtures" / "keras_zoo.json").read_text())
MODELS = sorted(p.stem for p in ZOO.glob("*.yaml"))

# Layers Keras leaves unnamed (auto-named per session: conv2d_1, add_3, ...) are named after their block in
# the spec; Keras's Xception block2 starts without a ReLU on an input that is already one (relu(relu(x)) =
# relu(x)), which the spec's block states once for every entry block.
RENAMED = {"xception": ("conv2d", "batch_normalization", "add")}
EXTRA = {"xception": {"block2_sepconv1_act"}}


def _flat(spec):
    """name -> (type, parameters, output shape) of every layer the spec's graph runs."""
    graph = spec.graph
    out = {}
    for node in graph.nodes:
        for leaf in node.leaves():
            out[leaf.name] = (leaf.type, leaf.params(), tuple(leaf.output_shape))
    return out


def test_every_zoo_spec_has_a_keras_record():
    assert MODELS, "no specs in specs/zoo"
    assert set(MODELS) <= set(RECORDED), set(MODELS) - set(RECORDED)


@pytest.mark.parametrize("model", MODELS)
def test_zoo_spec_matches_keras(model):
    keras = RECORDED[model]
    spec, errors = load_spec(ZOO / f"{model}.yaml")
    assert not errors, "\n".join(e.text() for e in errors)
    assert list(spec.graph.inputs[0].output_shape) == keras["input_shape"]
    assert spec.graph.params() == keras["total_params"]
    assert spec.graph.params(trainable=True) == keras["trainable_params"]
    assert spec.graph.params(trainable=False) == keras["non_trainable_params"]
    outputs = [spec.graph.node(o).output_shape for o in spec.graph.outputs]
    assert [list(s) for s in outputs] == [keras["output_shape"]]

    ours = _flat(spec)
    theirs = {name: (kind, params, tuple(shape)) for name, kind, params, shape in keras["layers"]
              if kind != "InputLayer"}
    # every layer, whatever its name: the same multiset of (type, parameters, output shape) ...
    extra = EXTRA.get(model, set())
    assert Counter(v for k, v in ours.items() if k not in extra) == Counter(theirs.values())
    # ... and under Keras's own names, wherever Keras names the layer itself
    renamed = RENAMED.get(model, ())
    for name, expected in theirs.items():
        if name.rstrip("_0123456789") in renamed:
            continue
        assert name in ours, f"{model}: Keras layer {name!r} is not in the spec"
        assert ours[name] == expected, f"{model}: {name}: {ours[name]} != Keras {expected}"


def test_resnet50_is_a_page():
    """The issue's bar: ResNet50 in at most ~60 lines, totals as Keras's summary prints them."""
    lines = (ZOO / "resnet50.yaml").read_text().splitlines()
    assert len(lines) <= 60
    spec, errors = load_spec(ZOO / "resnet50.yaml")
    assert not errors
    assert spec.graph.params() == 23_608_202 and spec.graph.params(trainable=True) == 23_555_082
    assert len(_flat(spec)) == 176  # Keras's 177 layers without the InputLayer


def test_zoo_summary_cli_totals_and_block_rows():
    """`specc summary` of the zoo's ResNet50: Keras's totals; each block instance is one row, and
    --expand-nested lists the instance's layers under it."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    run = [sys.executable, "-m", "specc.cli", "summary", str(ZOO / "resnet50.yaml")]
    proc = subprocess.run(run + ["--format", "json"], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert (data["total_params"], data["trainable_params"]) == (23_608_202, 23_555_082)
    rows = {row["name"]: row for row in data["layers"]}
    assert rows["conv2_block2"]["type"] == "identity"
    assert rows["conv2_block2"]["params"] == RECORDED_BLOCK_PARAMS("resnet50", "conv2_block2_")
    assert rows["conv2_block2"]["output_shape"] == [None, 16, 16, 256]
    assert rows["conv2_block2"]["connected_to"] == ["conv2_block1"]  # the instance before it, as one row
    assert "conv2_block2_1_conv" not in rows
    inner = rows["conv2_block2"]["layers"]  # a nested instance is a nested row
    assert [(c["name"], c["type"]) for c in inner][:2] == [("conv2_block2_1", "conv_bn"), ("conv2_block2_1_relu",
                                                                                           "Activation")]
    assert [c["name"] for c in inner[0]["layers"]] == ["conv2_block2_1_conv", "conv2_block2_1_bn"]
    text = subprocess.run(run, capture_output=True, text=True, env=env, timeout=120).stdout
    assert "conv2_block2 (identity)" in text and "conv2_block2_1_conv" not in text
    nested = subprocess.run(run + ["--expand-nested"], capture_output=True, text=True, env=env, timeout=120).stdout
    assert "└ conv2_block2_1_conv (Conv2D)" in nested
    assert "Total params: 23,608,202" in nested and "Total params: 23,608,202" in text


def RECORDED_BLOCK_PARAMS(model: str, prefix: str) -> int:
    return sum(p for name, _, p, _ in RECORDED[model]["layers"] if name.startswith(prefix))


@pytest.mark.parametrize("model, size", [("resnet50", 32), ("mobilenet_v2", 32), ("densenet121", 32),
                                         ("vgg16", 48), ("xception", 80)])
def test_zoo_input_size_is_a_variable(model, size):
    """`--set vars.size=N` builds the same model at another input size (as Keras does for input_shape)."""
    spec, errors = load_spec_with_overrides(str(ZOO / f"{model}.yaml"), [f"vars.size={size}"])
    assert not errors, "\n".join(e.text() for e in errors)
    assert spec.graph.inputs[0].output_shape == (size, size, 3)
    # the parameter count does not depend on the size (global pooling before the head; VGG's Flatten does)
    if model != "vgg16":
        assert spec.graph.params() == RECORDED[model]["total_params"]


def test_zoo_model_trains_one_step_through_the_cli(tmp_path):
    """A zoo model at a small input size trains through `specc train` (one step on synthetic data)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-m", "specc.cli", "train", str(ZOO / "mobilenet_v2.yaml"), "--set", "vars.size=32",
         "--set", "data.samples=10", "--set", "data.test_split=0.2", "--set", "fit.batch_size=8",
         "--out", str(tmp_path), "--quiet", "--threads", "1"],
        capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    runs = list((tmp_path / "mobilenet_v2").iterdir())
    assert len(runs) == 1
    history = json.loads((runs[0] / "history.json").read_text())
    assert len(history["loss"]) == 1
    weights = __import__("numpy").load(runs[0] / "weights.final.npz")
    assert "block_16_project/kernel" in weights.files
