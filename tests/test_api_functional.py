"""The Functional API: specc.Input + layer calls + specc.Model, multi-input/multi-output, shared layers,
merge layers, nested models, feature extraction that shares weights, get_layer."""

from __future__ import annotations

import numpy as np
import pytest

import specc
from specc import layers

from .test_guide_examples import summary_of, summary_rows, totals


@pytest.fixture(autouse=True)
def fresh_session():
    specc.clear_session()
    specc.set_random_seed(0)


def test_single_input_single_output():
    x = specc.Input(shape=(3,))
    y = layers.Dense(2)(x)
    model = specc.Model(inputs=x, outputs=y)
    assert model.name == "functional"
    assert [type(layer).__name__ for layer in model.layers] == ["InputLayer", "Dense"]  # Keras 3 lists the input
    data = np.random.default_rng(0).random((4, 3)).astype(np.float32)
    kernel, bias = model.get_weights()
    np.testing.assert_allclose(model(data), data @ kernel + bias, rtol=1e-6)
    assert model.predict(data, verbose=0).shape == (4, 2)
    assert summary_rows(summary_of(model)) == [("input_layer (InputLayer)", "(None, 3)", "0"),
                                               ("dense (Dense)", "(None, 2)", "8")]


def test_multi_input_multi_output_with_merge_layers():
    image = specc.Input(shape=(8, 8, 1), name="image")
    meta = specc.Input(shape=(5,), name="meta")
    h = layers.Conv2D(4, 3, padding="same", activation="relu", name="conv")(image)
    h = layers.GlobalAveragePooling2D(name="pooled")(h)
    m = layers.Dense(4, activation="relu", name="meta_proj")(meta)
    merged = layers.Concatenate(name="merged")([h, m])
    label = layers.Dense(3, activation="softmax", name="label")(merged)
    score = layers.Dense(1, name="score")(layers.Add(name="sum")([h, m]))
    model = specc.Model(inputs=[image, meta], outputs=[label, score])
    rng = np.random.default_rng(0)
    xi, xm = rng.random((6, 8, 8, 1)), rng.random((6, 5))
    out = model([xi, xm])
    assert [o.shape for o in out] == [(6, 3), (6, 1)]
    same = model({"image": xi, "meta": xm})
    np.testing.assert_array_equal(same[0], out[0])
    rows = summary_rows(summary_of(model))
    assert ("merged (Concatenate)", "(None, 8)", "0", "pooled[0][0], meta_proj[0][0]") in rows
    model.compile(optimizer="adam", loss={"label": "sparse_categorical_crossentropy", "score": "mse"},
                  metrics={"label": ["accuracy"]}, loss_weights={"label": 1.0, "score": 0.5})
    history = model.fit([xi, xm], {"label": rng.integers(0, 3, 6), "score": rng.random((6, 1))}, epochs=2,
                        batch_size=3, verbose=0)
    assert list(history.history) == ["loss", "label_loss", "score_loss", "label_accuracy"]
    assert model.metrics_names == list(history.history)


def test_dict_outputs_return_a_dict():
    x = specc.Input(shape=(2,))
    model = specc.Model(inputs=x, outputs={"a": layers.Dense(1, name="a")(x), "b": layers.Dense(3, name="b")(x)})
    out = model(np.ones((2, 2)))
    assert set(out) == {"a", "b"} and out["b"].shape == (2, 3)


def test_shared_layer_is_one_set_of_weights_and_its_gradients_add_up():
    a, b = specc.Input(shape=(3,)), specc.Input(shape=(3,))
    shared = layers.Dense(2, name="shared")
    out = layers.Add()([shared(a), shared(b)])
    model = specc.Model(inputs=[a, b], outputs=out)
    assert len(model.weights) == 2 and model.count_params() == 8
    assert totals(summary_of(model))["Total params"] == "8"
    rng = np.random.default_rng(0)
    x1, x2, t = rng.random((4, 3)), rng.random((4, 3)), rng.random((4, 2))
    w, c = (arr.astype(np.float64) for arr in model.get_weights())
    model.compile(optimizer=specc.optimizers.SGD(learning_rate=0.1), loss="mse")
    model.fit([x1, x2], t, batch_size=4, epochs=2, shuffle=False, verbose=0)
    for _ in range(2):  # the same two SGD steps by hand: y = (x1 W + c) + (x2 W + c), mse
        y = x1 @ w + c + x2 @ w + c
        g = 2 * (y - t) / y.size
        w, c = w - 0.1 * (x1.T @ g + x2.T @ g), c - 0.1 * 2 * g.sum(axis=0)
    np.testing.assert_allclose(model.get_weights()[0], w, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(model.get_weights()[1], c, rtol=1e-5, atol=1e-6)


def test_shared_layer_outputs_are_named_like_keras():
    inputs = specc.Input(shape=(3,))
    d = specc.layers.Dense(2, name="out")
    model = specc.Model(inputs=inputs, outputs=[d(inputs), d(inputs)])
    model.compile(optimizer="Adam", loss="mse", metrics=["mae", "acc"])
    rng = np.random.default_rng(0)
    x, y = rng.random((2, 3)), rng.integers(0, 2, (2, 2))
    model.fit(x, (y, y), verbose=0)
    assert model.metrics_names == ["loss", "out_loss", "out_1_loss", "out_mae", "out_acc", "out_1_mae", "out_1_acc"]
    first, second = model(x)
    np.testing.assert_array_equal(first, second)


def test_feature_extractor_shares_weights_with_the_original_model():
    base = specc.Sequential([specc.Input(shape=(4,)), layers.Dense(3, name="hidden"), layers.Dense(2, name="top")])
    features = specc.Model(inputs=base.inputs, outputs=base.get_layer("hidden").output)
    x = np.ones((1, 4))
    before = features(x)
    base.compile(optimizer="sgd", loss="mse")
    base.fit(np.random.default_rng(0).random((8, 4)), np.ones((8, 2)), epochs=1, verbose=0)
    after = features(x)
    assert not np.array_equal(before, after)  # training the original model moved the shared layer
    hidden_kernel, hidden_bias = base.get_layer("hidden").get_weights()
    np.testing.assert_allclose(after, x @ hidden_kernel + hidden_bias, rtol=1e-6)


def test_get_layer_by_name_and_index_with_keras_errors():
    x = specc.Input(shape=(2,), name="x")
    model = specc.Model(inputs=x, outputs=layers.Dense(1, name="d")(x))
    assert model.get_layer("d").name == "d" and model.get_layer(index=0).name == "x"
    with pytest.raises(ValueError, match="No such layer: nope. Existing layers are: \\['x', 'd'\\]."):
        model.get_layer("nope")
    with pytest.raises(ValueError, match="Was asked to retrieve layer at index 5 but model only has 2 layers."):
        model.get_layer(index=5)
    with pytest.raises(ValueError, match="Provide only a layer name or a layer index"):
        model.get_layer("d", 0)
    with pytest.raises(ValueError, match="Provide either a layer name or layer index"):
        model.get_layer()


def test_graph_errors():
    a, b = specc.Input(shape=(2,)), specc.Input(shape=(2,))
    y = layers.Add()([a, b])
    with pytest.raises(ValueError, match="Graph disconnected"):
        specc.Model(inputs=a, outputs=y)
    with pytest.raises(ValueError, match='The name "same" is used 2 times'):
        specc.Model(inputs=a, outputs=layers.Dense(1, name="same")(layers.Dense(1, name="same")(a)))
    with pytest.raises(ValueError, match="Add 'add_1' cannot take input"):
        layers.Add()([a, specc.Input(shape=(3,))])
    with pytest.raises(TypeError, match="needs `inputs` and `outputs`"):
        specc.Model()


def test_nested_chain_models_and_unbuilt_sequential_called_on_a_tensor():
    inner = specc.Sequential([layers.Dense(4), layers.Dense(3)], name="inner")
    x = specc.Input(shape=(5,))
    y = layers.Dense(1)(inner(x))  # building `inner` for (None, 5)
    model = specc.Model(inputs=x, outputs=y)
    assert inner.built and inner.input_shape == (None, 5)
    assert summary_rows(summary_of(model))[1] == ("inner (Sequential)", "(None, 3)", "39")  # a chain: no "Connected to"
    data = np.random.default_rng(0).random((2, 5))
    np.testing.assert_allclose(model(data), model.layers[-1](inner(data)), rtol=1e-6)

    two_in = [specc.Input(shape=(3,)), specc.Input(shape=(3,))]
    two = specc.Model(two_in, layers.Add()(two_in))
    with pytest.raises(NotImplementedError, match="nests Functional models with one input and one output"):
        specc.Model(x, layers.Dense(1)(two([layers.Dense(3)(x), layers.Dense(3)(x)])))


def test_functional_model_called_on_wrong_input():
    x = specc.Input(shape=(3,))
    model = specc.Model(x, layers.Dense(1)(x))
    with pytest.raises(ValueError, match=r'Input 0 of layer "functional" is incompatible with the layer: expected '
                                         r"shape=\(None, 3\), found shape=\(2, 4\)"):
        model(np.ones((2, 4)))
    with pytest.raises(ValueError, match="expects 1 input"):
        model([np.ones((2, 3)), np.ones((2, 3))])
