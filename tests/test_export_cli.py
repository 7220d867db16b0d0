"""`specc export` through the command line: a trained run exported and run in ONNX Runtime gives `specc
predict`'s output on raw features (the run's normalisation is in the graph); existing outputs, bad weights,
layers without an ONNX form and unknown layer types are errors with the documented exit codes, and nothing
is written for them."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

REPO = Path(__file__).resolve().parent.parent
IRIS = REPO / "specs" / "iris_mlp.yaml"


def run(*args, cwd=None, timeout=300):
    env = dict(os.environ, PYTHONIOENCODING="utf-8", COLUMNS="100", NO_COLOR="1")
    proc = subprocess.run([sys.executable, "-m", "specc.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd or REPO, env=env, timeout=timeout)
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stdout + proc.stderr
    return proc


@pytest.fixture(scope="module")
def iris_run(tmp_path_factory):
    """A one-epoch run of iris_mlp (data.normalize: true, so it has a normalization.json)."""
    root = tmp_path_factory.mktemp("runs")
    proc = run("train", IRIS, "--set", "fit.epochs=1", "--quiet", "--out", root)
    assert proc.returncode == 0, proc.stderr
    (run_dir,) = (root / "iris_mlp").iterdir()
    assert (run_dir / "normalization.json").is_file()
    return run_dir


def test_exported_run_reproduces_specc_predict_on_raw_features(iris_run, tmp_path):
    out = tmp_path / "iris.onnx"
    proc = run("export", IRIS, "--weights", iris_run, "-o", out)
    assert proc.returncode == 0, proc.stderr
    assert "iris.onnx" in proc.stdout
    x = np.random.default_rng(0).normal(4.0, 2.0, (37, 4)).astype(np.float32)  # raw, unnormalised features
    np.savez(tmp_path / "x.npz", x=x)
    proc = run("predict", IRIS, "--weights", iris_run, "--input", tmp_path / "x.npz", "--out", tmp_path / "p.npz")
    assert proc.returncode == 0, proc.stderr
    expected = np.load(tmp_path / "p.npz")["species_probabilities"]
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["input_layer"]
    assert [o.name for o in session.get_outputs()] == ["species"]
    for batch in (1, 37):
        got = session.run(None, {"input_layer": x[:batch]})[0]
        np.testing.assert_allclose(got, expected[:batch], rtol=1e-5, atol=1e-7)
    meta = session.get_modelmeta().custom_metadata_map
    assert meta["name"] == "iris_mlp" and meta["normalization"] == "in the graph"


def test_weights_npz_exports_too(iris_run, tmp_path):
    out = tmp_path / "best.onnx"
    proc = run("export", IRIS, "--weights", iris_run / "weights.best.npz", "-o", out)
    assert proc.returncode == 0, proc.stderr
    assert out.is_file()


def test_existing_output_is_never_overwritten(iris_run, tmp_path):
    out = tmp_path / "model.onnx"
    out.write_bytes(b"keep me")
    proc = run("export", IRIS, "--weights", iris_run, "-o", out)
    assert proc.returncode == 2
    assert "exists" in proc.stderr and "model.onnx" in proc.stderr
    assert out.read_bytes() == b"keep me"


@pytest.mark.parametrize("weights, code, message", [
    ("missing.npz", 2, "no such file"),
    ("damaged.npz", 1, "--weights"),
    ("other.npz", 1, "does not match this model"),
])
def test_bad_weights_are_errors_and_write_nothing(tmp_path, weights, code, message):
    (tmp_path / "damaged.npz").write_bytes(b"PK\x03\x04 not really a zip")
    np.savez(tmp_path / "other.npz", **{"dense/kernel": np.zeros((4, 16), np.float32)})
    out = tmp_path / "model.onnx"
    proc = run("export", IRIS, "--weights", tmp_path / weights, "-o", out)
    assert proc.returncode == code, proc.stderr
    assert message in proc.stderr
    assert not out.exists()


def test_output_in_a_missing_folder_is_a_usage_error(iris_run, tmp_path):
    proc = run("export", IRIS, "--weights", iris_run, "-o", tmp_path / "nowhere" / "model.onnx")
    assert proc.returncode == 2 and "no such directory" in proc.stderr


def test_missing_spec_is_a_usage_error(tmp_path):
    proc = run("export", tmp_path / "nope.yaml", "--weights", tmp_path, "-o", tmp_path / "m.onnx")
    assert proc.returncode == 2 and "no such file" in proc.stderr


RNN_SPEC = textwrap.dedent("""\
    specc: 1
    name: rnn
    model:
      input: [5, 3]
      layers:
        - {type: SimpleRNN, units: 4, activation: selu}
        - {type: Dense, units: 1}
""")


def _weights_for(spec_path: Path, out: Path) -> None:
    import specc

    specc.load(str(spec_path)).save_weights(str(out))


def test_layer_without_onnx_form_is_a_positioned_error_and_writes_nothing(tmp_path):
    spec = tmp_path / "rnn.yaml"
    spec.write_text(RNN_SPEC, encoding="utf-8")
    _weights_for(spec, tmp_path / "w.npz")
    out = tmp_path / "rnn.onnx"
    proc = run("export", spec, "--weights", tmp_path / "w.npz", "-o", out)
    assert proc.returncode == 1
    assert f"{spec}:6:" in proc.stderr  # the layer's line in the spec
    assert "SimpleRNN 'simple_rnn'" in proc.stderr and "'selu'" in proc.stderr
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["rnn.yaml", "w.npz"]


def test_unknown_layer_type_is_a_positioned_error(tmp_path, monkeypatch, capsys):
    """A layer type the exporter's table lacks (as each new layer type is until its converter is added)."""
    from specc.cli import main
    from specc.export import to_onnx

    spec = tmp_path / "rnn.yaml"
    spec.write_text(RNN_SPEC, encoding="utf-8")
    _weights_for(spec, tmp_path / "w.npz")
    monkeypatch.delitem(to_onnx.CONVERTERS, "Dense")
    monkeypatch.setattr(sys, "argv", ["specc", "export", str(spec), "--weights", str(tmp_path / "w.npz"),
                                      "-o", str(tmp_path / "m.onnx")])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert f"{spec}:7:" in err and "Dense 'dense' cannot be exported" in err
    assert not (tmp_path / "m.onnx").exists()


ATTENTION_SPEC = textwrap.dedent("""\
    specc: 1
    name: attention
    model:
      inputs: {frames: [null, 3, 6]}
      layers:
        - {type: MultiHeadAttention, name: att, num_heads: 2, key_dim: 3, inputs: [frames, frames]}
        - {type: GlobalAveragePooling2D, name: pooled, inputs: att}
      outputs: pooled
""")


def test_attention_case_without_onnx_form_is_a_positioned_error_and_writes_nothing(tmp_path):
    """Attention over two position axes, one of unknown size: the exporter cannot flatten them, and says so."""
    spec = tmp_path / "attention.yaml"
    spec.write_text(ATTENTION_SPEC, encoding="utf-8")
    _weights_for(spec, tmp_path / "w.npz")
    out = tmp_path / "attention.onnx"
    proc = run("export", spec, "--weights", tmp_path / "w.npz", "-o", out)
    assert proc.returncode == 1, proc.stderr
    assert f"{spec}:6:" in proc.stderr
    assert "MultiHeadAttention 'att'" in proc.stderr and "position axes" in proc.stderr
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["attention.yaml", "w.npz"]
