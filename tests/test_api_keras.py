"""The same Python code run on Keras 3 and on specc gives the same names, weights (order, names, shapes),
summary rows and — with Keras's weights copied over by get_weights/set_weights — the same predictions.

Skips cleanly when Keras (with the torch backend) is not installed.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

import specc

from .test_guide_examples import summary_rows

os.environ.setdefault("KERAS_BACKEND", "torch")
keras = pytest.importorskip("keras")


def summary_of(model) -> str:
    out: list[str] = []
    model.summary(print_fn=lambda text, *args, **kwargs: out.append(text))
    return "\n".join(out)


def rows(model) -> list[tuple[str, ...]]:
    """(name (type), output shape, params) of each row, the part both summaries share."""
    return [r[:3] for r in summary_rows(summary_of(model))]


def both(build):
    """build(lib) on Keras and on specc, each in a fresh session."""
    keras.backend.clear_session()
    specc.clear_session()
    return build(keras), build(specc)


def guide_conv_workflow(lib):
    model = lib.Sequential()
    model.add(lib.Input(shape=(250, 250, 3)))
    model.add(lib.layers.Conv2D(32, 5, strides=2, activation="relu"))
    model.add(lib.layers.Conv2D(32, 3, activation="relu"))
    model.add(lib.layers.MaxPooling2D(3))
    model.add(lib.layers.Conv2D(32, 3, activation="relu"))
    model.add(lib.layers.MaxPooling2D(2))
    model.add(lib.layers.GlobalMaxPooling2D())
    model.add(lib.layers.Dense(10))
    return model


def test_guide_workflow_summary_rows_match_keras():
    ours_keras, ours = both(guide_conv_workflow)
    assert rows(ours) == rows(ours_keras)


def test_weight_names_and_shapes_match_keras():
    def build(lib):
        return lib.Sequential([
            lib.Input(shape=(6, 6, 3)),
            lib.layers.Conv2D(4, 3),
            lib.layers.BatchNormalization(),
            lib.layers.Reshape((16, 4)),
            lib.layers.LSTM(5, return_sequences=True),
            lib.layers.GRU(3),
            lib.layers.Dense(2),
        ])

    theirs, ours = both(build)
    # (Keras 3's variable paths add the model and an RNN's cell: sequential/lstm/lstm_cell/kernel.)
    assert [(v.name, tuple(v.shape), v.trainable) for v in ours.weights] == \
           [(v.name, tuple(v.shape), v.trainable) for v in theirs.weights]
    assert [layer.name for layer in ours.layers] == [layer.name for layer in theirs.layers]


def test_auto_names_of_the_guide_session_match_keras():
    def session(lib):
        lib.Sequential([lib.layers.Dense(2), lib.layers.Dense(3)])
        model = lib.Sequential(name="named")
        model.add(lib.layers.Dense(4, name="layer1"))
        layer = lib.layers.Dense(3)
        layer(np.ones((1, 4), np.float32))
        deferred = lib.Sequential([lib.layers.Dense(2), lib.layers.Conv2D(1, 1), lib.layers.Conv2DTranspose(1, 1)])
        return [layer.weights[0].path, deferred.name] + [x.name for x in deferred.layers]

    assert both(session)[1] == both(session)[0]


@pytest.mark.parametrize("case", ["functional", "frozen_base", "feature_extractor"])
def test_predictions_match_keras_with_its_weights(case):
    def build(lib):
        L = lib.layers
        if case == "functional":
            image, meta = lib.Input(shape=(8, 8, 2), name="image"), lib.Input(shape=(5,), name="meta")
            h = L.GlobalAveragePooling2D()(L.Conv2D(4, 3, padding="same", activation="relu")(image))
            shared = L.Dense(4, activation="tanh", name="shared")
            m = L.Concatenate()([shared(h), shared(L.Dense(4)(meta))])
            return lib.Model(inputs=[image, meta], outputs=[L.Dense(3, activation="softmax")(m), L.Dense(1)(h)])
        if case == "frozen_base":
            base = lib.Sequential([lib.Input(shape=(8, 8, 2)), L.Conv2D(4, 3, activation="relu"),
                                   L.BatchNormalization(), L.GlobalAveragePooling2D()], name="base")
            base.trainable = False
            return lib.Sequential([base, L.Dense(3)])
        initial = lib.Sequential([lib.Input(shape=(8, 8, 2)), L.Conv2D(4, 3, activation="relu"),
                                  L.Conv2D(3, 3, activation="relu", name="my_intermediate_layer"), L.Flatten(),
                                  L.Dense(2)])
        return lib.Model(inputs=initial.inputs, outputs=[layer.output for layer in initial.layers])

    theirs, ours = both(build)
    ours.set_weights(theirs.get_weights())
    rng = np.random.default_rng(0)
    x = [rng.random((3, 8, 8, 2)).astype(np.float32), rng.random((3, 5)).astype(np.float32)]
    x = x if case == "functional" else x[0]
    expected, got = theirs.predict(x, verbose=0), ours.predict(x, verbose=0)
    for a, b in zip(expected if isinstance(expected, list) else [expected], got if isinstance(got, list) else [got]):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5)
    if case == "frozen_base":
        assert rows(ours) == rows(theirs)
        assert [v.path.split("/")[-2:] for v in ours.trainable_weights] == \
               [v.path.split("/")[-2:] for v in theirs.trainable_weights]
    assert [layer.name for layer in ours.layers] == [layer.name for layer in theirs.layers]
