"""specc.Sequential: construction, add()/pop() and their errors, names, deferred and incremental builds,
and the examples of the tf.keras.Sequential API reference (seeds/sequential-api-reference.txt)."""

from __future__ import annotations

import numpy as np
import pytest

import specc
from specc import layers

from .test_guide_examples import summary_of, summary_rows


@pytest.fixture(autouse=True)
def fresh_session():
    specc.clear_session()
    specc.set_random_seed(0)


# --- the API reference's examples -------------------------------------------------------------------


def test_reference_input_shape_on_first_layer_then_shape_inference():
    model = specc.Sequential()
    model.add(layers.Dense(8, input_shape=(16,)))
    model.add(layers.Dense(4))  # Afterwards, we do automatic shape inference
    assert model.output_shape == (None, 4)
    assert len(model.weights) == 4


def test_reference_identical_with_input():
    model = specc.Sequential()
    model.add(specc.Input(shape=(16,)))
    model.add(layers.Dense(8))
    assert model.output_shape == (None, 8)
    assert [w.shape for w in model.weights] == [(16, 8), (8,)]


def test_reference_omitted_input_shape_has_no_weights_until_built():
    model = specc.Sequential()
    model.add(layers.Dense(8))
    model.add(layers.Dense(4))
    assert not model.built
    with pytest.raises(ValueError, match="not yet been created"):
        _ = model.weights  # model.weights not created yet


def test_reference_built_continuously_as_layers_are_added():
    model = specc.Sequential()
    model.add(layers.Dense(8, input_shape=(16,)))
    assert len(model.weights) == 2
    model.add(layers.Dense(4))
    assert len(model.weights) == 4  # Returns "4"


def test_reference_build_with_batch_input_shape():
    model = specc.Sequential()
    model.add(layers.Dense(8))
    model.add(layers.Dense(4))
    model.build((None, 16))
    assert len(model.weights) == 4  # Returns "4"
    assert model.input_shape == (None, 16)


def test_reference_first_fit_builds_the_model():
    model = specc.Sequential()
    model.add(layers.Dense(8))
    model.add(layers.Dense(1))
    model.compile(optimizer="sgd", loss="mse")
    rng = np.random.default_rng(0)
    x, y = rng.random((64, 16)), rng.random((64, 1))
    history = model.fit(x, y, batch_size=32, epochs=10, verbose=0)  # This builds the model for the first time
    assert model.built and len(model.weights) == 4
    assert len(history.history["loss"]) == 10 and history.epoch == list(range(10))
    assert history.history["loss"][-1] < history.history["loss"][0]


@pytest.mark.parametrize("method", ["evaluate", "predict"])
def test_first_evaluate_or_predict_builds_the_model(method):
    model = specc.Sequential([layers.Dense(3)])
    model.compile(optimizer="sgd", loss="mse")
    x, y = np.ones((4, 5)), np.zeros((4, 3))
    result = model.evaluate(x, y, verbose=0) if method == "evaluate" else model.predict(x, verbose=0)
    assert model.built and model.input_shape == (None, 5)
    assert np.shape(result) == (() if method == "evaluate" else (4, 3))


# --- constructor, layers, names ---------------------------------------------------------------------


def test_constructor_defaults_and_auto_names():
    a, b = specc.Sequential(), specc.Sequential()
    assert (a.name, b.name) == ("sequential", "sequential_1")
    assert a.layers == [] and not a.built
    model = specc.Sequential(layers=[layers.Dense(1)], name="net")
    assert model.name == "net" and len(model.layers) == 1


def test_layer_auto_names_count_per_type():
    names = [layers.Dense(1).name, layers.Dense(1).name, layers.Conv2DTranspose(1, 1).name, layers.SimpleRNN(1).name,
             layers.Dense(1).name]
    assert names == ["dense", "dense_1", "conv2d_transpose", "simple_rnn", "dense_2"]
    specc.clear_session()
    assert layers.Dense(1).name == "dense"


def test_layers_never_include_the_input():
    model = specc.Sequential([specc.Input(shape=(3,)), layers.Dense(2)])
    assert [type(layer).__name__ for layer in model.layers] == ["Dense"]
    model.build((None, 3))  # already built for this shape: nothing changes
    assert len(model.layers) == 1


def test_duplicate_names_are_rejected_with_keras_message():
    model = specc.Sequential([layers.Dense(2, name="a")])
    with pytest.raises(ValueError, match="All layers added to a Sequential model should have unique names. Name 'a' "
                                         "is already the name of a layer in this model. Update the `name` argument"):
        model.add(layers.Dense(3, name="a"))
    assert len(model.layers) == 1


# --- add() errors (the API reference's Raises section) ------------------------------------------------


@pytest.mark.parametrize("thing", [42, "Dense", np.ones(3), layers.Dense])
def test_add_non_layer_raises_type_error(thing):
    model = specc.Sequential()
    with pytest.raises(TypeError, match="must be an instance of class Layer.*Add a layer such as"):
        model.add(thing)


def test_add_intermediate_tensor_raises_type_error():
    x = specc.Input(shape=(3,))
    y = layers.Dense(2)(x)
    with pytest.raises(TypeError, match="Add the layer itself"):
        specc.Sequential().add(y)


def test_add_multi_output_model_raises_value_error():
    x = specc.Input(shape=(3,))
    two = specc.Model(inputs=x, outputs=[layers.Dense(2)(x), layers.Dense(3)(x)])
    with pytest.raises(ValueError, match="single output tensor.*Functional API"):
        specc.Sequential().add(two)


def test_add_layer_connected_elsewhere_raises_value_error():
    shared = layers.Dense(2)
    shared(specc.Input(shape=(3,)))  # now part of a Functional graph
    with pytest.raises(ValueError, match="already connected somewhere else.*new layer instance"):
        specc.Sequential().add(shared)


def test_add_merge_layer_raises_value_error():
    with pytest.raises(ValueError, match="merges several inputs.*Functional API"):
        specc.Sequential([specc.Input(shape=(3,))]).add(layers.Add())


def test_add_input_after_layers_raises_value_error_saying_where_it_goes():
    model = specc.Sequential([layers.Dense(2)])
    with pytest.raises(ValueError, match="An Input must come first"):
        model.add(specc.Input(shape=(3,)))
    built = specc.Sequential([specc.Input(shape=(3,))])
    with pytest.raises(ValueError, match=r"already has the input shape \(None, 3\)"):
        built.add(specc.Input(shape=(4,)))


def test_add_layer_that_cannot_take_the_current_shape_raises_and_leaves_the_model_unchanged():
    model = specc.Sequential([specc.Input(shape=(8,)), layers.Dense(4)])
    with pytest.raises(ValueError, match=r"Conv2D 'conv2d' cannot take input \(None, 4\)"):
        model.add(layers.Conv2D(2, 3))
    assert [layer.name for layer in model.layers] == ["dense"]
    assert model.output_shape == (None, 4)


# --- pop() ----------------------------------------------------------------------------------------


def test_pop_returns_the_layer_and_rebuilds():
    model = specc.Sequential([specc.Input(shape=(4,)), layers.Dense(3), layers.Dense(2)])
    top = model.pop()
    assert top.name == "dense_1" and model.output_shape == (None, 3)
    assert summary_rows(summary_of(model)) == [("dense (Dense)", "(None, 3)", "15")]


def test_pop_on_empty_model_raises_clear_type_error():
    with pytest.raises(TypeError, match="There are no layers in the model 'sequential' to pop"):
        specc.Sequential().pop()
    with pytest.raises(TypeError, match="no layers"):
        specc.Sequential([specc.Input(shape=(2,))]).pop()  # the Input is not a layer


# --- building -------------------------------------------------------------------------------------


def test_summary_works_after_every_add():
    model = specc.Sequential([specc.Input(shape=(40, 40, 3))])
    model.add(layers.Conv2D(32, 3, padding="same"))
    assert summary_rows(summary_of(model)) == [("conv2d (Conv2D)", "(None, 40, 40, 32)", "896")]
    model.add(layers.MaxPooling2D(2))
    assert summary_rows(summary_of(model))[-1] == ("max_pooling2d (MaxPooling2D)", "(None, 20, 20, 32)", "0")
    model.add(layers.Flatten())
    model.add(layers.Dense(10))
    assert summary_rows(summary_of(model))[-1] == ("dense (Dense)", "(None, 10)", "128,010")


def test_deferred_model_builds_on_first_call_with_that_batch_shape():
    model = specc.Sequential([layers.Dense(2), layers.Dense(3)])
    y = model(np.ones((5, 7)))
    assert y.shape == (5, 3)
    assert model.layers[0].input.shape == (5, 7) and model.layers[1].output.shape == (5, 3)
    assert model(np.ones((2, 7))).shape == (2, 3)  # the batch axis is free
    with pytest.raises(ValueError, match=r"expected shape=\(5, 7\), found shape=\(2, 8\)"):
        model(np.ones((2, 8)))


def test_build_errors():
    with pytest.raises(ValueError, match="no layers. Call `model.add\\(layer\\)`"):
        specc.Sequential().build((None, 3))
    model = specc.Sequential([layers.Dense(2)])
    with pytest.raises(ValueError, match="batch axis first"):
        model.build((3,))
    model.build((None, 3))
    with pytest.raises(ValueError, match="already been configured"):
        model.build((None, 4))


def test_layers_get_input_and_output_tensors_once_built():
    model = specc.Sequential([specc.Input(shape=(4,), name="features"), layers.Dense(3), layers.Dense(2)])
    first, second = model.layers
    assert first.input is model.inputs[0] and second.input is first.output
    assert second.output is model.outputs[0]
    assert repr(first.output) == "<KerasTensor shape=(None, 3), dtype=float32, name=dense>"
    lone = layers.Dense(1)
    with pytest.raises(ValueError, match="never been called"):
        _ = lone.output


def test_adding_the_same_layer_to_two_sequential_models_shares_weights():
    dense = layers.Dense(2)
    a = specc.Sequential([specc.Input(shape=(3,)), dense])
    b = specc.Sequential([specc.Input(shape=(3,)), dense])
    x = np.ones((1, 3))
    np.testing.assert_array_equal(a(x), b(x))
    dense.set_weights([np.ones((3, 2)), np.zeros(2)])
    np.testing.assert_array_equal(a(x), [[3.0, 3.0]])
    np.testing.assert_array_equal(b(x), [[3.0, 3.0]])
    with pytest.raises(ValueError, match="called 2 times"):
        _ = dense.output


def test_nested_sequential_and_input_from_a_built_model():
    base = specc.Sequential([specc.Input(shape=(6,)), layers.Dense(4), layers.Dense(3)], name="base")
    model = specc.Sequential([base, layers.Dense(1)])
    assert model.built and model.input_shape == (None, 6)  # the nested model knows its input shape
    text = summary_of(model, expand_nested=True)
    assert summary_rows(text) == [("base (Sequential)", "(None, 3)", "43"), ("└ dense (Dense)", "(None, 4)", "28"),
                                  ("└ dense_1 (Dense)", "(None, 3)", "15"), ("dense_2 (Dense)", "(None, 1)", "4")]
    x = np.random.default_rng(0).random((2, 6))
    np.testing.assert_allclose(model(x), model.layers[1](base(x)), rtol=1e-6)
    assert [v.path for v in model.weights] == ["dense/kernel", "dense/bias", "dense_1/kernel", "dense_1/bias",
                                               "dense_2/kernel", "dense_2/bias"]


def test_int_input_shape_as_in_the_guide():
    model = specc.Sequential([specc.Input(shape=(784)), layers.Dense(2)])
    assert model.input_shape == (None, 784)
    with pytest.raises(ValueError, match="must be a shape"):
        specc.Input(shape=(0, 3))
