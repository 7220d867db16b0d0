"""The layers added after v1 through the Python API: Keras's positional arguments, a Sequential with the
activation layers that trains, MultiHeadAttention's Keras call signature (masks included), the wrappers
given layer objects, and to_yaml round trips that predict the same."""

from __future__ import annotations

import numpy as np
import pytest

import specc
from specc import layers as L
from specc.spec import load_spec_text


@pytest.fixture(autouse=True)
def fresh_session():
    specc.clear_session()
    specc.set_random_seed(0)


def _round_trip(model, inputs):
    """The model written as a spec and loaded back, with the same weights, predicts the same."""
    spec, errors = load_spec_text(model.to_yaml(), "round_trip.yaml")
    assert not errors, [e.text() for e in errors]
    again = specc.load(spec)
    again.set_weights(model.get_weights())
    np.testing.assert_allclose(again.predict(inputs, verbose=0), model.predict(inputs, verbose=0), rtol=1e-6)
    return spec


def test_positional_arguments_follow_keras():
    assert L.ReLU(6.0).max_value == 6.0
    assert L.ReLU(6.0, 0.1, 0.5).threshold == 0.5
    assert L.LeakyReLU().negative_slope == 0.3  # Keras 3's default
    assert L.LeakyReLU(0.1).negative_slope == 0.1
    assert L.ELU(0.5).alpha == 0.5
    assert L.Softmax(1).axis == 1
    assert L.Rescaling(1 / 255, -1.0).offset == -1.0
    assert L.GaussianNoise(0.2).stddev == 0.2
    mha = L.MultiHeadAttention(4, 8, 16)
    assert (mha.num_heads, mha.key_dim, mha.value_dim) == (4, 8, 16)
    assert L.Bidirectional(L.LSTM(3), "sum").merge_mode == "sum"


def test_keras_argument_errors():
    with pytest.raises(ValueError, match="max_value"):
        L.ReLU(max_value=-1.0)
    with pytest.raises(ValueError, match="stddev"):
        L.GaussianNoise(2.0)
    with pytest.raises(ValueError, match="recurrent layer"):
        L.Bidirectional(L.Dense(3))


def test_sequential_with_activation_layers_trains():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((128, 6)).astype("float32")
    y = (x[:, 0] + x[:, 1] > 0).astype("int64")
    model = specc.Sequential([L.Input((6,)), L.Rescaling(2.0, 0.1), L.Dense(16), L.ReLU(max_value=6.0), L.Dense(16),
                              L.LeakyReLU(), L.Dense(16), L.PReLU(), L.ELU(), L.GaussianNoise(0.05), L.Dense(2),
                              L.Softmax()])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    history = model.fit(x, y, epochs=15, batch_size=32, verbose=0)
    assert history.history["loss"][-1] < 0.7 * history.history["loss"][0]
    assert [w.shape for w in model.layers[6].weights] == [(16,)]  # PReLU's alpha
    _round_trip(model, x[:8])


def test_multi_head_attention_keras_call_with_masks_round_trips():
    q = specc.Input((5, 4), name="tokens")
    mask = specc.Input((5, 5), name="pad")
    y = L.MultiHeadAttention(2, 3)(q, q, attention_mask=mask, use_causal_mask=True)
    out = L.Dense(1)(L.GlobalAveragePooling1D()(y))
    model = specc.Model([q, mask], out)
    assert model.layers[2].count_params() == 3 * (4 * 2 * 3 + 2 * 3) + 2 * 3 * 4 + 4
    rng = np.random.default_rng(1)
    x = rng.standard_normal((4, 5, 4)).astype("float32")
    m = (rng.random((4, 5, 5)) < 0.7).astype("float32")
    spec = _round_trip(model, [x, m])
    layer = spec.layers[0]
    assert layer.use_causal_mask and layer.input_roles == ("query", "value", "attention_mask")


def test_multi_head_attention_on_arrays_and_one_signature_per_layer():
    mha = L.MultiHeadAttention(2, 3, output_shape=7)
    x = np.random.default_rng(0).standard_normal((2, 4, 5)).astype("float32")
    assert mha(x, x).shape == (2, 4, 7)
    with pytest.raises(ValueError, match="one call signature"):
        mha(x, x, use_causal_mask=True)
    with pytest.raises(ValueError, match="query and a value"):
        L.MultiHeadAttention(2, 3)(x)


def test_wrappers_take_layer_objects_and_round_trip():
    x = np.random.default_rng(0).standard_normal((3, 4, 2)).astype("float32")
    model = specc.Sequential([L.Input((4, 2)), L.Bidirectional(L.LSTM(3, return_sequences=True)),
                              L.TimeDistributed(L.Dense(2, activation="tanh")), L.Flatten(), L.Dense(1)])
    assert model.layers[0].count_params() == 2 * 4 * (2 * 3 + 3 * 3 + 3)
    assert model.layers[1].output.shape == (None, 4, 2)
    _round_trip(model, x)
