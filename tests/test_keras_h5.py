"""Keras 3 `.weights.h5` files both ways (specc.interop.keras_h5): files Keras wrote (recorded fixtures, so
CI without Keras reads the same bytes) load into specc and predict as Keras did; files specc writes load into
Keras (where it is installed) and predict as specc does; damaged or mismatched files are clear errors."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("h5py")

import specc  # noqa: E402
from specc.interop import keras_h5  # noqa: E402
from specc.train.run import weight_keys  # noqa: E402

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "keras"
KINDS = ["cnn", "rnn", "nested"]


def imported(kind: str, tmp_path: Path):
    """The specc model of a recorded Keras archive (its spec through `specc import`), weights untouched."""
    spec = tmp_path / f"{kind}.yaml"
    if not spec.exists():
        shutil.copy(FIXTURES / f"small_{kind}.keras", tmp_path / f"{kind}.keras")
        r = subprocess.run([sys.executable, "-m", "specc.cli", "import", f"{kind}.keras", "-o", spec.name],
                           cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr
    return specc.load(spec)


@pytest.mark.parametrize("kind", KINDS)
def test_keras_written_weights_predict_as_keras(kind, tmp_path):
    model = imported(kind, tmp_path)
    keras_h5.load_weights(model, FIXTURES / f"small_{kind}.weights.h5")
    data = np.load(FIXTURES / f"small_{kind}.npz")
    np.testing.assert_allclose(model.predict(data["x"], verbose=0), data["y"], rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("kind", KINDS)
def test_round_trip_keeps_every_array(kind, tmp_path):
    model = imported(kind, tmp_path)
    rng = np.random.default_rng(5)
    new = [rng.normal(size=w.shape).astype(w.dtype) for w in model.get_weights()]
    model.set_weights(new)
    keras_h5.save_weights(model, tmp_path / "w.weights.h5")
    other = imported(kind, tmp_path)
    keras_h5.load_weights(other, tmp_path / "w.weights.h5")
    for a, b in zip(other.get_weights(), new):
        np.testing.assert_array_equal(a, b)


def test_layout_is_kerass(tmp_path):
    """Keys by class in container order, recurrent weights on the cell, nested models nested."""
    import h5py

    for kind in KINDS:
        model = imported(kind, tmp_path)
        keras_h5.save_weights(model, tmp_path / f"{kind}.weights.h5")
        with h5py.File(tmp_path / f"{kind}.weights.h5") as ours, h5py.File(FIXTURES / f"small_{kind}.weights.h5") as theirs:
            def datasets(f):
                found = {}
                f.visititems(lambda n, o: found.__setitem__(n, o.shape) if isinstance(o, h5py.Dataset) else None)
                return found
            assert datasets(ours) == datasets(theirs)


def test_layers_matched_by_stored_names_when_the_order_differs(tmp_path):
    """A file whose groups carry the layer names loads by name even when keys would pair layers otherwise."""
    import h5py

    model = imported("cnn", tmp_path)
    path = tmp_path / "w.weights.h5"
    keras_h5.save_weights(model, path)
    want = model.get_weights()
    with h5py.File(path, "r+") as f:  # swap two Dense groups' keys, names kept on their vars groups
        f.move("layers/dense_1", "layers/tmp")
        f.move("layers/dense", "layers/dense_1")
        f.move("layers/tmp", "layers/dense")
    model.set_weights([np.zeros_like(w) for w in want])
    keras_h5.load_weights(model, path)
    for a, b in zip(model.get_weights(), want):
        np.testing.assert_array_equal(a, b)


def test_errors_name_the_file_and_the_layer(tmp_path):
    model = imported("cnn", tmp_path)
    broken = tmp_path / "broken.weights.h5"
    broken.write_bytes((FIXTURES / "small_cnn.weights.h5").read_bytes()[:5000])
    with pytest.raises(ValueError, match="broken.weights.h5 is not a readable HDF5 file"):
        keras_h5.load_weights(model, broken)
    with pytest.raises(ValueError, match=r"small_rnn.weights.h5.*(no weights for layer|has shape|weights in the file)"):
        keras_h5.load_weights(model, FIXTURES / "small_rnn.weights.h5")
    before = model.get_weights()
    with pytest.raises(ValueError):
        keras_h5.load_weights(model, FIXTURES / "small_nested.weights.h5")
    for a, b in zip(model.get_weights(), before):  # a failed load changes nothing
        np.testing.assert_array_equal(a, b)


def test_write_is_atomic(tmp_path, monkeypatch):
    model = imported("nested", tmp_path)
    path = tmp_path / "w.weights.h5"
    path.write_bytes(b"previous")

    def fail(*a, **k):
        raise OSError(28, "No space left on device")

    import h5py

    monkeypatch.setattr(h5py.Group, "create_dataset", fail)
    with pytest.raises(OSError):
        keras_h5.save_weights(model, path)
    assert path.read_bytes() == b"previous"
    assert [p.name for p in tmp_path.iterdir() if ".tmp" in p.name] == []


@pytest.mark.parametrize("kind", KINDS)
def test_keras_loads_what_specc_writes(kind, tmp_path):
    os.environ.setdefault("KERAS_BACKEND", "torch")
    keras = pytest.importorskip("keras")
    model = imported(kind, tmp_path)
    rng = np.random.default_rng(11)
    # Positive values: valid BatchNormalization variances too.
    model.set_weights([rng.uniform(0.2, 1.0, size=w.shape).astype(w.dtype) for w in model.get_weights()])
    keras_h5.save_weights(model, tmp_path / "ours.weights.h5")
    theirs = keras.models.load_model(FIXTURES / f"small_{kind}.keras")
    theirs.load_weights(tmp_path / "ours.weights.h5")
    x = np.load(FIXTURES / f"small_{kind}.npz")["x"]
    np.testing.assert_allclose(theirs.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-4, atol=1e-6)


def test_specc_keys_follow_the_engine_order(tmp_path):
    model = imported("nested", tmp_path)
    keys = [k for ks in keras_h5.specc_keys(model._engine().graph).values() for k in ks]
    assert keys == weight_keys(model._engine())


def _functional_model():
    sys.path.insert(0, str(FIXTURES))
    try:
        from builders import nested_functional
    finally:
        sys.path.pop(0)
    specc.clear_session()
    return specc.Model(*nested_functional(specc), name="small_functional")


def test_nested_functional_model_reads_kerass_file_through_the_api(tmp_path):
    """A head over a residual Functional base, built with specc's API as with Keras's: Keras's file loads
    through `model.load_weights(path)` and predicts as Keras did."""
    model = _functional_model()
    model.load_weights(str(FIXTURES / "small_functional.weights.h5"))
    data = np.load(FIXTURES / "small_functional.npz")
    np.testing.assert_allclose(model.predict(data["x"], verbose=0), data["y"], rtol=1e-4, atol=1e-7)
    model.save_weights(str(tmp_path / "ours.weights.h5"))  # the API's save_weights writes Keras's layout
    import h5py

    def datasets(path):
        found = {}
        with h5py.File(path) as f:
            f.visititems(lambda n, o: found.__setitem__(n, o.shape) if isinstance(o, h5py.Dataset) else None)
        return found

    assert datasets(tmp_path / "ours.weights.h5") == datasets(FIXTURES / "small_functional.weights.h5")


def test_keras_loads_a_nested_functional_model_specc_wrote(tmp_path):
    os.environ.setdefault("KERAS_BACKEND", "torch")
    keras = pytest.importorskip("keras")
    model = _functional_model()
    rng = np.random.default_rng(4)
    model.set_weights([rng.uniform(0.2, 1.0, size=w.shape).astype(w.dtype) for w in model.get_weights()])
    model.save_weights(str(tmp_path / "ours.weights.h5"))
    theirs = keras.models.load_model(FIXTURES / "small_functional.keras")
    theirs.load_weights(tmp_path / "ours.weights.h5")
    x = np.load(FIXTURES / "small_functional.npz")["x"]
    np.testing.assert_allclose(theirs.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-4, atol=1e-6)
