"""Whole-model saving (`model.save("m.specc")`, `specc.models.load_model`, `specc.saving`), as Keras 3's
`model.save` / `keras.models.load_model`: the loaded model predicts the same, keeps its compile settings, and
continues training exactly as the saved one would have (optimizer moments and iteration counter, shuffling
and dropout generators). Every damaged file is a ValueError naming the file; suffixes follow Keras 3's rule
(one native suffix, `.specc` here). get_config / from_config round trips."""

from __future__ import annotations

import json
import sys
import zipfile

import numpy as np
import pytest

import specc
from specc import layers
from specc.spec import load_spec_text

from .test_guide_examples import summary_of


@pytest.fixture(autouse=True)
def fresh_session():
    specc.clear_session()
    specc.set_random_seed(0)


def data(n=40, features=6, classes=3, seed=1):
    rng = np.random.default_rng(seed)
    return rng.random((n, features)).astype(np.float32), rng.integers(0, classes, n)


def mlp():
    model = specc.Sequential([specc.Input(shape=(6,)), layers.Dense(8, activation="relu"), layers.Dense(3)])
    model.compile(optimizer="adam", loss=specc.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    return model


def dropout_net():
    x = specc.Input(shape=(6,), name="features")
    h = layers.Dense(8, activation="relu")(x)
    h = layers.BatchNormalization()(h)
    h = layers.Dropout(0.4)(h)
    out = layers.Dense(3, activation="softmax", name="label")(layers.Concatenate()([h, x]))
    model = specc.Model(x, out, name="drop")
    model.compile(optimizer=specc.optimizers.Adam(learning_rate=0.01), loss="sparse_categorical_crossentropy",
                  metrics=[specc.metrics.SparseCategoricalAccuracy(name="acc")])
    return model


def scheduled_sgd():
    model = specc.Sequential([specc.Input(shape=(6,)), layers.Dense(5, activation="tanh"), layers.Dense(3)])
    schedule = specc.optimizers.schedules.ExponentialDecay(0.1, 3, 0.5)
    model.compile(optimizer=specc.optimizers.SGD(learning_rate=schedule, momentum=0.9, nesterov=True, clipnorm=1.0),
                  loss=specc.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


@pytest.mark.parametrize("build", [mlp, dropout_net, scheduled_sgd], ids=["adam_mlp", "dropout_shuffle", "schedule"])
def test_fit_2_epochs_equals_fit_1_save_load_fit_1(build, tmp_path):
    """Keras's promise for a saved model, bit for bit: the optimizer state and the generators come back."""
    x, y = data()
    specc.set_random_seed(0)
    straight = build()
    h2 = straight.fit(x, y, epochs=2, batch_size=8, verbose=0)
    specc.clear_session()
    specc.set_random_seed(0)
    first = build()
    h1 = first.fit(x, y, epochs=1, batch_size=8, verbose=0)
    path = tmp_path / "m.specc"
    first.save(path)
    loaded = specc.models.load_model(path)
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), first.predict(x, verbose=0))
    assert loaded.metrics_names == first.metrics_names
    again = loaded.fit(x, y, epochs=1, batch_size=8, verbose=0)
    assert h1.history["loss"] + again.history["loss"] == h2.history["loss"]
    for a, b in zip(loaded.get_weights(), straight.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_without_the_training_state_the_continuation_differs(tmp_path):
    """The bit-for-bit test above can fail: a fresh optimizer (compile=False, then compile) moves elsewhere."""
    x, y = data()
    straight = mlp()
    straight.fit(x, y, epochs=2, batch_size=8, verbose=0)
    specc.clear_session()
    specc.set_random_seed(0)
    first = mlp()
    first.fit(x, y, epochs=1, batch_size=8, verbose=0)
    first.save(tmp_path / "m.specc")
    loaded = specc.saving.load_model(tmp_path / "m.specc", compile=False)
    with pytest.raises(RuntimeError, match="compile"):
        loaded.fit(x, y, verbose=0)
    loaded.compile(optimizer="adam", loss=specc.losses.SparseCategoricalCrossentropy(from_logits=True))
    loaded.fit(x, y, epochs=1, batch_size=8, verbose=0)
    assert any(not np.array_equal(a, b) for a, b in zip(loaded.get_weights(), straight.get_weights()))


def test_compile_settings_come_back(tmp_path):
    a = specc.Input(shape=(4,), name="a")
    h = layers.Dense(5, activation="relu")(a)
    model = specc.Model(a, [layers.Dense(3, name="cls")(h), layers.Dense(1, name="reg")(h)], name="two_heads")
    model.compile(optimizer=specc.optimizers.SGD(learning_rate=0.05, momentum=0.9),
                  loss={"cls": specc.losses.CategoricalCrossentropy(from_logits=True), "reg": specc.losses.Huber(0.5)},
                  metrics={"cls": ["acc"], "reg": [specc.metrics.MeanAbsoluteError(name="err")]},
                  loss_weights=[1.0, 0.3])
    model.save(tmp_path / "two.specc")
    loaded = specc.models.load_model(tmp_path / "two.specc")
    assert loaded.name == "two_heads"
    assert loaded.get_compile_config() == model.get_compile_config()
    assert loaded.metrics_names == model.metrics_names == \
        ["loss", "cls_loss", "reg_loss", "cls_acc", "reg_err"]
    rng = np.random.default_rng(0)
    x, y = rng.random((6, 4)), [np.eye(3)[rng.integers(0, 3, 6)], rng.random((6, 1))]
    assert loaded.evaluate(x, y, verbose=0) == model.evaluate(x, y, verbose=0)


def test_optimizer_state_for_other_weights_is_skipped_with_a_warning(tmp_path):
    """Keras 3 skips optimizer variables that do not match the loaded model's; so does specc."""
    x, y = data()
    model = mlp()
    model.fit(x, y, epochs=1, verbose=0)
    with pytest.warns(UserWarning, match="compile"):
        model.layers[0].trainable = False  # after compile: the saved optimizer covers both layers
    model.save(tmp_path / "m.specc")
    with pytest.warns(UserWarning, match="optimizer and training-loop state were not restored"):
        loaded = specc.models.load_model(tmp_path / "m.specc")
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))
    before = loaded.layers[0].get_weights()
    loaded.fit(x, y, epochs=1, verbose=0)
    np.testing.assert_array_equal(loaded.layers[0].get_weights()[0], before[0])  # frozen, as saved


def test_an_uncompiled_model_and_the_public_names(tmp_path):
    model = specc.Sequential([specc.Input(shape=(3,)), layers.Dense(2)], name="plain")
    specc.saving.save_model(model, tmp_path / "plain.specc")
    assert specc.models.load_model is specc.saving.load_model
    loaded = specc.models.load_model(str(tmp_path / "plain.specc"))
    assert isinstance(loaded, specc.models.Sequential) and loaded.get_compile_config() is None
    assert summary_of(loaded) == summary_of(model)
    np.testing.assert_array_equal(loaded(np.ones((2, 3))), model(np.ones((2, 3))))


def test_the_archive_is_data_and_its_spec_validates(tmp_path):
    model = dropout_net()
    model.fit(*data(), epochs=1, verbose=0)
    model.save(tmp_path / "m.specc")
    with zipfile.ZipFile(tmp_path / "m.specc") as archive:
        names = archive.namelist()
        assert all(n.endswith((".json", ".yaml", ".npy")) for n in names)
        assert "optimizer/iterations.npy" in names and "training.json" in names
        spec, errors = load_spec_text(archive.read("config.yaml"), "config.yaml")
    assert errors == []
    assert summary_of(specc.load(spec)) == summary_of(model)


# --- files that are not what they should be ---------------------------------------------------------------------


@pytest.fixture
def saved(tmp_path):
    model = mlp()
    model.fit(*data(), epochs=1, verbose=0)
    path = tmp_path / "m.specc"
    model.save(path)
    return path


def _rewrite(path, change):
    """The archive with each member passed through change(name, data) (None drops it)."""
    with zipfile.ZipFile(path) as archive:
        members = [(n, archive.read(n)) for n in archive.namelist()]
    with zipfile.ZipFile(path, "w") as archive:
        for name, content in members:
            content = change(name, content)
            if content is not None:
                archive.writestr(name, content)


def test_a_tampered_member_is_refused(saved):
    def change(name, content):
        if name == "weights/00001.npy":
            return content[:-4] + np.float32(7).tobytes()
        return content

    _rewrite(saved, change)
    with pytest.raises(ValueError, match=rf"cannot load {saved}: member 'weights/00001.npy' does not match its "
                                         r"checksum: the file was modified or is damaged"):
        specc.models.load_model(saved)


def test_a_truncated_file_is_refused(saved):
    saved.write_bytes(saved.read_bytes()[:-200])
    with pytest.raises(ValueError, match=rf"cannot load {saved}: it is truncated or damaged"):
        specc.models.load_model(saved)


def test_files_that_are_not_specc_models(tmp_path, saved):
    text = tmp_path / "notes.specc"
    text.write_text("specc: 1\n")
    with pytest.raises(ValueError, match=rf"cannot load {text}: it is not a \.specc model file .* a text file"):
        specc.models.load_model(text)
    empty = tmp_path / "empty.specc"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match="an empty file"):
        specc.models.load_model(empty)
    with pytest.raises(ValueError, match="it is a directory"):
        specc.models.load_model(tmp_path)
    with pytest.raises(FileNotFoundError, match="no model file at"):
        specc.models.load_model(tmp_path / "missing.specc")
    other_zip = tmp_path / "other.specc"
    with zipfile.ZipFile(other_zip, "w") as archive:
        archive.writestr("config.json", "{}")
        archive.writestr("metadata.json", "{}")
        archive.writestr("model.weights.h5", b"")
    with pytest.raises(ValueError, match="a Keras 3 .keras archive; specc loads its own .specc files"):
        specc.models.load_model(other_zip)
    with pytest.raises(ValueError, match="reads '.specc' files written by model.save"):
        specc.models.load_model(tmp_path / "model.keras")


def test_a_newer_format_version_is_refused(saved):
    def change(name, content):
        if name == "specc-model.json":
            manifest = json.loads(content)
            manifest["version"] = 2
            return json.dumps(manifest)
        return content

    _rewrite(saved, change)
    with pytest.raises(ValueError, match=r"it is in a newer format version \(2\); this specc .* reads version 1"):
        specc.models.load_model(saved)


def test_missing_and_unlisted_members_are_refused(saved, tmp_path):
    _rewrite(saved, lambda name, content: None if name == "optimizer/velocity.npy" else content)
    with pytest.raises(ValueError, match="member 'optimizer/velocity.npy' is missing"):
        specc.models.load_model(saved)
    model = mlp()
    path = tmp_path / "extra.specc"
    model.save(path)
    with zipfile.ZipFile(path, "a") as archive:
        archive.writestr("payload.pkl", b"\x80\x04")
    with pytest.raises(ValueError, match="member 'payload.pkl', which its manifest does not list"):
        specc.models.load_model(path)


def test_arrays_of_objects_are_never_unpickled(saved):
    import hashlib
    import io

    buf = io.BytesIO()
    np.save(buf, np.array([{"x": 1}], dtype=object), allow_pickle=True)
    evil = buf.getvalue()

    def change(name, content):
        if name == "weights/00000.npy":
            return evil
        if name == "specc-model.json":  # a consistent manifest: only the array check is left to catch it
            manifest = json.loads(content)
            manifest["members"]["weights/00000.npy"] = hashlib.sha256(evil).hexdigest()
            return json.dumps(manifest)
        return content

    _rewrite(saved, change)
    with pytest.raises(ValueError, match="member 'weights/00000.npy' is not a numeric .npy array"):
        specc.models.load_model(saved)


# --- suffixes and overwrite (Keras 3: `.keras` only, overwrite=True by default) ----------------------------------


def test_suffix_rule_and_pointers(tmp_path):
    model = mlp()
    with pytest.raises(ValueError, match=r"specc does not write Keras's \.keras format; save the whole model to a "
                                         r"'\.specc' file .* model\.save_weights\('model\.weights\.h5'\)"):
        model.save(tmp_path / "m.keras")
    with pytest.raises(ValueError, match="legacy HDF5 whole-model files are not supported"):
        model.save(tmp_path / "m.h5")
    with pytest.raises(ValueError, match=r"is a Keras weights file name; .* use model\.save_weights"):
        model.save(tmp_path / "m.weights.h5")
    with pytest.raises(ValueError, match="Invalid filepath extension for saving"):
        model.save(tmp_path / "m.zip")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match="not yet been built"):
        specc.Sequential([layers.Dense(2)]).save(tmp_path / "unbuilt.specc")


def test_overwrite(tmp_path):
    path = tmp_path / "m.specc"
    first = mlp()
    first.save(path)
    before = path.read_bytes()
    second = mlp()
    with pytest.raises(FileExistsError, match="exists and overwrite=False"):
        second.save(path, overwrite=False)
    assert path.read_bytes() == before
    second.save(path)  # Keras's default, overwrite=True
    np.testing.assert_array_equal(specc.models.load_model(path).get_weights()[0], second.get_weights()[0])


def test_load_weights_from_a_saved_model(saved):
    other = mlp()
    other.load_weights(saved)
    np.testing.assert_array_equal(other.get_weights()[0], specc.models.load_model(saved).get_weights()[0])
    small = specc.Sequential([specc.Input(shape=(6,)), layers.Dense(3)])
    with pytest.raises(ValueError, match="it holds 4 weights, model 'sequential_.' has 2"):
        small.load_weights(saved)


def test_keras_weight_files_without_the_interop_module(tmp_path, monkeypatch):
    """`.weights.h5` goes to specc.interop.keras_h5; a specc without that module says so."""
    monkeypatch.setitem(sys.modules, "specc.interop", None)  # as if the package were absent
    monkeypatch.delitem(sys.modules, "specc.interop.keras_h5", raising=False)
    with pytest.raises(NotImplementedError, match="need specc.interop.keras_h5"):
        mlp().save_weights(tmp_path / "m.weights.h5")
    with pytest.raises(NotImplementedError, match="need specc.interop.keras_h5"):
        mlp().load_weights(_touch(tmp_path / "k.weights.h5"))


def _touch(path):
    path.write_bytes(b"")
    return path


# --- get_config / from_config --------------------------------------------------------------------------------


def test_sequential_from_config_round_trip():
    base = specc.Sequential([layers.Dense(4, activation="relu"), layers.Dense(2)], name="block")
    model = specc.Sequential([specc.Input(shape=(3,), name="x"), base, layers.Dropout(0.2),
                              layers.Dense(1, name="out")], name="seq")
    config = model.get_config()
    assert config["name"] == "seq" and config["trainable"] is True
    clone = specc.Sequential.from_config(config)
    assert type(clone) is specc.Sequential
    assert summary_of(clone, expand_nested=True) == summary_of(model, expand_nested=True)
    assert [layer.name for layer in clone.layers] == [layer.name for layer in model.layers]
    assert clone.get_config() == config
    assert [layer.get_config() for layer in clone.layers[1:]] == [layer.get_config() for layer in model.layers[1:]]
    with pytest.raises(ValueError, match="Sequential.from_config takes a Sequential model's config"):
        x = specc.Input(shape=(2,))
        specc.Sequential.from_config(specc.Model(x, layers.Dense(1)(x)).get_config())


def test_unbuilt_sequential_from_config():
    model = specc.Sequential([layers.Dense(4), layers.Dense(2, name="head")], name="later")
    clone = specc.Sequential.from_config(model.get_config())
    assert not clone.built and [layer.name for layer in clone.layers] == ["dense", "head"]
    clone.build((None, 5))
    assert clone.count_params() == 5 * 4 + 4 + 4 * 2 + 2


def test_functional_from_config_round_trip():
    image = specc.Input(shape=(8, 8, 1), name="image")
    meta = specc.Input(shape=(3,), name="meta")
    h = layers.GlobalMaxPooling2D()(layers.Conv2D(4, 3, padding="same", activation="relu")(image))
    merged = layers.Concatenate()([h, layers.Dense(4)(meta)])
    model = specc.Model([image, meta], [layers.Dense(2, name="label")(merged), layers.Dense(1, name="score")(merged)],
                        name="two_in")
    config = model.get_config()
    clone = specc.Model.from_config(config)
    assert summary_of(clone) == summary_of(model)
    assert clone.get_config() == config
    assert [layer.name for layer in clone.layers] == [layer.name for layer in model.layers]
    # weights are not part of a config: the clone has its own, which set_weights makes equal
    assert any(not np.array_equal(a, b) for a, b in zip(clone.get_weights(), model.get_weights()))
    clone.set_weights(model.get_weights())
    x = [np.random.default_rng(0).random((2, 8, 8, 1)), np.random.default_rng(1).random((2, 3))]
    for a, b in zip(clone.predict(x, verbose=0), model.predict(x, verbose=0)):
        np.testing.assert_array_equal(a, b)


def test_from_config_errors_say_where():
    with pytest.raises(ValueError, match=r"config\.layers\[1\]: unknown layer type 'Dnese'"):
        specc.Sequential.from_config({"input": {"shape": [3]}, "layers": [{"type": "Dense", "units": 2},
                                                                         {"type": "Dnese", "units": 2}]})
    with pytest.raises(ValueError, match=r"config\.layers\[0\]: Dense: units"):
        specc.Sequential.from_config({"layers": [{"type": "Dense", "units": -2}]})
    with pytest.raises(ValueError, match=r"config\.layers\[0\]: unknown input\(s\) \['nope'\]"):
        specc.Model.from_config({"inputs": {"x": [3]}, "layers": [{"type": "Dense", "units": 2, "inputs": "nope"}],
                                 "outputs": ["dense"]})
