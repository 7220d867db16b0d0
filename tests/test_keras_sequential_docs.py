"""A check list of what the Keras Sequential documents say, one test per documented behaviour, grouped by
document:

  internals  "5. The Sequential class" (the class's internals: /work/shared/seeds/sequential-class-internals.txt)
  reference  tf.keras.Sequential's API reference (seeds/sequential-api-reference.txt)
  guide      "The Sequential model" guide, https://keras.io/guides/sequential_model/ (seeds/sequential-model-guide.txt)
  api        Keras 3's Models API, https://keras.io/api/models/ (the Model class, the Sequential class, Model
             training APIs, saving & serialization)

A behaviour specc does not have yet is an expected failure naming what is missing (pytest.xfail at run time,
so the test passes once it lands). `pytest tests/test_keras_sequential_docs.py -rx` lists them.
"""

from __future__ import annotations

import numpy as np
import pytest

import specc
from specc import layers


@pytest.fixture(autouse=True)
def fresh_session():
    specc.clear_session()
    specc.set_random_seed(0)


def missing(what: str) -> None:
    pytest.xfail(f"not in specc yet: {what}")


def summary_text(model, **kwargs) -> str:
    out: list[str] = []
    model.summary(print_fn=out.append, **kwargs)
    return "\n".join(out)


def row_shapes(model) -> list[str]:
    return [line.split("│")[2].strip() for line in summary_text(model).splitlines() if line.startswith("│")]


def xy(n=16, features=4, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, features)).astype(np.float32), rng.integers(0, classes, n)


def three_dense(**kw):
    return specc.Sequential([layers.Dense(2, activation="relu"), layers.Dense(3, activation="relu"),
                             layers.Dense(4)], **kw)


# === internals: "5. The Sequential class" ====================================================================


def test_internals_sequential_is_a_functional_model():
    model = specc.Sequential([specc.Input(shape=(3,)), layers.Dense(2)])
    assert isinstance(model, specc.Model)
    assert model.inputs[0].shape == (None, 3) and model.outputs[0].shape == (None, 2)


def test_internals_a_single_chain_without_branches():
    x = specc.Input(shape=(3,))
    two = specc.Model(x, [layers.Dense(1)(x), layers.Dense(1)(x)])
    with pytest.raises(ValueError):
        specc.Sequential([specc.Input(shape=(3,)), two])


def test_internals_add_appends_a_layer():
    model = specc.Sequential()
    model.add(specc.Input(shape=(10,)))
    model.add(layers.Dense(units=10, activation="relu"))
    assert len(model.layers) == 1 and model.output_shape == (None, 10)


def test_internals_pop_removes_the_last_layer():
    model = specc.Sequential([specc.Input(shape=(10,)), layers.Dense(4), layers.Dense(2)])
    model.pop()
    assert len(model.layers) == 1 and model.output_shape == (None, 4)


def test_internals_known_input_shape_builds_the_graph_at_once():
    model = specc.Sequential()
    model.add(specc.Input(shape=(10,)))
    model.add(layers.Dense(units=10, activation="relu"))
    assert model.built and [w.shape for w in model.weights] == [(10, 10), (10,)]


def test_internals_unknown_input_shape_defers_until_the_first_batch():
    model = specc.Sequential()
    model.add(layers.Dense(units=10, activation="relu"))
    assert not model.built
    model(np.ones((2, 7), np.float32))
    assert model.built and model.weights[0].shape == (7, 10)


# === reference: tf.keras.Sequential's API reference ==========================================================


def test_reference_input_shape_argument_on_the_first_layer():
    model = specc.Sequential()
    model.add(layers.Dense(8, input_shape=(16,)))
    model.add(layers.Dense(4))
    assert model.output_shape == (None, 4)


def test_reference_same_as_starting_with_input():
    a = specc.Sequential()
    a.add(layers.Dense(8, input_shape=(16,)))
    b = specc.Sequential()
    b.add(specc.Input(shape=(16,)))
    b.add(layers.Dense(8))
    assert [w.shape for w in a.weights] == [w.shape for w in b.weights] == [(16, 8), (8,)]


def test_reference_no_weights_until_first_training_or_evaluation_call():
    model = specc.Sequential()
    model.add(layers.Dense(8))
    model.add(layers.Dense(4))
    with pytest.raises(ValueError, match="have not yet been created"):
        _ = model.weights


def test_reference_built_continuously_as_layers_are_added():
    model = specc.Sequential()
    model.add(layers.Dense(8, input_shape=(16,)))
    assert len(model.weights) == 2
    model.add(layers.Dense(4))
    assert len(model.weights) == 4


def test_reference_build_with_batch_input_shape():
    model = specc.Sequential()
    model.add(layers.Dense(8))
    model.add(layers.Dense(4))
    model.build((None, 16))
    assert len(model.weights) == 4


def test_reference_first_fit_builds_the_model():
    model = specc.Sequential()
    model.add(layers.Dense(8))
    model.add(layers.Dense(1))
    model.compile(optimizer="sgd", loss="mse")
    x = np.random.default_rng(0).random((64, 5)).astype(np.float32)
    model.fit(x, x[:, :1], batch_size=32, epochs=2, verbose=0)
    assert len(model.weights) == 4 and model.weights[0].shape == (5, 8)


def test_reference_constructor_layers_and_name():
    model = specc.Sequential(layers=[layers.Dense(2)], name="my_model")
    assert model.name == "my_model" and len(model.layers) == 1


def test_reference_metrics_names_after_fit():
    inputs = specc.Input(shape=(3,))
    outputs = layers.Dense(2)(inputs)
    model = specc.Model(inputs=inputs, outputs=outputs)
    model.compile(optimizer="Adam", loss="mse", metrics=["mae"])
    x = np.random.default_rng(0).random((2, 3))
    y = np.random.default_rng(1).integers(0, 2, (2, 2))
    model.fit(x, y, verbose=0)
    assert model.metrics_names == ["loss", "mae"]


def test_reference_metrics_names_of_a_shared_layer_with_two_outputs():
    inputs = specc.Input(shape=(3,))
    d = layers.Dense(2, name="out")
    model = specc.Model(inputs=inputs, outputs=[d(inputs), d(inputs)])
    model.compile(optimizer="Adam", loss="mse", metrics=["mae", "acc"])
    x = np.random.default_rng(0).random((2, 3))
    y = np.random.default_rng(1).integers(0, 2, (2, 2))
    model.fit(x, (y, y), verbose=0)
    assert model.metrics_names == ["loss", "out_loss", "out_1_loss", "out_mae", "out_acc", "out_1_mae", "out_1_acc"]


def test_reference_run_eagerly_is_a_settable_attribute():
    model = specc.Sequential([specc.Input(shape=(3,)), layers.Dense(2)])
    assert model.run_eagerly is False
    model.run_eagerly = True
    np.testing.assert_allclose(model(np.ones((1, 3))), model.predict(np.ones((1, 3)), verbose=0), rtol=1e-6)


def test_reference_add_type_error_for_a_non_layer():
    with pytest.raises(TypeError):
        specc.Sequential().add("dense")


def test_reference_add_value_error_for_a_layer_with_several_outputs():
    x = specc.Input(shape=(3,))
    two = specc.Model(x, [layers.Dense(1)(x), layers.Dense(1)(x)])
    with pytest.raises(ValueError):
        specc.Sequential([specc.Input(shape=(3,))]).add(two)


def test_reference_add_value_error_for_a_layer_connected_elsewhere():
    x = specc.Input(shape=(3,))
    dense = layers.Dense(2)
    dense(x)
    layers.Dense(2)(dense.output)
    with pytest.raises(ValueError):
        specc.Sequential([specc.Input(shape=(5,))]).add(specc.Model(x, dense.output))


def test_reference_compile_optimizer_name_or_instance():
    x, y = xy()
    for optimizer in ("sgd", specc.optimizers.Adam(learning_rate=1e-3)):
        model = specc.Sequential([specc.Input(shape=(4,)), layers.Dense(3, activation="softmax")])
        model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy")
        model.fit(x, y, verbose=0)


def test_reference_compile_loss_name_or_loss_instance():
    x, y = xy()
    model = specc.Sequential([specc.Input(shape=(4,)), layers.Dense(3)])
    model.compile(loss=specc.losses.SparseCategoricalCrossentropy(from_logits=True))
    assert model.evaluate(x, y, verbose=0) > 0


def test_reference_compile_loss_as_an_objective_function():
    model = specc.Sequential([specc.Input(shape=(4,)), layers.Dense(3)])
    try:
        model.compile(loss=lambda y_true, y_pred: np.mean((y_true - y_pred) ** 2))
    except TypeError as exc:
        assert "gradient" in str(exc)
        missing("a loss given as an arbitrary Python function (specc needs its gradient; a TypeError says so "
                "and points at weighted sums of built-in losses)")


def test_reference_loss_reduction_none_gives_per_sample_values():
    t, p = np.zeros((4, 3)), np.ones((4, 3))
    assert specc.losses.MeanSquaredError(reduction="none")(t, p).shape == (4,)


def test_reference_compile_a_loss_per_output_by_dict_or_list():
    x = specc.Input(shape=(3,))
    model = specc.Model(x, [layers.Dense(2, name="a")(x), layers.Dense(1, name="b")(x)])
    data = np.ones((4, 3))
    for loss in ({"a": "mse", "b": "mae"}, ["mse", "mae"]):
        model.compile(loss=loss)
        logs = model.evaluate(data, [np.zeros((4, 2)), np.zeros((4, 1))], verbose=0, return_dict=True)
        assert logs["loss"] == pytest.approx(logs["a_loss"] + logs["b_loss"])


def test_reference_compile_metric_name_function_or_instance():
    x, y = xy()

    def wrong(y_true, y_pred):
        return (np.argmax(y_pred, -1) != y_true.reshape(-1)).astype(float)

    model = specc.Sequential([specc.Input(shape=(4,)), layers.Dense(3, activation="softmax")])
    model.compile(loss="sparse_categorical_crossentropy",
                  metrics=["accuracy", wrong, specc.metrics.SparseTopKCategoricalAccuracy(name="top")])
    logs = model.evaluate(x, y, verbose=0, return_dict=True)
    assert logs["accuracy"] + logs["wrong"] == pytest.approx(1.0) and "top" in logs


def test_reference_metrics_per_output_by_dict_or_list_of_lists():
    x = specc.Input(shape=(3,))
    model = specc.Model(x, [layers.Dense(2, name="a")(x), layers.Dense(1, name="b")(x)])
    for metrics in ({"a": "mae", "b": ["mae", "mse"]}, [["mae"], ["mae", "mse"]]):
        model.compile(loss="mse", metrics=metrics)
        assert model.metrics_names == ["loss", "a_loss", "b_loss", "a_mae", "b_mae", "b_mse"]


@pytest.mark.parametrize("units, targets, expected", [(1, "binary", "binary_accuracy"),
                                                      (3, "sparse", "sparse_categorical_accuracy"),
                                                      (3, "onehot", "categorical_accuracy")])
def test_reference_accuracy_string_becomes_the_right_accuracy(units, targets, expected):
    x, y = xy(classes=3 if units == 3 else 2)
    target = {"binary": y[:, None].astype(np.float32), "sparse": y, "onehot": np.eye(3)[y]}[targets]
    model = specc.Sequential([specc.Input(shape=(4,)), layers.Dense(units, activation="softmax" if units > 1 else
                                                                     "sigmoid")])
    model.compile(loss="mse" if targets != "sparse" else "sparse_categorical_crossentropy", metrics=["acc", expected])
    logs = model.evaluate(x, target, verbose=0, return_dict=True)
    assert logs["acc"] == logs[expected]


def test_reference_crossentropy_and_ce_strings_convert_likewise():
    x, y = xy()
    model = specc.Sequential([specc.Input(shape=(4,)), layers.Dense(3, activation="softmax")])
    model.compile(loss="sparse_categorical_crossentropy", metrics=["ce", "crossentropy"])
    logs = model.evaluate(x, y, verbose=0, return_dict=True)
    assert logs["ce"] == pytest.approx(logs["loss"]) and logs["crossentropy"] == pytest.approx(logs["loss"])


def test_reference_loss_weights_list_or_dict_weight_the_total():
    x = specc.Input(shape=(3,))
    model = specc.Model(x, [layers.Dense(2, name="a")(x), layers.Dense(1, name="b")(x)])
    data, targets = np.ones((4, 3)), [np.zeros((4, 2)), np.zeros((4, 1))]
    for weights in ([0.5, 2.0], {"a": 0.5, "b": 2.0}):
        model.compile(loss="mse", loss_weights=weights)
        logs = model.evaluate(data, targets, verbose=0, return_dict=True)
        assert logs["loss"] == pytest.approx(0.5 * logs["a_loss"] + 2.0 * logs["b_loss"])


# === api: Keras 3's Models API (keras.io/api/models) =========================================================


def test_api_model_summary_print_fn_expand_nested_show_trainable():
    inner = specc.Sequential([specc.Input(shape=(4,)), layers.Dense(3)], name="inner")
    inner.trainable = False
    model = specc.Sequential([inner, layers.Dense(2)])
    text = summary_text(model, expand_nested=True, show_trainable=True)
    assert "dense (Dense)" in text and "Trainable" in text


def test_api_model_summary_line_length_and_positions():
    model = specc.Sequential([specc.Input(shape=(4,)), layers.Dense(3)])
    lines = [line for line in summary_text(model, line_length=70).splitlines() if line.startswith("│")]
    assert {len(line) for line in lines} == {70}
    assert summary_text(model, positions=[0.5, 0.8, 1.0]) != summary_text(model)


def test_api_model_summary_layer_range():
    model = specc.Sequential([specc.Input(shape=(4,)), layers.Dense(3, name="a"), layers.Dense(3, name="b"),
                              layers.Dense(3, name="c")])
    rows = [line.split()[1] for line in summary_text(model, layer_range=["b", "c"]).splitlines()
            if line.startswith("│")]
    assert rows == ["b", "c"]


def test_api_get_layer_by_name_or_index():
    model = specc.Sequential([specc.Input(shape=(4,)), layers.Dense(3, name="a"), layers.Dense(2, name="b")])
    assert model.get_layer("b") is model.layers[1] is model.get_layer(index=1)
    with pytest.raises(ValueError):
        model.get_layer("zz")


def test_api_sequential_trainable_argument():
    model = specc.Sequential([specc.Input(shape=(4,)), layers.Dense(3)], trainable=False)
    assert model.trainable_weights == [] and len(model.non_trainable_weights) == 2


def test_api_pop_rebuilds_the_model():
    model = specc.Sequential([specc.Input(shape=(4,)), layers.Dense(3), layers.Dense(2)])
    popped = model.pop()
    assert isinstance(popped, layers.Dense) and model.output_shape == (None, 3)


def test_api_compile_weighted_metrics():
    x, y = xy()
    model = specc.Sequential([specc.Input(shape=(4,)), layers.Dense(3, activation="softmax")])
    model.compile(loss="sparse_categorical_crossentropy", metrics=["accuracy"], weighted_metrics=["accuracy"])
    logs = model.evaluate(x, y, sample_weight=np.arange(len(x)), verbose=0, return_dict=True)
    assert set(logs) == {"loss", "accuracy", "weighted_accuracy"}


def test_api_compile_jit_compile_and_steps_per_execution():
    model = specc.Sequential([specc.Input(shape=(4,)), layers.Dense(3)])
    model.compile(loss="mse", jit_compile=False)
    try:
        model.compile(loss="mse", steps_per_execution=4)
    except NotImplementedError:
        missing("steps_per_execution other than 1")


@pytest.mark.parametrize("argument", ["batch_size", "epochs", "validation_split", "validation_data", "shuffle",
                                      "class_weight", "sample_weight", "initial_epoch", "steps_per_epoch",
                                      "validation_steps", "validation_batch_size", "validation_freq"])
def test_api_fit_argument(argument):
    x, y = xy(20)
    value = {"batch_size": 5, "epochs": 2, "validation_split": 0.2, "validation_data": (x[:4], y[:4]),
             "shuffle": False, "class_weight": {0: 2.0}, "sample_weight": np.ones(20), "initial_epoch": 1,
             "steps_per_epoch": 1, "validation_steps": 1, "validation_batch_size": 2, "validation_freq": 2}[argument]
    model = specc.Sequential([specc.Input(shape=(4,)), layers.Dense(3, activation="softmax")])
    model.compile(loss="sparse_categorical_crossentropy")
    extra = {"validation_data": (x, y)} if argument in ("validation_steps", "validation_batch_size") else {}
    extra.update({"epochs": 2} if argument in ("initial_epoch", "validation_freq") else {})
    h = model.fit(x, y, verbose=0, **{argument: value}, **extra)
    assert len(h.history["loss"]) == len(h.epoch) >= 1


def test_api_fit_returns_a_history_of_every_epoch():
    x, y = xy()
    model = specc.Sequential([specc.Input(shape=(4,)), layers.Dense(3, activation="softmax")])
    model.compile(loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    h = model.fit(x, y, epochs=3, validation_split=0.25, verbose=0)
    assert list(h.history) == ["loss", "accuracy", "val_loss", "val_accuracy"] and h.epoch == [0, 1, 2]


def test_api_fit_default_batch_size_is_32():
    x, y = xy(70)
    model = specc.Sequential([specc.Input(shape=(4,)), layers.Dense(3, activation="softmax")])
    model.compile(loss="sparse_categorical_crossentropy")
    assert model.fit(x, y, verbose=0).params["steps"] == 3


def test_api_fit_validation_split_takes_the_last_samples_before_shuffling():
    x, y = xy(20)
    model = specc.Sequential([specc.Input(shape=(4,)), layers.Dense(3, activation="softmax")])
    model.compile(optimizer=specc.optimizers.SGD(1e-9), loss="sparse_categorical_crossentropy")
    h = model.fit(x, y, validation_split=0.25, verbose=0)
    assert h.history["val_loss"][0] == pytest.approx(model.evaluate(x[15:], y[15:], verbose=0), rel=1e-5)


def test_api_evaluate_returns_a_scalar_a_list_or_a_dict():
    x, y = xy()
    model = specc.Sequential([specc.Input(shape=(4,)), layers.Dense(3, activation="softmax")])
    model.compile(loss="sparse_categorical_crossentropy")
    assert isinstance(model.evaluate(x, y, verbose=0), float)
    model.compile(loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    assert len(model.evaluate(x, y, verbose=0)) == 2
    assert set(model.evaluate(x, y, verbose=0, return_dict=True)) == {"loss", "accuracy"}


def test_api_evaluate_sample_weight_and_steps():
    x, y = xy()
    model = specc.Sequential([specc.Input(shape=(4,)), layers.Dense(3, activation="softmax")])
    model.compile(loss="sparse_categorical_crossentropy")
    assert model.evaluate(x, y, sample_weight=np.zeros(len(x)), verbose=0) == 0.0
    assert model.evaluate(x, y, batch_size=4, steps=1, verbose=0) == pytest.approx(
        model.evaluate(x[:4], y[:4], verbose=0))


def test_api_evaluate_verbose_shows_a_progress_bar(capsys):
    x, y = xy()
    model = specc.Sequential([specc.Input(shape=(4,)), layers.Dense(3, activation="softmax")])
    model.compile(loss="sparse_categorical_crossentropy")
    model.evaluate(x, y, verbose=1)
    assert capsys.readouterr().out.startswith("1/1")


def test_api_predict_batches_steps_and_progress(capsys):
    x, _ = xy(10)
    model = specc.Sequential([specc.Input(shape=(4,)), layers.Dense(3)])
    assert model.predict(x, batch_size=3, verbose=0).shape == (10, 3)
    assert model.predict(x, batch_size=3, steps=2, verbose=0).shape == (6, 3)
    model.predict(x, batch_size=5, verbose=1)
    assert capsys.readouterr().out.startswith("2/2")


def test_api_callbacks_in_fit_evaluate_and_predict():
    calls = []

    class Spy(specc.callbacks.Callback):
        def on_train_begin(self, logs=None):
            calls.append("train")

        def on_test_begin(self, logs=None):
            calls.append("test")

        def on_predict_begin(self, logs=None):
            calls.append("predict")

    x, y = xy()
    model = specc.Sequential([specc.Input(shape=(4,)), layers.Dense(3, activation="softmax")])
    model.compile(loss="sparse_categorical_crossentropy")
    model.fit(x, y, callbacks=[Spy()], verbose=0)
    model.evaluate(x, y, callbacks=[Spy()], verbose=0)
    model.predict(x, callbacks=[Spy()], verbose=0)
    assert calls == ["train", "test", "predict"]


def test_api_train_on_batch():
    x, y = xy()
    model = specc.Sequential([specc.Input(shape=(4,)), layers.Dense(3, activation="softmax")])
    model.compile(loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    before = model.get_weights()
    loss, acc = model.train_on_batch(x, y)
    assert not np.array_equal(before[0], model.get_weights()[0]) and 0 <= acc <= 1
    assert set(model.train_on_batch(x, y, return_dict=True)) == {"loss", "accuracy"}


def test_api_test_on_batch():
    x, y = xy()
    model = specc.Sequential([specc.Input(shape=(4,)), layers.Dense(3, activation="softmax")])
    model.compile(loss="sparse_categorical_crossentropy")
    assert model.test_on_batch(x, y) == pytest.approx(model.evaluate(x, y, batch_size=len(x), verbose=0))


def test_api_predict_on_batch():
    x, _ = xy()
    model = specc.Sequential([specc.Input(shape=(4,)), layers.Dense(3)])
    np.testing.assert_allclose(model.predict_on_batch(x), model.predict(x, verbose=0), rtol=1e-6)


def test_api_model_optimizer_and_loss_attributes():
    model = specc.Sequential([specc.Input(shape=(4,)), layers.Dense(3)])
    model.compile(optimizer="adam", loss="mse")
    assert model.optimizer.learning_rate == pytest.approx(0.001) and model.loss == "mse"


def test_api_save_weights_and_load_weights(tmp_path):
    model = specc.Sequential([specc.Input(shape=(4,)), layers.Dense(3)])
    other = specc.Sequential([specc.Input(shape=(4,)), layers.Dense(3)])
    path = str(tmp_path / "m.weights.npz")
    model.save_weights(path)
    other.load_weights(path)
    np.testing.assert_array_equal(other.get_weights()[0], model.get_weights()[0])


def test_api_save_weights_to_keras_h5(tmp_path):
    model = specc.Sequential([specc.Input(shape=(4,)), layers.Dense(3)])
    try:
        model.save_weights(str(tmp_path / "m.weights.h5"))
    except ValueError:
        missing("Keras's .weights.h5 files (issue 17, item 2)")
    other = specc.Sequential([specc.Input(shape=(4,)), layers.Dense(3)])
    other.load_weights(str(tmp_path / "m.weights.h5"))
    np.testing.assert_array_equal(other.get_weights()[0], model.get_weights()[0])


def test_api_whole_model_save_and_load_model(tmp_path):
    model = specc.Sequential([specc.Input(shape=(4,)), layers.Dense(3)])
    model.compile(optimizer="adam", loss="mse")
    if not hasattr(model, "save") or not hasattr(specc, "models"):
        missing("model.save() and specc.models.load_model() (issue 17, item 1)")
    path = str(tmp_path / "m.specc")
    model.save(path)
    loaded = specc.models.load_model(path)
    x = np.ones((2, 4), np.float32)
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))


def test_api_get_config_from_config_round_trip():
    model = specc.Sequential([specc.Input(shape=(4,)), layers.Dense(3, name="d")], name="cfg")
    if not hasattr(specc.Sequential, "from_config"):
        missing("Sequential.from_config (issue 17, item 1)")
    clone = specc.Sequential.from_config(model.get_config())
    assert clone.name == "cfg" and [w.shape for w in clone.weights] == [(4, 3), (3,)]


# === guide: "The Sequential model" ===========================================================================


def test_guide_a_sequential_model_called_on_a_test_input():
    model = specc.Sequential([layers.Dense(2, activation="relu", name="layer1"),
                              layers.Dense(3, activation="relu", name="layer2"), layers.Dense(4, name="layer3")])
    assert model(np.ones((3, 3), np.float32)).shape == (3, 4)


def test_guide_is_equivalent_to_chained_layer_calls():
    model = specc.Sequential([layers.Dense(2, activation="relu", name="layer1"),
                              layers.Dense(3, activation="relu", name="layer2"), layers.Dense(4, name="layer3")])
    x = np.ones((3, 3), np.float32)
    y = model(x)
    layer1, layer2, layer3 = model.layers
    np.testing.assert_allclose(layer3(layer2(layer1(x))), y, rtol=1e-6)


def test_guide_not_appropriate_for_multiple_inputs():
    a, b = specc.Input(shape=(2,)), specc.Input(shape=(2,))
    two_inputs = specc.Model([a, b], layers.Add()([a, b]))
    with pytest.raises((ValueError, NotImplementedError)):
        specc.Sequential([specc.Input(shape=(2,)), two_inputs])


def test_guide_not_appropriate_for_a_multi_input_layer():
    with pytest.raises(ValueError):
        specc.Sequential([specc.Input(shape=(2,)), layers.Concatenate()])


def test_guide_create_from_a_list_of_layers():
    assert len(three_dense().layers) == 3


def test_guide_layers_attribute_lists_the_layers():
    assert all(isinstance(layer, layers.Dense) for layer in three_dense().layers)


def test_guide_create_incrementally_with_add():
    model = specc.Sequential()
    model.add(layers.Dense(2, activation="relu"))
    model.add(layers.Dense(3, activation="relu"))
    model.add(layers.Dense(4))
    assert [layer.units for layer in model.layers] == [2, 3, 4]


def test_guide_pop_like_a_list():
    model = three_dense()
    model.pop()
    assert len(model.layers) == 2


def test_guide_constructor_name_argument():
    model = specc.Sequential(name="my_sequential")
    model.add(layers.Dense(2, activation="relu", name="layer1"))
    assert model.name == "my_sequential" and model.layers[0].name == "layer1"


def test_guide_a_new_layer_has_no_weights():
    assert layers.Dense(3).weights == []


def test_guide_a_layer_creates_its_weights_on_the_first_call():
    layer = layers.Dense(3)
    layer(np.ones((1, 4), np.float32))
    assert [w.shape for w in layer.weights] == [(4, 3), (3,)]


def test_guide_an_unbuilt_model_has_no_weights_error():
    with pytest.raises(ValueError, match="not yet been created"):
        _ = three_dense().weights


def test_guide_an_unbuilt_model_has_no_summary():
    with pytest.raises(ValueError):
        three_dense().summary()


def test_guide_calling_the_model_builds_it_with_six_weights():
    model = three_dense()
    model(np.ones((1, 4), np.float32))
    assert len(model.weights) == 6


def test_guide_summary_once_built_shows_the_call_batch_shape():
    model = three_dense()
    model(np.ones((1, 4), np.float32))
    assert row_shapes(model) == ["(1, 2)", "(1, 3)", "(1, 4)"] and "Total params: 35" in summary_text(model)


def test_guide_input_object_then_summary():
    model = specc.Sequential()
    model.add(specc.Input(shape=(4,)))
    model.add(layers.Dense(2, activation="relu"))
    assert row_shapes(model) == ["(None, 2)"] and "Total params: 10" in summary_text(model)


def test_guide_input_object_is_not_in_layers():
    model = specc.Sequential([specc.Input(shape=(4,)), layers.Dense(2)])
    assert len(model.layers) == 1 and isinstance(model.layers[0], layers.Dense)


def test_guide_input_shape_argument_on_the_first_layer():
    model = specc.Sequential()
    model.add(layers.Dense(2, activation="relu", input_shape=(4,)))
    assert row_shapes(model) == ["(None, 2)"]


def test_guide_models_with_an_input_shape_always_have_weights_and_an_output_shape():
    model = specc.Sequential([layers.Dense(2, input_shape=(4,))])
    assert len(model.weights) == 2 and model.output_shape == (None, 2)


def test_guide_add_summary_workflow_first_stage():
    model = specc.Sequential()
    model.add(specc.Input(shape=(250, 250, 3)))
    model.add(layers.Conv2D(32, 5, strides=2, activation="relu"))
    model.add(layers.Conv2D(32, 3, activation="relu"))
    model.add(layers.MaxPooling2D(3))
    assert row_shapes(model)[-1] == "(None, 40, 40, 32)" and "Total params: 11,680" in summary_text(model)


def test_guide_add_summary_workflow_second_stage_and_head():
    model = specc.Sequential([specc.Input(shape=(250, 250, 3)), layers.Conv2D(32, 5, strides=2, activation="relu"),
                              layers.Conv2D(32, 3, activation="relu"), layers.MaxPooling2D(3)])
    for _ in range(2):
        model.add(layers.Conv2D(32, 3, activation="relu"))
        model.add(layers.Conv2D(32, 3, activation="relu"))
        model.add(layers.MaxPooling2D(3 if _ == 0 else 2))
    assert row_shapes(model)[-1] == "(None, 4, 4, 32)" and "Total params: 48,672" in summary_text(model)
    model.add(layers.GlobalMaxPooling2D())
    model.add(layers.Dense(10))
    assert model.output_shape == (None, 10)


def test_guide_train_evaluate_and_run_inference():
    x, y = xy(32)
    model = specc.Sequential([specc.Input(shape=(4,)), layers.Dense(8, activation="relu"),
                              layers.Dense(3, activation="softmax")])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    h = model.fit(x, y, epochs=5, verbose=0)
    assert h.history["loss"][-1] < h.history["loss"][0]
    assert len(model.evaluate(x, y, verbose=0)) == 2 and model.predict(x, verbose=0).shape == (32, 3)


def test_guide_save_the_model_to_disk_and_restore_it(tmp_path):
    model = specc.Sequential([specc.Input(shape=(4,)), layers.Dense(3)])
    if not hasattr(model, "save"):
        missing("model.save() / load_model (issue 17, item 1)")
    model.save(str(tmp_path / "m.specc"))
    restored = specc.models.load_model(str(tmp_path / "m.specc"))
    assert [w.shape for w in restored.weights] == [w.shape for w in model.weights]


def test_guide_feature_extraction_from_every_layer():
    initial = specc.Sequential([specc.Input(shape=(20, 20, 3)), layers.Conv2D(4, 5, strides=2, activation="relu"),
                                layers.Conv2D(4, 3, activation="relu"), layers.Conv2D(4, 3, activation="relu")])
    extractor = specc.Model(inputs=initial.inputs, outputs=[layer.output for layer in initial.layers])
    features = extractor(np.ones((1, 20, 20, 3), np.float32))
    assert [f.shape for f in features] == [(1, 8, 8, 4), (1, 6, 6, 4), (1, 4, 4, 4)]


def test_guide_feature_extraction_from_one_layer_shares_weights():
    initial = specc.Sequential([specc.Input(shape=(20, 20, 3)), layers.Conv2D(4, 5, strides=2, activation="relu"),
                                layers.Conv2D(4, 3, activation="relu", name="my_intermediate_layer"),
                                layers.Conv2D(4, 3, activation="relu")])
    extractor = specc.Model(inputs=initial.inputs, outputs=initial.get_layer(name="my_intermediate_layer").output)
    x = np.ones((1, 20, 20, 3), np.float32)
    first, second = initial.layers[:2]
    np.testing.assert_allclose(extractor(x), second(first(x)), rtol=1e-6)


def test_guide_transfer_learning_freeze_all_layers_but_the_last():
    model = specc.Sequential([specc.Input(shape=(784,)), layers.Dense(32, activation="relu"),
                              layers.Dense(32, activation="relu"), layers.Dense(32, activation="relu"), layers.Dense(10)])
    for layer in model.layers[:-1]:
        layer.trainable = False
    model.compile(optimizer="adam", loss=specc.losses.SparseCategoricalCrossentropy(from_logits=True))
    before = model.get_weights()
    rng = np.random.default_rng(0)
    model.fit(rng.random((16, 784)).astype(np.float32), rng.integers(0, 10, 16), verbose=0)
    after = model.get_weights()
    assert all(np.array_equal(a, b) for a, b in zip(before[:6], after[:6]))
    assert not np.array_equal(before[6], after[6])


def test_guide_transfer_learning_frozen_base_under_a_new_head():
    base = specc.Sequential([specc.Input(shape=(8, 8, 3)), layers.Conv2D(4, 3, activation="relu"),
                             layers.GlobalAveragePooling2D()], name="base")
    base.trainable = False
    model = specc.Sequential([base, layers.Dense(5)])
    model.compile(optimizer="adam", loss="mse")
    before = base.get_weights()
    rng = np.random.default_rng(0)
    model.fit(rng.random((8, 8, 8, 3)).astype(np.float32), rng.random((8, 5)).astype(np.float32), verbose=0)
    assert all(np.array_equal(a, b) for a, b in zip(before, base.get_weights()))
    assert len(model.trainable_weights) == 2


def test_guide_transfer_learning_with_a_branching_functional_base():
    """The blueprint's base (Xception) is a Functional model with branches and residual connections."""
    x = specc.Input(shape=(8, 8, 3))
    h = layers.Conv2D(4, 3, padding="same", activation="relu")(x)
    residual = layers.Add()([h, layers.Conv2D(4, 3, padding="same")(h)])
    base = specc.Model(x, layers.GlobalAveragePooling2D()(residual), name="base")
    base.trainable = False
    data = np.random.default_rng(0).random((2, 8, 8, 3)).astype(np.float32)
    try:
        model = specc.Sequential([base, layers.Dense(5)])
        predicted = model.predict(data, verbose=0)
    except NotImplementedError:
        missing("a Functional model with branches nested as a layer (issue 17, item 7)")
    assert model.output_shape == (None, 5)
    np.testing.assert_allclose(predicted, model.layers[1](base(data)), rtol=1e-5)
