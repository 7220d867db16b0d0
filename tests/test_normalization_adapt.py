"""Normalization adapted to the data (Keras's `adapt`): through `specc train` (a spec's Normalization without
`mean`/`variance` adapts to the rows fit trains on) and through the API's `Normalization().adapt(x)`."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

import specc
from specc.data.prepare import load as load_data
from specc.spec import load_spec

SPEC = """specc: 1
name: adapt_iris
seed: 1
model:
  input: [4]
  layers:
    - {type: Normalization, name: norm}
    - {type: Dense, units: 8, activation: relu}
    - {type: Dense, units: 3, activation: softmax}
data:
  source: iris
compile:
  optimizer: adam
  loss: sparse_categorical_crossentropy
fit:
  batch_size: 16
  epochs: 2
  validation_split: 0.25
"""


def test_a_spec_adapts_to_the_rows_fit_trains_on(tmp_path):
    spec_file = tmp_path / "adapt.yaml"
    spec_file.write_text(SPEC)
    r = subprocess.run([sys.executable, "-m", "specc.cli", "train", str(spec_file), "--out", str(tmp_path / "runs"),
                        "-q"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    run = next((tmp_path / "runs" / "adapt_iris").iterdir())
    weights = np.load(run / "weights.final.npz")
    spec, errors = load_spec(str(spec_file))
    x = load_data(spec).x_train[0].astype(np.float64)
    rows = int(len(x) * 0.75)  # fit holds out the last quarter for validation
    np.testing.assert_allclose(weights["norm/mean"], x[:rows].mean(0), rtol=1e-6)
    np.testing.assert_allclose(weights["norm/variance"], x[:rows].var(0), rtol=1e-6)
    assert float(weights["norm/count"]) == rows
    # The statistics are not trained: the same after the run as adapted before it.
    assert not np.allclose(weights["norm/mean"], 0)


def test_api_adapt_then_the_model_standardises():
    rng = np.random.default_rng(0)
    x = rng.normal([3.0, -2.0, 10.0], [2.0, 0.5, 4.0], size=(300, 3)).astype("float32")
    norm = specc.layers.Normalization()
    norm.adapt(x)
    mean, var, count = norm.get_weights()
    np.testing.assert_allclose(mean, x.astype(np.float64).mean(0), rtol=1e-6)
    np.testing.assert_allclose(var, x.astype(np.float64).var(0), rtol=1e-5)
    assert count == 300
    model = specc.Sequential([specc.Input((3,)), norm])
    out = model.predict(x, verbose=0)
    np.testing.assert_allclose(out.mean(0), 0, atol=1e-5)
    np.testing.assert_allclose(out.std(0), 1, rtol=1e-4)


def test_api_adapt_keeps_the_axis():
    x = np.random.default_rng(1).normal(size=(20, 6, 4)).astype("float32") * np.arange(1, 5)
    norm = specc.layers.Normalization(axis=-1)
    norm.adapt(x)
    mean, var, count = norm.get_weights()
    assert mean.shape == (4,) and count == 20 * 6
    np.testing.assert_allclose(var, x.astype(np.float64).reshape(-1, 4).var(0), rtol=1e-5)
    whole = specc.layers.Normalization(axis=None)
    whole.adapt(x)
    assert whole.get_weights()[0].size == 1  # one mean over everything


def test_api_adapt_errors():
    with pytest.raises(ValueError, match="adapt\\(\\) computes them"):
        specc.layers.Normalization(mean=0.0, variance=1.0).adapt(np.ones((4, 2)))
    with pytest.raises(ValueError, match="batch of samples"):
        specc.layers.Normalization().adapt(np.ones(5))


def test_adapt_matches_keras():
    os.environ.setdefault("KERAS_BACKEND", "torch")
    keras = pytest.importorskip("keras")
    x = np.random.default_rng(2).normal(5, 3, size=(64, 7)).astype("float32")
    theirs = keras.layers.Normalization()
    theirs.adapt(x)
    ours = specc.layers.Normalization()
    ours.adapt(x)
    for a, b in zip(ours.get_weights()[:2], theirs.get_weights()[:2]):
        np.testing.assert_allclose(a, b, rtol=1e-5)
    np.testing.assert_allclose(specc.Sequential([specc.Input((7,)), ours]).predict(x, verbose=0),
                               np.asarray(theirs(x)), rtol=1e-4, atol=1e-5)
