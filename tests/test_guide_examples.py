"""Every code example of the Keras Sequential-model guide (seeds/sequential-model-guide.txt), run on specc
with `specc` in place of `keras`/`tf` and NumPy arrays in place of tensors — one test per example, in the
guide's order, asserting what the guide prints (layer counts, weight counts and shapes, summary rows,
output shapes).

Summaries are Keras 3's rich tables (with specc's extra estimate lines after Keras's), not tf.keras's
text tables; a model built by calling it on a (1, 4) array shows (1, 2), as both print. The auto-names the guide prints (dense_6, sequential_3, ...) come from Keras's
per-session counters: test_names_follow_the_guide_session runs the examples in one session and gets them.
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


def summary_of(model, **kwargs) -> str:
    out: list[str] = []
    model.summary(print_fn=out.append, **kwargs)
    return "\n".join(out)


def summary_rows(text: str) -> list[tuple[str, ...]]:
    """The body rows of a summary table as tuples of cell texts (wrapped cells joined with a space)."""
    rows, current = [], None
    for line in text.splitlines():
        if line.startswith("│"):
            cells = [c.strip() for c in line.strip("│").split("│")]
            current = cells if current is None else [f"{a} {b}".strip() for a, b in zip(current, cells)]
        elif line.startswith(("├", "└")) and current is not None:
            rows.append(tuple(current))
            current = None
    return rows


def totals(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        for key in ("Total params", "Trainable params", "Non-trainable params"):
            if line.strip().startswith(key + ":"):
                out[key] = line.split(":")[1].split("(")[0].strip()
    return out


# --- Setup ------------------------------------------------------------------------------------------


def test_setup_imports():
    # import tensorflow as tf / from tensorflow import keras / from tensorflow.keras import layers
    import specc as keras
    from specc import layers as keras_layers

    assert keras.Sequential and keras.Input and keras.Model
    assert keras_layers.Dense is layers.Dense


# --- When to use a Sequential model -----------------------------------------------------------------


def test_schematic_sequential_model_called_on_a_test_input():
    model = specc.Sequential(
        [
            layers.Dense(2, activation="relu", name="layer1"),
            layers.Dense(3, activation="relu", name="layer2"),
            layers.Dense(4, name="layer3"),
        ]
    )
    x = np.ones((3, 3))
    y = model(x)
    assert y.shape == (3, 4)
    assert [layer.name for layer in model.layers] == ["layer1", "layer2", "layer3"]


def test_equivalent_function_of_three_layer_calls():
    layer1 = layers.Dense(2, activation="relu", name="layer1")
    layer2 = layers.Dense(3, activation="relu", name="layer2")
    layer3 = layers.Dense(4, name="layer3")
    x = np.ones((3, 3))
    y = layer3(layer2(layer1(x)))
    assert y.shape == (3, 4)
    # "is equivalent to": a Sequential model of the same layers computes the same function.
    model = specc.Sequential([layer1, layer2, layer3])
    np.testing.assert_array_equal(model(x), y)


# --- Creating a Sequential model --------------------------------------------------------------------


def test_create_from_a_list_of_layers():
    model = specc.Sequential([
        layers.Dense(2, activation="relu"),
        layers.Dense(3, activation="relu"),
        layers.Dense(4),
    ])
    assert len(model.layers) == 3
    assert [layer.name for layer in model.layers] == ["dense", "dense_1", "dense_2"]


def test_layers_attribute():
    model = specc.Sequential([
        layers.Dense(2, activation="relu"),
        layers.Dense(3, activation="relu"),
        layers.Dense(4),
    ])
    assert len(model.layers) == 3
    assert all(isinstance(layer, layers.Dense) for layer in model.layers)


def test_create_incrementally_with_add():
    model = specc.Sequential()
    model.add(layers.Dense(2, activation="relu"))
    model.add(layers.Dense(3, activation="relu"))
    model.add(layers.Dense(4))
    assert [layer.units for layer in model.layers] == [2, 3, 4]


def test_pop_removes_the_last_layer(capsys):
    model = specc.Sequential()
    model.add(layers.Dense(2, activation="relu"))
    model.add(layers.Dense(3, activation="relu"))
    model.add(layers.Dense(4))
    model.pop()
    print(len(model.layers))  # 2
    assert capsys.readouterr().out == "2\n"


def test_sequential_constructor_takes_a_name():
    model = specc.Sequential(name="my_sequential")
    model.add(layers.Dense(2, activation="relu", name="layer1"))
    model.add(layers.Dense(3, activation="relu", name="layer2"))
    model.add(layers.Dense(4, name="layer3"))
    assert model.name == "my_sequential"
    assert [layer.name for layer in model.layers] == ["layer1", "layer2", "layer3"]


# --- Specifying the input shape in advance ----------------------------------------------------------


def test_a_new_layer_has_no_weights():
    layer = layers.Dense(3)
    assert layer.weights == []


def test_a_layer_creates_its_weights_on_its_first_call():
    layer = layers.Dense(3)
    x = np.ones((1, 4))
    y = layer(x)
    assert y.shape == (1, 3)
    assert [w.shape for w in layer.weights] == [(4, 3), (3,)]  # "of shape (4, 3) and (3,)"
    assert [w.path for w in layer.weights] == ["dense/kernel", "dense/bias"]
    np.testing.assert_array_equal(layer.weights[1].numpy(), np.zeros(3, np.float32))  # bias starts at 0


def test_deferred_build_then_call():
    model = specc.Sequential(
        [
            layers.Dense(2, activation="relu"),
            layers.Dense(3, activation="relu"),
            layers.Dense(4),
        ]
    )  # No weights at this stage!
    with pytest.raises(ValueError, match="not yet been created.*build"):
        _ = model.weights
    with pytest.raises(ValueError, match="not yet been built.*build"):
        model.summary()
    x = np.ones((1, 4))
    y = model(x)
    assert y.shape == (1, 4)
    print("Number of weights after calling the model:", len(model.weights))  # 6
    assert len(model.weights) == 6


def test_summary_once_built():
    model = specc.Sequential([layers.Dense(2, activation="relu"), layers.Dense(3, activation="relu"), layers.Dense(4)])
    model(np.ones((1, 4)))
    text = summary_of(model)
    assert text.startswith('Model: "sequential"')
    assert summary_rows(text) == [  # built for the batch it was called on, as the guide prints
        ("dense (Dense)", "(1, 2)", "10"),
        ("dense_1 (Dense)", "(1, 3)", "9"),
        ("dense_2 (Dense)", "(1, 4)", "16"),
    ]
    assert totals(text) == {"Total params": "35", "Trainable params": "35", "Non-trainable params": "0"}
    assert model.layers[0].output.shape == (1, 2)  # built for the (1, 4) batch it was called on


def test_input_object_then_summary():
    model = specc.Sequential()
    model.add(specc.Input(shape=(4,)))
    model.add(layers.Dense(2, activation="relu"))
    text = summary_of(model)
    assert summary_rows(text) == [("dense (Dense)", "(None, 2)", "10")]
    assert totals(text) == {"Total params": "10", "Trainable params": "10", "Non-trainable params": "0"}


def test_input_is_not_in_model_layers():
    model = specc.Sequential()
    model.add(specc.Input(shape=(4,)))
    model.add(layers.Dense(2, activation="relu"))
    assert len(model.layers) == 1
    assert isinstance(model.layers[0], layers.Dense)


def test_input_shape_argument_on_the_first_layer():
    model = specc.Sequential()
    model.add(layers.Dense(2, activation="relu", input_shape=(4,)))
    text = summary_of(model)
    assert summary_rows(text) == [("dense (Dense)", "(None, 2)", "10")]
    assert totals(text)["Total params"] == "10"
    assert len(model.weights) == 2  # "always have weights (even before seeing any data)"
    assert model.output_shape == (None, 2)


# --- A common debugging workflow: add() + summary() -------------------------------------------------


def test_add_and_summary_debugging_workflow():
    model = specc.Sequential()
    model.add(specc.Input(shape=(250, 250, 3)))  # 250x250 RGB images
    model.add(layers.Conv2D(32, 5, strides=2, activation="relu"))
    model.add(layers.Conv2D(32, 3, activation="relu"))
    model.add(layers.MaxPooling2D(3))

    text = summary_of(model)
    assert summary_rows(text) == [
        ("conv2d (Conv2D)", "(None, 123, 123, 32)", "2,432"),
        ("conv2d_1 (Conv2D)", "(None, 121, 121, 32)", "9,248"),
        ("max_pooling2d (MaxPooling2D)", "(None, 40, 40, 32)", "0"),
    ]
    assert totals(text) == {"Total params": "11,680", "Trainable params": "11,680", "Non-trainable params": "0"}

    model.add(layers.Conv2D(32, 3, activation="relu"))
    model.add(layers.Conv2D(32, 3, activation="relu"))
    model.add(layers.MaxPooling2D(3))
    model.add(layers.Conv2D(32, 3, activation="relu"))
    model.add(layers.Conv2D(32, 3, activation="relu"))
    model.add(layers.MaxPooling2D(2))

    text = summary_of(model)
    assert summary_rows(text) == [
        ("conv2d (Conv2D)", "(None, 123, 123, 32)", "2,432"),
        ("conv2d_1 (Conv2D)", "(None, 121, 121, 32)", "9,248"),
        ("max_pooling2d (MaxPooling2D)", "(None, 40, 40, 32)", "0"),
        ("conv2d_2 (Conv2D)", "(None, 38, 38, 32)", "9,248"),
        ("conv2d_3 (Conv2D)", "(None, 36, 36, 32)", "9,248"),
        ("max_pooling2d_1 (MaxPooling2D)", "(None, 12, 12, 32)", "0"),
        ("conv2d_4 (Conv2D)", "(None, 10, 10, 32)", "9,248"),
        ("conv2d_5 (Conv2D)", "(None, 8, 8, 32)", "9,248"),
        ("max_pooling2d_2 (MaxPooling2D)", "(None, 4, 4, 32)", "0"),
    ]
    assert totals(text) == {"Total params": "48,672", "Trainable params": "48,672", "Non-trainable params": "0"}

    model.add(layers.GlobalMaxPooling2D())
    model.add(layers.Dense(10))
    assert model.output_shape == (None, 10)
    assert summary_rows(summary_of(model))[-1] == ("dense (Dense)", "(None, 10)", "330")


# --- Feature extraction with a Sequential model -----------------------------------------------------


def test_feature_extraction_from_every_layer():
    initial_model = specc.Sequential(
        [
            specc.Input(shape=(250, 250, 3)),
            layers.Conv2D(32, 5, strides=2, activation="relu"),
            layers.Conv2D(32, 3, activation="relu"),
            layers.Conv2D(32, 3, activation="relu"),
        ]
    )
    feature_extractor = specc.Model(
        inputs=initial_model.inputs,
        outputs=[layer.output for layer in initial_model.layers],
    )
    x = np.ones((1, 250, 250, 3))
    features = feature_extractor(x)
    assert [f.shape for f in features] == [(1, 123, 123, 32), (1, 121, 121, 32), (1, 119, 119, 32)]
    np.testing.assert_array_equal(features[-1], initial_model(x))  # same weights as the original model


def test_feature_extraction_from_one_layer():
    initial_model = specc.Sequential(
        [
            specc.Input(shape=(250, 250, 3)),
            layers.Conv2D(32, 5, strides=2, activation="relu"),
            layers.Conv2D(32, 3, activation="relu", name="my_intermediate_layer"),
            layers.Conv2D(32, 3, activation="relu"),
        ]
    )
    feature_extractor = specc.Model(
        inputs=initial_model.inputs,
        outputs=initial_model.get_layer(name="my_intermediate_layer").output,
    )
    x = np.ones((1, 250, 250, 3))
    features = feature_extractor(x)
    assert features.shape == (1, 121, 121, 32)
    assert len(feature_extractor.weights) == 4  # the two convolutions below the output, shared
    assert feature_extractor.weights[0].path == initial_model.weights[0].path


# --- Transfer learning with a Sequential model ------------------------------------------------------


def test_transfer_learning_freeze_all_layers_except_the_last(tmp_path):
    def build():
        return specc.Sequential([
            specc.Input(shape=(784)),
            layers.Dense(32, activation='relu'),
            layers.Dense(32, activation='relu'),
            layers.Dense(32, activation='relu'),
            layers.Dense(10),
        ])

    pretrained = build()
    pretrained.save_weights(tmp_path / "pretrained.weights.npz")

    model = build()
    # Presumably you would want to first load pre-trained weights.
    model.load_weights(tmp_path / "pretrained.weights.npz")
    for a, b in zip(model.get_weights(), pretrained.get_weights()):
        np.testing.assert_array_equal(a, b)

    # Freeze all layers except the last one.
    for layer in model.layers[:-1]:
        layer.trainable = False

    # Recompile and train (this will only update the weights of the last layer).
    model.compile(optimizer="adam", loss=specc.losses.SparseCategoricalCrossentropy(from_logits=True))
    rng = np.random.default_rng(0)
    model.fit(rng.random((64, 784)), rng.integers(0, 10, 64), epochs=2, verbose=0)
    changed = [not np.array_equal(a, b) for a, b in zip(model.get_weights(), pretrained.get_weights())]
    assert changed == [False] * 6 + [True, True]
    assert totals(summary_of(model)) == {"Total params": "27,562", "Trainable params": "330",
                                         "Non-trainable params": "27,232"}


def test_transfer_learning_frozen_base_model_blueprint():
    # Stand-in for keras.applications.Xception(weights='imagenet', include_top=False, pooling='avg'):
    # a small convolutional base ending in global average pooling, with "pre-trained" weights.
    base_model = specc.Sequential([
        specc.Input(shape=(32, 32, 3)),
        layers.Conv2D(16, 3, strides=2, activation="relu"),
        layers.BatchNormalization(),
        layers.Conv2D(32, 3, activation="relu"),
        layers.GlobalAveragePooling2D(),
    ], name="xception")

    # Freeze the base model
    base_model.trainable = False

    # Use a Sequential model to add a trainable classifier on top
    model = specc.Sequential([
        base_model,
        layers.Dense(1000),
    ])

    # Compile & train
    model.compile(optimizer="adam", loss=specc.losses.SparseCategoricalCrossentropy(from_logits=True))
    base_before = base_model.get_weights()
    head_before = model.layers[-1].get_weights()
    rng = np.random.default_rng(0)
    model.fit(rng.random((16, 32, 32, 3)), rng.integers(0, 1000, 16), epochs=1, batch_size=8, verbose=0)
    for a, b in zip(base_model.get_weights(), base_before):  # BN statistics too: a frozen BN runs in inference mode
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(model.layers[-1].get_weights()[0], head_before[0])

    text = summary_of(model)
    assert summary_rows(text) == [("xception (Sequential)", "(None, 32)", "5,152"),
                                      ("dense (Dense)", "(None, 1000)", "33,000")]
    assert totals(text) == {"Total params": "38,152", "Trainable params": "33,000", "Non-trainable params": "5,152"}


# --- The guide's auto-names come from one session ---------------------------------------------------


def test_names_follow_the_guide_session():
    """Run the guide's examples in order in one session: the names match the ones the guide prints."""
    specc.Sequential([layers.Dense(2, activation="relu", name="layer1"), layers.Dense(3, activation="relu", name="layer2"),
                      layers.Dense(4, name="layer3")])
    specc.Sequential([layers.Dense(2, activation="relu"), layers.Dense(3, activation="relu"), layers.Dense(4)])
    model = specc.Sequential()
    model.add(layers.Dense(2, activation="relu"))
    model.add(layers.Dense(3, activation="relu"))
    model.add(layers.Dense(4))
    specc.Sequential(name="my_sequential")
    layer = layers.Dense(3)
    layer(np.ones((1, 4)))
    assert layer.weights[0].path == "dense_6/kernel"  # the guide: <tf.Variable 'dense_6/kernel:0' ...>

    model = specc.Sequential([layers.Dense(2, activation="relu"), layers.Dense(3, activation="relu"), layers.Dense(4)])
    model(np.ones((1, 4)))
    text = summary_of(model)
    assert text.startswith('Model: "sequential_3"')
    assert [r[0] for r in summary_rows(text)] == ["dense_7 (Dense)", "dense_8 (Dense)", "dense_9 (Dense)"]

    model = specc.Sequential()
    model.add(specc.Input(shape=(4,)))
    model.add(layers.Dense(2, activation="relu"))
    text = summary_of(model)
    assert text.startswith('Model: "sequential_4"') and "dense_10 (Dense)" in text

    model = specc.Sequential()
    model.add(layers.Dense(2, activation="relu", input_shape=(4,)))
    text = summary_of(model)
    assert text.startswith('Model: "sequential_5"') and "dense_11 (Dense)" in text

    model = specc.Sequential()
    model.add(specc.Input(shape=(250, 250, 3)))
    model.add(layers.Conv2D(32, 5, strides=2, activation="relu"))
    text = summary_of(model)
    assert text.startswith('Model: "sequential_6"') and "conv2d (Conv2D)" in text
