"""`specc import`: Keras 3 models into specc specs, through the CLI as users run it.

Recorded fixtures (tests/fixtures/keras/record.py) keep the same cases in CI without Keras: eight Keras
Applications' configs with Keras's parameter counts and shapes, and small `.keras` archives with Keras's
weights and predictions. Where Keras is installed, the Applications are also built, saved with weights and
compared prediction by prediction."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import specc
from specc.interop.keras_import import convert
from specc.spec import load_spec

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "keras"
APPS = json.loads((FIXTURES / "apps" / "expected.json").read_text())


def specc_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "specc.cli", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=600)


def app_config(name: str, tmp_path: Path) -> Path:
    path = tmp_path / f"{name}.json"
    with gzip.open(FIXTURES / "apps" / f"{name}.json.gz", "rt", encoding="utf-8") as fh:
        path.write_text(fh.read())
    return path


@pytest.mark.parametrize("name", sorted(APPS))
def test_applications_convert_with_kerass_counts_and_shapes(name, tmp_path):
    source = app_config(name, tmp_path)
    out = tmp_path / f"{name.lower()}.yaml"
    r = specc_cli("import", str(source), "-o", str(out))
    assert r.returncode == 0, r.stderr
    assert "no weights in the source" in r.stderr
    spec, errors = load_spec(str(out))
    assert not errors, errors[:3]
    want = APPS[name]
    graph = spec.graph
    assert graph.params() == want["params"]
    assert graph.params(trainable=True) == want["trainable"]
    assert list(graph.inputs[0].output_shape) == want["input_shape"]
    assert list(graph.node(graph.outputs[0]).output_shape) == want["output_shape"]
    # The summary of the written spec states the same totals as Keras's.
    summary = specc_cli("summary", str(out), "-f", "json")
    assert json.loads(summary.stdout)["total_params"] == want["params"]


@pytest.mark.parametrize("kind", ["cnn", "rnn", "nested"])
def test_keras_archive_predicts_as_keras(kind, tmp_path):
    shutil.copy(FIXTURES / f"small_{kind}.keras", tmp_path / "m.keras")
    r = specc_cli("import", "m.keras", "-o", "m.yaml", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "m.weights.npz").exists()
    data = np.load(FIXTURES / f"small_{kind}.npz")
    model = specc.load(tmp_path / "m.yaml")
    model.load_weights(str(tmp_path / "m.weights.npz"))
    got = model.predict(data["x"], verbose=0)
    np.testing.assert_allclose(got, data["y"], rtol=1e-4, atol=1e-6 * np.abs(data["y"]).max())


def test_json_config_with_separate_weights(tmp_path):
    import zipfile

    with zipfile.ZipFile(FIXTURES / "small_cnn.keras") as z:
        (tmp_path / "config.json").write_bytes(z.read("config.json"))
    r = specc_cli("import", "config.json", "--weights", str(FIXTURES / "small_cnn.weights.h5"), "-o", "cnn.yaml",
                  "--weights-out", "w.npz", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    data = np.load(FIXTURES / "small_cnn.npz")
    model = specc.load(tmp_path / "cnn.yaml")
    model.load_weights(str(tmp_path / "w.npz"))
    np.testing.assert_allclose(model.predict(data["x"], verbose=0), data["y"], rtol=1e-4, atol=1e-7)


def edited(name: str, tmp_path: Path, edit) -> Path:
    """A recorded Applications config changed by `edit(layers)`, written back as JSON."""
    config = json.loads(gzip.open(FIXTURES / "apps" / f"{name}.json.gz", "rt").read())
    edit(config["config"]["layers"])
    path = tmp_path / f"{name}_edited.json"
    path.write_text(json.dumps(config))
    return path


def test_every_problem_is_listed_with_its_place_and_nothing_is_written(tmp_path):
    def edit(layers):
        layers[2]["config"]["kernel_regularizer"] = {"class_name": "L2", "config": {"l2": 0.01}}
        layers[3]["config"]["data_format"] = "channels_first"
        layers[5]["class_name"] = "FancyLayer"
        layers[7]["inbound_nodes"].append(layers[7]["inbound_nodes"][0])  # called twice: shared

    source = edited("ResNet50", tmp_path, edit)
    r = specc_cli("import", str(source), "-o", str(tmp_path / "out.yaml"))
    assert r.returncode == 1
    lines = [l for l in r.stderr.splitlines() if l.startswith(str(source))]
    assert len(lines) == 4, r.stderr
    assert "$.config.layers[2].config.kernel_regularizer: conv1_conv (Conv2D)" in lines[0]
    assert "$.config.layers[3].config.data_format" in lines[1] and "channels_first" in lines[1]
    assert "$.config.layers[5].class_name" in lines[2] and "'FancyLayer' has no specc equivalent" in lines[2]
    assert "$.config.layers[7].inbound_nodes" in lines[3] and "shared" in lines[3]
    assert "4 problems: nothing written" in r.stderr
    assert not (tmp_path / "out.yaml").exists()
    j = specc_cli("import", str(source), "-o", str(tmp_path / "out.yaml"), "--format", "json")
    problems = json.loads(j.stdout)
    assert [p["where"] for p in problems] == ["$.config.layers[2].config.kernel_regularizer",
                                               "$.config.layers[3].config.data_format",
                                               "$.config.layers[5].class_name", "$.config.layers[7].inbound_nodes"]


def test_convert_keeps_only_what_differs_from_defaults():
    config = json.loads(gzip.open(FIXTURES / "apps" / "VGG16.json.gz", "rt").read())
    spec, problems = convert(config)
    assert not problems
    conv = next(l for l in spec["model"]["layers"] if l["type"] == "Conv2D")
    assert conv == {"type": "Conv2D", "name": "block1_conv1", "filters": 64, "kernel_size": [3, 3],
                    "padding": "same", "activation": "relu", "inputs": conv["inputs"]}


@pytest.mark.parametrize("content, message", [
    (b"not json at all", "not a .keras archive or Keras JSON config"),
    (b'{"class_name": "Dense", "config": {}}', "expected a Keras Sequential or Functional model"),
    (b"[1, 2]", "not a Keras model"),
])
def test_sources_that_are_not_models(content, message, tmp_path):
    (tmp_path / "x.json").write_bytes(content)
    r = specc_cli("import", "x.json", cwd=tmp_path)
    assert r.returncode == 1 and message in r.stderr and "Traceback" not in r.stderr


def test_zip_without_config(tmp_path):
    import zipfile

    with zipfile.ZipFile(tmp_path / "x.keras", "w") as z:
        z.writestr("other.txt", "hi")
    r = specc_cli("import", "x.keras", cwd=tmp_path)
    assert r.returncode == 1 and "without config.json" in r.stderr


def test_usage_errors_and_no_overwrite(tmp_path):
    r = specc_cli("import", "missing.keras", cwd=tmp_path)
    assert r.returncode == 2 and "no such file" in r.stderr
    shutil.copy(FIXTURES / "small_nested.keras", tmp_path / "m.keras")
    (tmp_path / "m.yaml").write_text("mine")
    r = specc_cli("import", "m.keras", "-o", "m.yaml", cwd=tmp_path)
    assert r.returncode == 2 and "exists" in r.stderr and "--force" in r.stderr
    assert (tmp_path / "m.yaml").read_text() == "mine"
    r = specc_cli("import", "m.keras", "-o", "m.yaml", "--force", cwd=tmp_path)
    assert r.returncode == 0 and (tmp_path / "m.yaml").read_text() != "mine"
    # Default output: the model's name, in the working directory.
    r = specc_cli("import", "m.keras", cwd=tmp_path)
    assert r.returncode == 0 and (tmp_path / "small_nested.yaml").exists()


# --- with Keras installed: the Applications themselves, saved with weights and compared -----------------

keras_apps = ["ResNet50", "DenseNet121", "InceptionV3", "Xception", "VGG16", "NASNetMobile", "MobileNet",
              "MobileNetV2"]


@pytest.mark.parametrize("name", keras_apps)
def test_applications_predict_as_keras(name, tmp_path):
    if not os.environ.get("SPECC_TEST_KERAS_APPS"):
        pytest.skip("builds and runs full Keras Applications (minutes); set SPECC_TEST_KERAS_APPS=1")
    os.environ.setdefault("KERAS_BACKEND", "torch")
    pytest.importorskip("keras")
    sys.path.insert(0, str(FIXTURES))
    try:
        from record import build_app, perturb_batchnorm
    finally:
        sys.path.pop(0)
    import keras

    keras.utils.set_random_seed(0)
    model = build_app(name)
    perturb_batchnorm(model)
    model.save(tmp_path / "m.keras")
    x = np.random.default_rng(2).normal(size=(3, *APPS[name]["input_shape"])).astype("float32")
    want = model.predict(x, verbose=0)
    r = specc_cli("import", "m.keras", "-o", "m.yaml", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    ours = specc.load(tmp_path / "m.yaml")
    ours.load_weights(str(tmp_path / "m.weights.npz"))
    got = ours.predict(x, verbose=0)
    assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max()
