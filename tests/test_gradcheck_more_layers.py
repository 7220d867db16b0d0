"""The layers added after v1 against finite differences (float64, through the engine): the activation
layers with arguments, Rescaling, Normalization, the training-only noise layers, MultiHeadAttention (every
projection, masks, several attention axes, dropout), the Bidirectional / TimeDistributed wrappers, Conv3D and
the 3-D poolings; plus
the behaviours a gradient check cannot see (masks that zero attention, noise only in training)."""

from __future__ import annotations

import numpy as np
import pytest

from specc.engine import Engine
from specc.spec import load_spec_text

from .gradcheck import central_difference, check

TRAIN = {"training": True}
MHA = {"type": "MultiHeadAttention", "num_heads": 2, "key_dim": 3}
LSTM = {"type": "LSTM", "units": 3}

CASES = [
    ("relu", {"type": "ReLU"}, [[5]], {}),
    ("relu6", {"type": "ReLU", "max_value": 6.0}, [[3, 4]], {}),
    ("relu_all_args", {"type": "ReLU", "max_value": 1.0, "negative_slope": 0.1, "threshold": 0.2}, [[4, 3]], {}),
    ("leaky_relu", {"type": "LeakyReLU"}, [[5]], {}),
    ("leaky_relu_slope", {"type": "LeakyReLU", "negative_slope": 0.01}, [[2, 3]], {}),
    ("elu", {"type": "ELU"}, [[5]], {}),
    ("elu_alpha", {"type": "ELU", "alpha": 0.7}, [[2, 3]], {}),
    ("prelu", {"type": "PReLU"}, [[3, 4]], {}),
    ("prelu_shared", {"type": "PReLU", "shared_axes": [1, 2]}, [[3, 2, 4]], {}),
    ("softmax", {"type": "Softmax"}, [[4]], {}),
    ("softmax_axis1", {"type": "Softmax", "axis": 1}, [[3, 4]], {}),
    ("softmax_axes", {"type": "Softmax", "axis": [1, 3]}, [[3, 2, 4]], {}),
    ("rescaling", {"type": "Rescaling", "scale": 0.5, "offset": -1.0}, [[4, 3]], {}),
    ("rescaling_per_channel", {"type": "Rescaling", "scale": [0.5, 2.0, 3.0]}, [[2, 3]], {}),
    ("normalization_given", {"type": "Normalization", "mean": [1.0, 2.0, 3.0], "variance": [1.0, 4.0, 0.25]},
     [[2, 3]], {}),
    ("normalization_invert", {"type": "Normalization", "axis": None, "mean": 1.0, "variance": 4.0, "invert": True},
     [[2, 3]], {}),
    ("normalization_weights", {"type": "Normalization", "axis": [1, 2]}, [[2, 3]], {}),
    ("spatial_dropout1d", {"type": "SpatialDropout1D", "rate": 0.5}, [[4, 3]], TRAIN),
    ("spatial_dropout2d", {"type": "SpatialDropout2D", "rate": 0.5}, [[2, 2, 3]], TRAIN),
    ("gaussian_noise", {"type": "GaussianNoise", "stddev": 0.5}, [[4, 3]], TRAIN),
    ("mha_self", MHA, [[4, 5], [4, 5]], {}),
    ("mha_cross", MHA, [[4, 5], [3, 6]], {}),
    ("mha_key_value_dim_output_shape", dict(MHA, value_dim=2, output_shape=[4]), [[4, 5], [3, 6], [3, 2]], {}),
    ("mha_no_bias", dict(MHA, use_bias=False), [[4, 5], [4, 5]], {}),
    ("mha_causal", dict(MHA, use_causal_mask=True), [[4, 5], [4, 5]], {}),
    ("mha_dropout_training", dict(MHA, dropout=0.3), [[4, 5], [4, 5]], TRAIN),
    ("mha_image", MHA, [[2, 3, 5], [2, 4, 5]], {}),
    ("mha_axis1_output_2d", dict(MHA, attention_axes=[1], output_shape=[2, 3]), [[2, 3, 5], [4, 3, 5]], {}),
    ("bidirectional_lstm", {"type": "Bidirectional", "layer": LSTM}, [[4, 2]], {}),
    ("bidirectional_lstm_seq", {"type": "Bidirectional", "layer": dict(LSTM, return_sequences=True)}, [[4, 2]], {}),
    ("bidirectional_gru_mul", {"type": "Bidirectional", "layer": {"type": "GRU", "units": 2}, "merge_mode": "mul"},
     [[3, 2]], {}),
    ("bidirectional_rnn_ave", {"type": "Bidirectional", "layer": {"type": "SimpleRNN", "units": 2},
                               "merge_mode": "ave"}, [[3, 2]], {}),
    ("bidirectional_backward_layer_sum", {"type": "Bidirectional", "layer": dict(LSTM, return_sequences=True),
                                          "merge_mode": "sum", "backward_layer": {
                                              "type": "GRU", "units": 3, "return_sequences": True,
                                              "go_backwards": True}}, [[4, 2]], {}),
    ("bidirectional_dropout_training", {"type": "Bidirectional", "layer": dict(LSTM, dropout=0.3)}, [[4, 2]], TRAIN),
    ("time_distributed_dense_tanh", {"type": "TimeDistributed", "layer": {"type": "Dense", "units": 3,
                                                                         "activation": "tanh"}}, [[4, 5]], {}),
    ("time_distributed_conv", {"type": "TimeDistributed", "layer": {"type": "Conv2D", "filters": 2, "kernel_size": 2}},
     [[3, 4, 4, 1]], {}),
    ("time_distributed_pool", {"type": "TimeDistributed", "layer": {"type": "MaxPooling1D"}}, [[3, 4, 2]], {}),
    ("conv3d", {"type": "Conv3D", "filters": 2, "kernel_size": 2}, [[3, 4, 3, 2]], {}),
    ("conv3d_same_strides", {"type": "Conv3D", "filters": 2, "kernel_size": 2, "padding": "same", "strides": 2},
     [[3, 4, 5, 2]], {}),
    ("conv3d_dilation_no_bias", {"type": "Conv3D", "filters": 2, "kernel_size": [2, 3, 1], "dilation_rate": [1, 2, 1],
                                 "use_bias": False}, [[3, 5, 3, 2]], {}),
    ("conv3d_relu_same", {"type": "Conv3D", "filters": 2, "kernel_size": 2, "activation": "relu", "padding": "same"},
     [[2, 3, 3, 1]], {}),
    ("max_pooling3d", {"type": "MaxPooling3D"}, [[4, 4, 4, 2]], {}),
    ("max_pooling3d_same", {"type": "MaxPooling3D", "pool_size": [2, 3, 2], "strides": 1, "padding": "same"},
     [[3, 4, 3, 2]], {}),
    ("average_pooling3d", {"type": "AveragePooling3D", "pool_size": 2}, [[4, 4, 4, 2]], {}),
    ("average_pooling3d_uneven_same", {"type": "AveragePooling3D", "pool_size": 3, "strides": 2, "padding": "same"},
     [[4, 5, 3, 2]], {}),
    ("global_average_pooling3d", {"type": "GlobalAveragePooling3D"}, [[2, 3, 2, 2]], {}),
    ("global_max_pooling3d_keepdims", {"type": "GlobalMaxPooling3D", "keepdims": True}, [[2, 3, 2, 2]], {}),
]


@pytest.mark.parametrize("layer,shapes,options", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_gradient_matches_finite_differences(layer, shapes, options):
    check(layer, shapes, **options)


MASKED = """specc: 1
model:
  inputs: {x: [4, 5], pad: [4, 4]}
  layers:
    - {type: MultiHeadAttention, name: mha, num_heads: 2, key_dim: 3, inputs: {query: x, value: x, attention_mask: pad}}
  outputs: mha
"""


def _engine(text):
    spec, errors = load_spec_text(text, "masked.yaml")
    assert not errors, [e.text() for e in errors]
    engine = Engine(spec.graph, np.float64)
    engine.initialize(0)
    return engine


def test_attention_mask_hides_keys_from_the_output_and_its_gradient():
    """A key no query may attend to changes neither the output nor gets a gradient; the mask input has no
    gradient either."""
    engine = _engine(MASKED)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 4, 5))
    mask = np.ones((2, 4, 4))
    mask[:, :, 2] = 0  # nobody attends to position 2
    y = engine.forward([x, mask])[0].copy()
    engine.backward([np.ones_like(y)])
    grads = engine._input_grads
    x2 = x.copy()
    x2[:, 2] += 5.0  # position 2 as a key/value changes nothing; as a query it changes only its own row
    y2 = engine.forward([x2, mask])[0]
    np.testing.assert_allclose(np.delete(y2, 2, axis=1), np.delete(y, 2, axis=1), rtol=1e-12, atol=1e-12)
    assert not np.allclose(y2[:, 2], y[:, 2])
    assert np.all(grads["pad"] == 0)


def test_gradcheck_with_attention_mask():
    """Finite differences with a 0/1 mask (the generic check draws normal inputs, which never mask)."""
    engine = _engine(MASKED)
    rng = np.random.default_rng(1)
    engine.params += rng.standard_normal(engine.params.shape) * 0.1
    x = rng.standard_normal((2, 4, 5))
    mask = (rng.random((2, 4, 4)) < 0.6).astype(np.float64)
    mask[..., 1] = 1
    R = rng.standard_normal((2, 4, 5))

    def loss():
        return float(np.sum(engine.forward([x, mask])[0] * R))

    engine.forward([x, mask])
    engine.backward([R])
    analytic, dx = engine.grads.copy(), engine._input_grads["x"].copy()
    for array, got in ((engine.params, analytic), (x.reshape(-1), dx.reshape(-1))):
        for i in rng.choice(got.size, 30, replace=False):
            assert np.isclose(got[i], central_difference(loss, array, i), rtol=1e-5, atol=1e-7)


def test_causal_mask_lets_no_query_see_later_positions():
    engine = _engine("""specc: 1
model:
  inputs: {x: [5, 4]}
  layers:
    - {type: MultiHeadAttention, name: mha, num_heads: 2, key_dim: 3, use_causal_mask: true, inputs: [x, x]}
  outputs: mha
""")
    x = np.random.default_rng(0).standard_normal((1, 5, 4))
    y = engine.forward([x])[0].copy()
    x[:, 3:] += 1.0
    y2 = engine.forward([x])[0]
    np.testing.assert_allclose(y2[:, :3], y[:, :3], rtol=1e-12, atol=1e-12)
    assert not np.allclose(y2[:, 3:], y[:, 3:])


@pytest.mark.parametrize("layer", [{"type": "GaussianNoise", "stddev": 0.5},
                                   {"type": "SpatialDropout1D", "rate": 0.5},
                                   dict(MHA, dropout=0.5)])
def test_noise_only_in_training(layer):
    from .gradcheck import build

    shapes = [[6, 4], [6, 4]] if layer["type"] == "MultiHeadAttention" else [[6, 4]]
    engine = build(layer, shapes)
    xs = [np.random.default_rng(0).standard_normal((3, *s)) for s in shapes]
    infer = [engine.forward(xs, training=False, rng=np.random.default_rng(k))[0].copy() for k in (1, 2)]
    train = [engine.forward(xs, training=True, rng=np.random.default_rng(k))[0].copy() for k in (1, 2)]
    np.testing.assert_array_equal(infer[0], infer[1])
    assert not np.allclose(train[0], train[1])
    if layer["type"] != "MultiHeadAttention":
        np.testing.assert_array_equal(infer[0], xs[0])


def test_spatial_dropout_drops_whole_channels():
    from .gradcheck import build

    engine = build({"type": "SpatialDropout2D", "rate": 0.5}, [[3, 3, 8]])
    x = np.ones((4, 3, 3, 8))
    y = engine.forward([x], training=True, rng=np.random.default_rng(0))[0]
    per_channel = y.reshape(4, 9, 8)
    assert np.all(per_channel.min(axis=1) == per_channel.max(axis=1))  # one value per (sample, channel)
    assert set(np.unique(y)) == {0.0, 2.0}


def test_average_pooling3d_leaves_same_padding_out_of_the_mean():
    """Keras's (TensorFlow's) rule: pool 2 over an axis of 3 with 'same' pads one position after, and the
    last window is the mean of the one real position, not of it and a zero (nor a replicated edge)."""
    from .gradcheck import build

    engine = build({"type": "AveragePooling3D", "pool_size": [2, 1, 1], "padding": "same"}, [[3, 1, 1, 1]])
    x = np.array([1.0, 3.0, 8.0]).reshape(1, 3, 1, 1, 1)
    y = engine.forward([x])[0].reshape(-1)
    np.testing.assert_allclose(y, [2.0, 8.0])


def test_a_query_with_no_key_allowed_gets_a_zero_context():
    """Keras's masked softmax: a query row whose keys are all masked attends to nothing (zeros, so the
    layer outputs its output bias there), never NaN; the kernel is compiled with fastmath, where a test of
    the row maximum against -inf is not reliable."""
    import specc
    from specc.kernels.attention import masked_softmax

    scores = np.random.default_rng(0).normal(size=(2, 3, 4)).astype(np.float32)
    mask = np.ones((2, 3, 4), np.uint8)
    mask[0, 0, :] = 0
    probs = np.empty_like(scores)
    masked_softmax(scores, mask, 1, probs)
    assert np.all(probs[0, 0] == 0) and np.allclose(probs.sum(-1)[mask.any(-1)], 1)
    q = specc.Input((3, 4), name="q")
    m = specc.Input((3, 5), name="m")
    v = specc.Input((5, 4), name="v")
    mha = specc.layers.MultiHeadAttention(2, 2, name="mha")
    model = specc.Model([q, v, m], mha(q, v, attention_mask=m))
    rng = np.random.default_rng(1)
    xq, xv = rng.normal(size=(2, 3, 4)), rng.normal(size=(2, 5, 4))
    xm = np.ones((2, 3, 5))
    xm[1, 2] = 0
    out = model.predict([xq, xv, xm], verbose=0)
    assert np.isfinite(out).all()
    np.testing.assert_allclose(out[1, 2], mha.get_weights()[-1], rtol=1e-6, atol=1e-7)
