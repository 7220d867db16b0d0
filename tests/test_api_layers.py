"""specc.layers.*: one generated class per registered type, Keras's positional arguments, the spec's
validation messages, weights created on first call, calls on arrays, Variables."""

from __future__ import annotations

import inspect

import numpy as np
import pytest
import yaml

import specc
from specc import layers
from specc.api.layer import LAYER_CLASSES, POSITIONAL, ArgumentError
from specc.layers import REGISTRY
from specc.spec import load_spec_text

# Minimal arguments for every type with required ones.
REQUIRED = {
    "Dense": {"units": 2}, "Embedding": {"input_dim": 10, "output_dim": 3}, "Dropout": {"rate": 0.5},
    "Activation": {"activation": "relu"}, "Conv1D": {"filters": 2, "kernel_size": 3},
    "Conv2D": {"filters": 2, "kernel_size": 3}, "Conv2DTranspose": {"filters": 2, "kernel_size": 3},
    "DepthwiseConv2D": {"kernel_size": 3}, "SeparableConv2D": {"filters": 2, "kernel_size": 3},
    "AveragePooling1D": {"pool_size": 2}, "AveragePooling2D": {"pool_size": 2}, "SimpleRNN": {"units": 2},
    "LSTM": {"units": 2}, "GRU": {"units": 2}, "Reshape": {"target_shape": [4]}, "Permute": {"dims": [2, 1]},
    "RepeatVector": {"n": 2}, "Rescaling": {"scale": 0.5}, "SpatialDropout1D": {"rate": 0.5},
    "SpatialDropout2D": {"rate": 0.5}, "GaussianNoise": {"stddev": 0.1},
    "MultiHeadAttention": {"num_heads": 2, "key_dim": 3}, "Bidirectional": {"layer": {"type": "LSTM", "units": 2}},
    "TimeDistributed": {"layer": {"type": "Dense", "units": 2}}, "Conv3D": {"filters": 2, "kernel_size": 3},
    "AveragePooling3D": {"pool_size": 2},
}


@pytest.fixture(autouse=True)
def fresh_session():
    specc.clear_session()
    specc.set_random_seed(0)


def test_every_registered_type_has_a_layer_class():
    assert set(LAYER_CLASSES) == set(REGISTRY) - {"Sequential"}  # the block's Python form is specc.Sequential
    for name, cls in LAYER_CLASSES.items():
        assert getattr(layers, name) is cls and cls.__name__ == name
        layer = cls(**REQUIRED.get(name, {}))
        assert isinstance(layer, specc.api.Layer) and not layer.built


def test_positional_table_names_real_fields_in_keras_order():
    for name, order in POSITIONAL.items():
        fields = REGISTRY[name].model_fields
        assert all(f in fields for f in order), name
        required = [f for f, info in fields.items() if info.is_required() and f != "type"]
        assert list(order[: len(required)]) == required, name  # required arguments come first, as in Keras
    assert set(POSITIONAL) == set(LAYER_CLASSES)


@pytest.mark.parametrize("name", sorted(REQUIRED))
def test_positional_arguments_equal_keywords(name):
    kwargs = REQUIRED[name]
    args = [kwargs[k] for k in POSITIONAL[name][: len(kwargs)]]
    a, b = LAYER_CLASSES[name](*args), LAYER_CLASSES[name](**kwargs)
    assert {k: v for k, v in a.get_config().items() if k != "name"} == \
           {k: v for k, v in b.get_config().items() if k != "name"}


def test_keras_style_positional_calls():
    conv = layers.Conv2D(32, 5, 2, "same", activation="relu")
    assert (conv.filters, conv.kernel_size, conv.strides, conv.padding, conv.activation) == \
           (32, (5, 5), (2, 2), "same", "relu")
    dense = layers.Dense(3, "relu", False)
    assert (dense.units, dense.activation, dense.use_bias) == (3, "relu", False)
    lstm = layers.LSTM(4, "tanh", "hard_sigmoid")
    assert lstm.recurrent_activation == "hard_sigmoid"
    assert layers.MaxPooling2D(3).pool_size == (3, 3)
    assert layers.Dense(2, activation=None).activation == "linear"


def test_positional_argument_errors():
    with pytest.raises(TypeError, match=r"Dense\(\) takes at most 5 positional argument"):
        layers.Dense(1, "relu", True, "zeros", "zeros", "extra")
    with pytest.raises(TypeError, match="multiple values for argument 'units'"):
        layers.Dense(3, units=4)
    with pytest.raises(TypeError, match="no argument 'inputs'"):
        layers.Dense(3, inputs="x")


@pytest.mark.parametrize("layer_yaml, call", [
    ("{type: Dense, units: -3}", lambda: layers.Dense(-3)),
    ("{type: Dense, units: '10'}", lambda: layers.Dense("10")),
    ("{type: Dense, units: 2, activation: relux}", lambda: layers.Dense(2, activation="relux")),
    ("{type: Conv2D, filters: 2, kernel_size: 3, padding: middle}", lambda: layers.Conv2D(2, 3, padding="middle")),
    ("{type: Dense, units: 2, kernel_regularizer: l2}", lambda: layers.Dense(2, kernel_regularizer="l2")),
    ("{type: Dense, units: 2, unitz: 3}", lambda: layers.Dense(2, unitz=3)),
    ("{type: Dense}", lambda: layers.Dense()),
])
def test_validation_messages_are_the_specs(layer_yaml, call):
    text = f"specc: 1\nmodel:\n  input: [4]\n  layers:\n    - {layer_yaml}\n"
    _, errors = load_spec_text(text, "spec.yaml")
    assert len(errors) == 1
    with pytest.raises(ArgumentError) as info:
        call()
    assert errors[0].message in str(info.value)
    assert isinstance(info.value, ValueError) and isinstance(info.value, TypeError)


def test_keras_arguments_at_their_defaults_are_accepted():
    layer = layers.Conv2D(2, 3, data_format="channels_last", kernel_regularizer=None, groups=1, dtype="float32")
    assert layer.filters == 2
    with pytest.raises(ArgumentError, match="data_format"):
        layers.Conv2D(2, 3, data_format="channels_first")


def test_hyperparameters_read_like_keras_attributes_and_config():
    layer = layers.Dense(3, activation="relu", name="head")
    assert (layer.units, layer.activation, layer.use_bias, layer.name) == (3, "relu", True, "head")
    config = layer.get_config()
    assert config["units"] == 3 and config["name"] == "head" and config["trainable"] is True
    clone = layers.Dense.from_config(config | {"name": "head_2"})
    assert clone.units == 3 and clone.name == "head_2"
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        _ = layer.nope


def test_dense_alone_has_no_weights_until_called_then_computes_keras_dense():
    layer = layers.Dense(3, activation="relu")
    assert layer.weights == [] and not layer.built
    x = np.random.default_rng(0).standard_normal((2, 4)).astype(np.float32)
    y = layer(x)
    kernel, bias = layer.get_weights()
    assert kernel.shape == (4, 3) and bias.shape == (3,)
    np.testing.assert_allclose(y, np.maximum(x @ kernel + bias, 0), rtol=1e-6)
    assert [v.name for v in layer.weights] == ["kernel", "bias"]
    assert all(v.trainable for v in layer.weights) and layer.non_trainable_weights == []
    assert layer.count_params() == 15


def test_built_layer_rejects_an_input_its_weights_do_not_fit():
    layer = layers.Dense(3)
    layer(np.ones((1, 4)))
    with pytest.raises(ValueError, match=r"was built for input \(None, 4\).*cannot take input \(None, 5\)"):
        layer(np.ones((1, 5)))


def test_build_and_compute_output_shape_take_the_batch_axis():
    layer = layers.Conv2D(8, 3)
    assert layer.compute_output_shape((None, 10, 10, 3)) == (None, 8, 8, 8)
    layer.build((None, 10, 10, 3))
    assert [w.shape for w in layer.weights] == [(3, 3, 3, 8), (8,)]


def test_merge_layers_on_arrays_and_their_arity():
    a, b = np.ones((2, 3)), np.full((2, 3), 2.0)
    np.testing.assert_array_equal(layers.Add()([a, b]), np.full((2, 3), 3.0))
    np.testing.assert_array_equal(layers.Concatenate()([a, b]).shape, (2, 6))
    with pytest.raises(ValueError, match="should be called on a list"):
        layers.Add()(a)
    with pytest.raises(ValueError, match="takes one input"):
        layers.Dense(2)([a, b])


def test_variables_assign_and_set_weights_errors():
    layer = layers.Dense(2)
    layer(np.ones((1, 3)))
    layer.weights[0].assign(np.ones((3, 2)))
    np.testing.assert_array_equal(layer(np.ones((1, 3))), [[3.0, 3.0]])
    with pytest.raises(ValueError, match="cannot assign a value of shape"):
        layer.weights[1].assign(np.ones(3))
    with pytest.raises(ValueError, match="weight list of length 1, but the layer was expecting 2 weights"):
        layer.set_weights([np.ones((3, 2))])
    with pytest.raises(ValueError, match=r"weight shape \(2,\).*provided weight shape \(3,\)"):
        layer.set_weights([np.ones((3, 2)), np.ones(3)])
    assert np.asarray(layer.weights[1]).shape == (2,)


def test_batch_normalization_statistics_are_non_trainable():
    bn = layers.BatchNormalization()
    bn(np.ones((2, 4)))
    assert [(v.name, v.trainable) for v in bn.weights] == [("gamma", True), ("beta", True),
                                                          ("moving_mean", False), ("moving_variance", False)]
    bn.trainable = False
    assert bn.trainable_weights == [] and len(bn.non_trainable_weights) == 4


def test_layer_on_symbolic_tensor_records_a_call():
    x = specc.Input(shape=(5,), name="features")
    dense = layers.Dense(2)
    y = dense(x)
    assert y.shape == (None, 2) and dense.input is x and dense.output is y
    assert dense.built  # Keras builds a layer the first time it is called on a tensor
    with pytest.raises(TypeError, match="symbolic"):
        np.asarray(y)


def test_input_and_layer_dtype_and_name_checks():
    assert specc.Input(shape=(3,), dtype="int32").shape == (None, 3)
    assert specc.Input(batch_shape=(8, 3)).shape == (8, 3)
    with pytest.raises(ValueError, match="needs a shape"):
        specc.Input()
    with pytest.raises(ValueError, match="Input name"):
        specc.Input(shape=(3,), name="has space")
    with pytest.raises(TypeError, match="not callable"):
        specc.InputLayer(shape=(3,))(np.ones((1, 3)))


def test_layer_classes_document_their_signature():
    doc = inspect.getdoc(layers.Conv2D)
    assert "Conv2D(filters, kernel_size, strides, padding, ...)" in doc


def test_layer_yaml_and_api_configs_agree():
    """The API's layer config is the spec's: writing it as YAML validates."""
    layer = layers.Conv2D(4, 3, strides=2, padding="same", activation="relu", name="stem")
    entry = {"type": "Conv2D", **{k: list(v) if isinstance(v, tuple) else v for k, v in layer.get_config().items()}}
    text = yaml.safe_dump({"specc": 1, "model": {"input": [8, 8, 1], "layers": [entry]}})
    spec, errors = load_spec_text(text)
    assert not errors and spec.layers[0] == layer._spec
