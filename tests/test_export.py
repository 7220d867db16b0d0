"""ONNX export (specc/export): every layer type and option, and every example spec, exported with random
weights and run in ONNX Runtime; its outputs must equal specc's predict to 1e-5 relative at batch 1 and 37.

Skipped without onnx / onnxruntime (the `onnx` extra). The CLI's own cases are in tests/test_export_cli.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from specc.engine import Engine  # noqa: E402
from specc.export import ExportError, build_onnx  # noqa: E402
from specc.export.to_onnx import CONVERTERS  # noqa: E402
from specc.layers import REGISTRY  # noqa: E402
from specc.spec import load_spec, load_spec_text  # noqa: E402
from specc.train.fit import Trainer  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
SPECS = sorted((REPO / "specs").glob("**/*.yaml"))
BATCHES = (1, 37)


def random_weights(engine: Engine, seed: int = 0) -> None:
    """Every weight random (biases and BN statistics too, so a misplaced one shows); variances positive."""
    rng = np.random.default_rng(seed)
    for s in engine.steps:
        for w, spec in zip(s.weights, s.specs):
            value = rng.uniform(-0.6, 0.6, w.shape)
            if spec.name in ("moving_variance", "variance"):  # BatchNormalization's, Normalization's
                value = rng.uniform(0.5, 1.5, w.shape)
            w[...] = value


def inputs_for(engine: Engine, batch: int, seed: int = 1) -> list[np.ndarray]:
    """Random samples for each model input: token ids below input_dim for an input an Embedding reads."""
    rng = np.random.default_rng(seed)
    xs = []
    for node in engine.graph.inputs:
        shape = (batch, *(d or 5 for d in node.output_shape))
        readers = [s for s in engine.steps if node.name in s.inbound]
        if readers and readers[0].layer.type == "Embedding":
            xs.append(rng.integers(0, readers[0].layer.input_dim, shape).astype(np.float32))
        else:
            xs.append(rng.standard_normal(shape).astype(np.float32))
    return xs


def assert_same(engine: Engine, model, batches=BATCHES, make_inputs=inputs_for) -> None:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    assert names == [n.name for n in engine.graph.inputs]
    assert [o.name for o in session.get_outputs()] == list(engine.graph.outputs)
    for batch in batches:
        xs = make_inputs(engine, batch)
        expected = Trainer.predict_with(engine, xs, batch)
        got = session.run(None, dict(zip(names, xs)))
        for ref, out in zip(expected, got, strict=True):
            assert out.shape == ref.shape
            scale = float(np.abs(ref).max()) if ref.size else 0.0
            np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-6 * max(scale, 1e-3))


def sequential(input_shape, *layers: dict) -> str:
    lines = ["specc: 1", "name: case", "model:", f"  input: {json.dumps(list(input_shape))}", "  layers:"]
    lines += [f"    - {json.dumps(layer)}" for layer in layers]
    return "\n".join(lines) + "\n"


def engine_of(text: str) -> Engine:
    spec, errors = load_spec_text(text, "case.yaml")
    assert not errors, errors
    engine = Engine(spec.graph)
    random_weights(engine)
    return engine


ACTIVATIONS = ("linear", "relu", "relu6", "leaky_relu", "elu", "selu", "gelu", "sigmoid", "hard_sigmoid", "tanh",
               "softmax", "log_softmax", "softplus", "softsign", "silu", "exponential")

# (id, input shape without the batch axis, layer arguments): one layer between the input and the output.
CASES = [
    *[(f"dense-{a}", (6,), {"type": "Dense", "units": 4, "activation": a}) for a in ACTIVATIONS],
    *[(f"activation-{a}", (3, 5), {"type": "Activation", "activation": a}) for a in ("relu", "softmax", "gelu")],
    ("dense-no-bias", (6,), {"type": "Dense", "units": 4, "use_bias": False}),
    ("dense-rank3", (3, 6), {"type": "Dense", "units": 4, "activation": "relu"}),
    ("dense-rank3-no-bias", (3, 6), {"type": "Dense", "units": 4, "use_bias": False}),
    ("dropout", (6,), {"type": "Dropout", "rate": 0.5}),
    ("embedding", (7,), {"type": "Embedding", "input_dim": 11, "output_dim": 3}),
    ("conv1d", (9, 3), {"type": "Conv1D", "filters": 4, "kernel_size": 3}),
    ("conv1d-same-stride", (9, 3), {"type": "Conv1D", "filters": 4, "kernel_size": 3, "strides": 2, "padding": "same"}),
    ("conv1d-causal-dilated", (9, 3), {"type": "Conv1D", "filters": 4, "kernel_size": 3, "padding": "causal",
                                        "dilation_rate": 2, "activation": "tanh"}),
    ("conv1d-no-bias", (9, 3), {"type": "Conv1D", "filters": 4, "kernel_size": 2, "use_bias": False}),
    ("conv2d", (7, 6, 2), {"type": "Conv2D", "filters": 3, "kernel_size": 3, "activation": "relu"}),
    ("conv2d-same-stride2-odd", (7, 6, 2), {"type": "Conv2D", "filters": 3, "kernel_size": [3, 2], "strides": 2,
                                             "padding": "same"}),
    ("conv2d-same-stride3", (8, 7, 2), {"type": "Conv2D", "filters": 3, "kernel_size": 4, "strides": [3, 2],
                                         "padding": "same"}),
    ("conv2d-dilated-same", (8, 8, 2), {"type": "Conv2D", "filters": 3, "kernel_size": 3, "dilation_rate": 2,
                                         "padding": "same"}),
    ("conv2d-dilated-valid", (8, 8, 2), {"type": "Conv2D", "filters": 3, "kernel_size": 2, "dilation_rate": [2, 3]}),
    ("conv2d-no-bias", (6, 6, 2), {"type": "Conv2D", "filters": 3, "kernel_size": 3, "use_bias": False,
                                    "activation": "sigmoid"}),
    ("conv2d-transpose", (4, 5, 2), {"type": "Conv2DTranspose", "filters": 3, "kernel_size": 3}),
    ("conv2d-transpose-stride2", (4, 5, 2), {"type": "Conv2DTranspose", "filters": 3, "kernel_size": 3, "strides": 2}),
    ("conv2d-transpose-stride3-small-kernel", (4, 5, 2), {"type": "Conv2DTranspose", "filters": 3, "kernel_size": 2,
                                                           "strides": 3}),
    ("conv2d-transpose-same", (4, 5, 2), {"type": "Conv2DTranspose", "filters": 3, "kernel_size": 3, "strides": 2,
                                          "padding": "same"}),
    ("conv2d-transpose-same-even", (4, 5, 2), {"type": "Conv2DTranspose", "filters": 3, "kernel_size": 4,
                                               "strides": 2, "padding": "same", "activation": "relu"}),
    ("conv2d-transpose-output-padding", (4, 5, 2), {"type": "Conv2DTranspose", "filters": 3, "kernel_size": 3,
                                                    "strides": 2, "output_padding": [1, 0]}),
    ("conv2d-transpose-same-output-padding", (4, 5, 2), {"type": "Conv2DTranspose", "filters": 3, "kernel_size": 3,
                                                         "strides": 2, "padding": "same", "output_padding": 1}),
    ("conv2d-transpose-dilated", (4, 5, 2), {"type": "Conv2DTranspose", "filters": 3, "kernel_size": 3,
                                             "dilation_rate": 2, "use_bias": False}),
    ("depthwise", (6, 7, 3), {"type": "DepthwiseConv2D", "kernel_size": 3}),
    ("depthwise-multiplier-same-stride", (6, 7, 3), {"type": "DepthwiseConv2D", "kernel_size": 3, "depth_multiplier": 2,
                                                      "strides": 2, "padding": "same", "activation": "relu"}),
    ("depthwise-dilated-no-bias", (7, 7, 2), {"type": "DepthwiseConv2D", "kernel_size": 2, "dilation_rate": 2,
                                               "use_bias": False}),
    ("separable", (6, 7, 3), {"type": "SeparableConv2D", "filters": 4, "kernel_size": 3}),
    ("separable-multiplier-same-stride", (6, 7, 3), {"type": "SeparableConv2D", "filters": 4, "kernel_size": 3,
                                                      "depth_multiplier": 2, "strides": 2, "padding": "same",
                                                      "activation": "elu"}),
    ("separable-no-bias-dilated", (7, 7, 2), {"type": "SeparableConv2D", "filters": 2, "kernel_size": 2,
                                               "dilation_rate": 2, "use_bias": False}),
    ("conv1d-steps-known-at-run-time", (None, 3), {"type": "Conv1D", "filters": 4, "kernel_size": 3, "strides": 2,
                                                    "padding": "same"}),
    ("maxpool1d-steps-known-at-run-time", (None, 3), {"type": "MaxPooling1D", "pool_size": 3, "strides": 2,
                                                      "padding": "same"}),
    ("maxpool1d", (9, 3), {"type": "MaxPooling1D"}),
    ("maxpool1d-same-stride", (9, 3), {"type": "MaxPooling1D", "pool_size": 3, "strides": 2, "padding": "same"}),
    ("avgpool1d", (9, 3), {"type": "AveragePooling1D", "pool_size": 2}),
    ("avgpool1d-same", (9, 3), {"type": "AveragePooling1D", "pool_size": 3, "strides": 2, "padding": "same"}),
    ("maxpool2d", (7, 6, 2), {"type": "MaxPooling2D"}),
    ("maxpool2d-same-odd", (7, 5, 2), {"type": "MaxPooling2D", "pool_size": 3, "strides": [2, 1], "padding": "same"}),
    ("avgpool2d", (7, 6, 2), {"type": "AveragePooling2D", "pool_size": [2, 3]}),
    ("avgpool2d-same-odd", (7, 5, 2), {"type": "AveragePooling2D", "pool_size": 3, "strides": 2, "padding": "same"}),
    ("global-max-1d", (6, 3), {"type": "GlobalMaxPooling1D"}),
    ("global-avg-1d-keepdims", (6, 3), {"type": "GlobalAveragePooling1D", "keepdims": True}),
    ("global-max-2d-keepdims", (5, 4, 3), {"type": "GlobalMaxPooling2D", "keepdims": True}),
    ("global-avg-2d", (5, 4, 3), {"type": "GlobalAveragePooling2D"}),
    ("batchnorm", (6,), {"type": "BatchNormalization"}),
    ("batchnorm-axis1-rank3", (4, 5), {"type": "BatchNormalization", "axis": 1, "epsilon": 0.01}),
    ("batchnorm-image-no-center", (3, 4, 2), {"type": "BatchNormalization", "center": False}),
    ("batchnorm-no-scale", (6,), {"type": "BatchNormalization", "scale": False}),
    ("layernorm", (6,), {"type": "LayerNormalization"}),
    ("layernorm-axis1", (4, 5), {"type": "LayerNormalization", "axis": 1}),
    ("layernorm-no-center-no-scale", (3, 5), {"type": "LayerNormalization", "center": False, "scale": False}),
    ("layernorm-no-scale", (3, 5), {"type": "LayerNormalization", "scale": False, "epsilon": 0.1}),
    ("simple-rnn", (5, 3), {"type": "SimpleRNN", "units": 4}),
    ("simple-rnn-sequences-backwards", (5, 3), {"type": "SimpleRNN", "units": 4, "return_sequences": True,
                                                "go_backwards": True}),
    ("simple-rnn-relu-no-bias", (5, 3), {"type": "SimpleRNN", "units": 4, "activation": "relu", "use_bias": False}),
    ("simple-rnn-linear", (5, 3), {"type": "SimpleRNN", "units": 4, "activation": "linear"}),
    ("lstm", (5, 3), {"type": "LSTM", "units": 4}),
    ("lstm-steps-known-at-run-time", (None, 3), {"type": "LSTM", "units": 4, "return_sequences": True}),
    ("lstm-sequences", (5, 3), {"type": "LSTM", "units": 4, "return_sequences": True}),
    ("lstm-backwards", (5, 3), {"type": "LSTM", "units": 4, "go_backwards": True}),
    ("lstm-sequences-backwards", (5, 3), {"type": "LSTM", "units": 4, "return_sequences": True, "go_backwards": True}),
    ("lstm-hard-sigmoid-no-bias", (5, 3), {"type": "LSTM", "units": 4, "recurrent_activation": "hard_sigmoid",
                                           "use_bias": False}),
    ("lstm-relu-softsign", (5, 3), {"type": "LSTM", "units": 4, "activation": "relu",
                                    "recurrent_activation": "softsign"}),
    ("gru", (5, 3), {"type": "GRU", "units": 4}),
    ("gru-sequences-backwards", (5, 3), {"type": "GRU", "units": 4, "return_sequences": True, "go_backwards": True}),
    ("gru-reset-before", (5, 3), {"type": "GRU", "units": 4, "reset_after": False}),
    ("gru-reset-before-sequences", (5, 3), {"type": "GRU", "units": 4, "reset_after": False,
                                            "return_sequences": True}),
    ("gru-no-bias", (5, 3), {"type": "GRU", "units": 4, "use_bias": False}),
    ("gru-elu-hard-sigmoid", (5, 3), {"type": "GRU", "units": 4, "activation": "elu",
                                      "recurrent_activation": "hard_sigmoid"}),
    ("flatten", (3, 4, 2), {"type": "Flatten"}),
    ("reshape", (3, 4, 2), {"type": "Reshape", "target_shape": [6, 4]}),
    ("reshape-inferred", (3, 4, 2), {"type": "Reshape", "target_shape": [2, -1, 3]}),
    ("permute", (3, 4, 2), {"type": "Permute", "dims": [3, 1, 2]}),
    ("repeat-vector", (4,), {"type": "RepeatVector", "n": 3}),
    ("zero-padding1d", (5, 2), {"type": "ZeroPadding1D", "padding": [1, 3]}),
    ("zero-padding2d", (4, 3, 2), {"type": "ZeroPadding2D", "padding": [[1, 0], [2, 3]]}),
    ("cropping1d", (6, 2), {"type": "Cropping1D", "cropping": [2, 0]}),
    ("cropping2d", (6, 5, 2), {"type": "Cropping2D", "cropping": [[1, 2], [0, 1]]}),
    ("upsampling1d", (4, 2), {"type": "UpSampling1D", "size": 3}),
    ("upsampling2d", (3, 4, 2), {"type": "UpSampling2D", "size": [2, 3]}),
    ("upsampling2d-bilinear", (3, 4, 2), {"type": "UpSampling2D", "size": [2, 3], "interpolation": "bilinear"}),
    ("relu-layer", (3, 5), {"type": "ReLU"}),
    ("relu-max-value", (3, 5), {"type": "ReLU", "max_value": 0.5}),
    ("relu-threshold", (3, 5), {"type": "ReLU", "threshold": 0.3}),
    ("relu-slope", (3, 5), {"type": "ReLU", "negative_slope": 0.2}),
    ("relu-slope-threshold-max", (3, 5), {"type": "ReLU", "negative_slope": 0.1, "threshold": 0.4, "max_value": 1.2}),
    ("leaky-relu-layer", (3, 5), {"type": "LeakyReLU"}),
    ("leaky-relu-slope", (6,), {"type": "LeakyReLU", "negative_slope": 0.05}),
    ("prelu", (4, 3, 2), {"type": "PReLU"}),
    ("prelu-shared-axes", (4, 3, 2), {"type": "PReLU", "shared_axes": [1, 2]}),
    ("prelu-shared-last", (4, 3), {"type": "PReLU", "shared_axes": 2}),
    ("elu-layer", (3, 5), {"type": "ELU"}),
    ("elu-alpha", (3, 5), {"type": "ELU", "alpha": 0.4}),
    ("softmax-layer", (3, 5), {"type": "Softmax"}),
    ("softmax-axis1", (3, 4, 2), {"type": "Softmax", "axis": 1}),
    ("softmax-axes", (3, 4, 2), {"type": "Softmax", "axis": [1, -1]}),
    ("rescaling", (4, 3), {"type": "Rescaling", "scale": 0.25, "offset": -1.5}),
    ("rescaling-per-channel", (4, 3), {"type": "Rescaling", "scale": [0.5, 2.0, -1.0], "offset": [0.1, 0.2, 0.3]}),
    ("normalization-given", (4, 3), {"type": "Normalization", "mean": 0.5, "variance": 4.0}),
    ("normalization-given-per-channel", (4, 3), {"type": "Normalization", "mean": [0.5, -1.0, 2.0],
                                                 "variance": [4.0, 0.25, 0.0]}),
    ("normalization-given-invert", (4, 3), {"type": "Normalization", "mean": [0.5, -1.0, 2.0],
                                            "variance": [4.0, 0.25, 1.0], "invert": True}),
    ("normalization-weights", (4, 3), {"type": "Normalization"}),
    ("normalization-weights-axes", (4, 3, 2), {"type": "Normalization", "axis": [1, 3]}),
    ("normalization-weights-no-axis-invert", (4, 3), {"type": "Normalization", "axis": None, "invert": True}),
    ("spatial-dropout1d", (5, 3), {"type": "SpatialDropout1D", "rate": 0.5}),
    ("spatial-dropout2d", (4, 5, 3), {"type": "SpatialDropout2D", "rate": 0.5}),
    ("gaussian-noise", (6,), {"type": "GaussianNoise", "stddev": 0.5}),
    ("conv3d", (5, 6, 4, 2), {"type": "Conv3D", "filters": 3, "kernel_size": 3}),
    ("conv3d-same-stride", (5, 6, 4, 2), {"type": "Conv3D", "filters": 3, "kernel_size": [3, 2, 3], "strides": 2,
                                          "padding": "same", "activation": "relu"}),
    ("conv3d-dilated-no-bias", (5, 6, 5, 2), {"type": "Conv3D", "filters": 2, "kernel_size": 2,
                                              "dilation_rate": [2, 1, 2], "use_bias": False}),
    ("maxpool3d", (4, 6, 5, 2), {"type": "MaxPooling3D"}),
    ("maxpool3d-same-odd", (5, 4, 3, 2), {"type": "MaxPooling3D", "pool_size": 3, "strides": [2, 1, 2],
                                          "padding": "same"}),
    ("avgpool3d", (4, 6, 5, 2), {"type": "AveragePooling3D", "pool_size": [2, 3, 2]}),
    ("avgpool3d-same-uneven", (5, 4, 3, 2), {"type": "AveragePooling3D", "pool_size": 2, "strides": 2,
                                             "padding": "same"}),
    ("avgpool3d-same-stride1", (3, 4, 3, 2), {"type": "AveragePooling3D", "pool_size": 3, "strides": 1,
                                              "padding": "same"}),
    ("global-max-3d", (3, 4, 2, 3), {"type": "GlobalMaxPooling3D"}),
    ("global-max-3d-keepdims", (3, 4, 2, 3), {"type": "GlobalMaxPooling3D", "keepdims": True}),
    ("global-avg-3d", (3, 4, 2, 3), {"type": "GlobalAveragePooling3D"}),
    ("global-avg-3d-keepdims", (3, 4, 2, 3), {"type": "GlobalAveragePooling3D", "keepdims": True}),
    ("bidirectional-lstm", (5, 3), {"type": "Bidirectional", "layer": {"type": "LSTM", "units": 4}}),
    ("bidirectional-lstm-sequences", (5, 3), {"type": "Bidirectional", "layer": {"type": "LSTM", "units": 4,
                                                                                 "return_sequences": True}}),
    ("bidirectional-gru-sum-sequences", (5, 3), {"type": "Bidirectional", "merge_mode": "sum",
                                                 "layer": {"type": "GRU", "units": 4, "return_sequences": True}}),
    ("bidirectional-rnn-mul", (5, 3), {"type": "Bidirectional", "merge_mode": "mul",
                                       "layer": {"type": "SimpleRNN", "units": 4}}),
    ("bidirectional-gru-ave", (5, 3), {"type": "Bidirectional", "merge_mode": "ave",
                                       "layer": {"type": "GRU", "units": 4, "reset_after": False}}),
    ("bidirectional-backward-layer", (5, 3), {"type": "Bidirectional",
                                              "layer": {"type": "LSTM", "units": 4, "return_sequences": True},
                                              "backward_layer": {"type": "GRU", "units": 3, "go_backwards": True,
                                                                 "return_sequences": True}}),
    ("bidirectional-forward-layer-goes-backwards", (5, 3), {
        "type": "Bidirectional", "merge_mode": "sum",
        "layer": {"type": "SimpleRNN", "units": 4, "go_backwards": True, "return_sequences": True},
        "backward_layer": {"type": "SimpleRNN", "units": 4, "activation": "relu", "return_sequences": True}}),
    ("bidirectional-steps-known-at-run-time", (None, 3), {"type": "Bidirectional", "layer": {
        "type": "LSTM", "units": 4, "return_sequences": True}}),
    ("time-distributed-dense", (3, 6), {"type": "TimeDistributed", "layer": {"type": "Dense", "units": 4,
                                                                             "activation": "softmax"}}),
    ("time-distributed-dense-rank4", (3, 2, 6), {"type": "TimeDistributed", "layer": {"type": "Dense", "units": 4}}),
    ("time-distributed-conv2d", (3, 5, 5, 2), {"type": "TimeDistributed", "layer": {
        "type": "Conv2D", "filters": 3, "kernel_size": 3, "strides": 2, "padding": "same", "activation": "relu"}}),
    ("time-distributed-maxpool-flatten", (3, 6, 2), {"type": "TimeDistributed", "layer": {"type": "MaxPooling1D"}}),
    ("time-distributed-flatten", (3, 4, 2), {"type": "TimeDistributed", "layer": {"type": "Flatten"}}),
    ("time-distributed-lstm", (3, 5, 2), {"type": "TimeDistributed", "layer": {"type": "LSTM", "units": 3}}),
    ("time-distributed-steps-known-at-run-time", (None, 6), {"type": "TimeDistributed", "layer": {
        "type": "Dense", "units": 4}}),
    ("time-distributed-prelu", (3, 4, 2), {"type": "TimeDistributed", "layer": {"type": "PReLU"}}),
]


@pytest.mark.parametrize("input_shape, layer", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_layer_exports_like_predict(input_shape, layer):
    engine = engine_of(sequential(input_shape, layer))
    assert_same(engine, build_onnx(engine, "case"))


MERGES = [
    ("add", "Add", {}, [[4, 3], [4, 3], [4, 3]]),
    ("add-broadcast-lower-rank", "Add", {}, [[4, 3], [3]]),
    ("add-broadcast-size-1", "Add", {}, [[4, 3], [1, 3]]),
    ("subtract", "Subtract", {}, [[4, 3], [4, 3]]),
    ("multiply", "Multiply", {}, [[4, 3], [4, 1], [4, 3]]),
    ("average", "Average", {}, [[4, 3], [4, 3], [4, 3]]),
    ("maximum", "Maximum", {}, [[4, 3], [4, 3]]),
    ("minimum", "Minimum", {}, [[4, 3], [3], [4, 3]]),
    ("concatenate", "Concatenate", {}, [[4, 3], [4, 2]]),
    ("concatenate-axis1", "Concatenate", {"axis": 1}, [[4, 3], [2, 3]]),
]


@pytest.mark.parametrize("kind, args, shapes", [m[1:] for m in MERGES], ids=[m[0] for m in MERGES])
def test_merge_exports_like_predict(kind, args, shapes):
    names = [f"in_{k}" for k in range(len(shapes))]
    text = ("specc: 1\nname: merge\nmodel:\n  inputs: {" + ", ".join(f"{n}: {s}" for n, s in zip(names, shapes))
            + "}\n  layers:\n" + f"    - {json.dumps({'type': kind, 'name': 'merged', 'inputs': names, **args})}\n"
            + "  outputs: merged\n")
    engine = engine_of(text)
    assert_same(engine, build_onnx(engine, "merge"))


def test_nested_block_and_shared_tensors_export():
    text = """specc: 1
name: nested
model:
  inputs: {a: [8], b: [8]}
  layers:
    - {type: Sequential, name: block, inputs: a, layers: [{type: Dense, units: 8, activation: relu},
       {type: BatchNormalization}, {type: Dropout, rate: 0.3}]}
    - {type: Add, name: sum, inputs: [block, b]}
    - {type: Dense, name: head, units: 3, activation: softmax, inputs: sum}
    - {type: Dense, name: side, units: 2, inputs: block}
  outputs: [head, block, side]
"""
    engine = engine_of(text)
    assert_same(engine, build_onnx(engine, "nested"))


def test_converter_table_covers_every_layer_type():
    # A layer type added to specc needs its ONNX converter (one entry in CONVERTERS) before it ships.
    assert set(REGISTRY) - {"Sequential"} <= set(CONVERTERS)


@pytest.mark.parametrize("path", SPECS, ids=[p.stem for p in SPECS])
def test_example_spec_exports_like_predict(path):
    spec, errors = load_spec(str(path))
    assert not errors
    engine = Engine(spec.graph)
    engine.initialize(spec.seed)
    model = build_onnx(engine, spec.name)
    assert_same(engine, model)
    props = {p.key: p.value for p in model.metadata_props}
    assert props["name"] == spec.name
    import specc

    assert props["specc_version"] == specc.__version__
    onnx.checker.check_model(model, full_check=True)
    # the batch axis is dynamic, every other size the spec's
    for value, node in zip(model.graph.input, spec.graph.inputs):
        dims = value.type.tensor_type.shape.dim
        assert dims[0].dim_param == "batch" and [d.dim_value for d in dims[1:]] == list(node.output_shape)


def test_normalization_is_part_of_the_graph():
    """With a run's normalization.json the exported model takes raw features: (x - mean) / std inside."""
    engine = engine_of(sequential((4,), {"type": "Dense", "units": 3, "activation": "softmax"}))
    mean, std = np.array([1.0, -2.0, 0.5, 3.0]), np.array([2.0, 0.5, 1.0, 4.0])
    model = build_onnx(engine, "case", {"inputs": [{"mean": mean.tolist(), "std": std.tolist()}]})
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    raw = np.random.default_rng(3).normal(2.0, 3.0, (9, 4)).astype(np.float32)
    normalized = ((raw - mean.astype(np.float32)) / std.astype(np.float32)).astype(np.float32)
    expected = Trainer.predict_with(engine, [normalized], 9)[0]
    np.testing.assert_allclose(session.run(None, {"input_layer": raw})[0], expected, rtol=1e-5, atol=1e-7)
    assert {p.key: p.value for p in model.metadata_props}["normalization"] == "in the graph"


def test_normalization_of_another_input_shape_is_an_error():
    engine = engine_of(sequential((4,), {"type": "Dense", "units": 3}))
    with pytest.raises(ExportError, match=r"statistics of shape \(3,\).*input 'input_layer'.*\(4,\)"):
        build_onnx(engine, "case", {"inputs": [{"mean": [0.0, 1.0, 2.0], "std": [1.0, 1.0, 1.0]}]})


def test_recurrent_activation_without_onnx_form_is_an_error_naming_the_layer():
    engine = engine_of(sequential((5, 3), {"type": "SimpleRNN", "units": 4, "activation": "selu", "name": "rnn"}))
    with pytest.raises(ExportError, match=r"SimpleRNN 'rnn'.*'selu'") as info:
        build_onnx(engine, "case")
    assert info.value.layer == "rnn"


def test_unknown_layer_type_is_an_error_before_anything_is_built(monkeypatch):
    engine = engine_of(sequential((6,), {"type": "Dense", "units": 4}, {"type": "Dropout", "rate": 0.1,
                                                                        "name": "drop"}))
    monkeypatch.delitem(CONVERTERS, "Dropout")
    with pytest.raises(ExportError, match="Dropout 'drop' cannot be exported") as info:
        build_onnx(engine, "case")
    assert info.value.layer == "drop"


def test_api_export_matches_predict(tmp_path):
    import specc
    from specc import layers

    model = specc.Sequential([specc.Input(shape=(8, 8, 1), name="pixels"),
                              layers.Conv2D(4, 3, activation="relu", padding="same"), layers.MaxPooling2D(),
                              layers.Flatten(), layers.Dense(3, activation="softmax", name="label")])
    path = tmp_path / "model.onnx"
    model.export(str(path), format="onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].name == "pixels" and session.get_outputs()[0].name == "label"
    x = np.random.default_rng(0).standard_normal((37, 8, 8, 1)).astype(np.float32)
    np.testing.assert_allclose(session.run(None, {"pixels": x})[0], model.predict(x, verbose=0), rtol=1e-5,
                               atol=1e-7)
    before = path.read_bytes()
    with pytest.raises(FileExistsError, match="never overwrites"):
        model.export(str(path))
    assert path.read_bytes() == before
    with pytest.raises(ValueError, match="format='onnx'"):
        model.export(str(tmp_path / "m.tf"), format="tf_saved_model")
    assert not (tmp_path / "m.tf").exists()


def test_api_export_of_an_unsupported_layer_is_a_value_error_and_writes_nothing(tmp_path):
    import specc
    from specc import layers

    model = specc.Sequential([specc.Input(shape=(5, 3)), layers.GRU(4, activation="gelu", name="gru")])
    path = tmp_path / "model.onnx"
    with pytest.raises(ValueError, match="GRU 'gru'.*'gelu'"):
        model.export(str(path))
    assert list(tmp_path.iterdir()) == []


# (id, {input name: sample shape}, layer arguments and `inputs`): MultiHeadAttention between the inputs and
# the output.
ATTENTION = [
    ("self", {"x": [5, 6]}, {"num_heads": 2, "key_dim": 3, "inputs": ["x", "x"]}),
    ("cross-key-value-dim", {"q": [4, 6], "v": [5, 7], "k": [5, 3]},
     {"num_heads": 3, "key_dim": 2, "value_dim": 4, "inputs": ["q", "v", "k"]}),
    ("output-shape", {"q": [4, 6], "v": [5, 7]}, {"num_heads": 2, "key_dim": 3, "output_shape": [3, 2],
                                                  "inputs": ["q", "v"]}),
    ("no-bias-dropout", {"x": [5, 6]}, {"num_heads": 2, "key_dim": 4, "use_bias": False, "dropout": 0.5,
                                        "inputs": ["x", "x"]}),
    ("causal", {"x": [5, 6]}, {"num_heads": 2, "key_dim": 3, "use_causal_mask": True, "inputs": ["x", "x"]}),
    ("causal-cross", {"q": [4, 6], "v": [6, 6]}, {"num_heads": 2, "key_dim": 3, "use_causal_mask": True,
                                                  "inputs": ["q", "v"]}),
    ("causal-steps-known-at-run-time", {"x": [None, 6]}, {"num_heads": 2, "key_dim": 3, "use_causal_mask": True,
                                                          "inputs": ["x", "x"]}),
    ("two-position-axes", {"x": [2, 3, 6]}, {"num_heads": 2, "key_dim": 3, "inputs": ["x", "x"]}),
    ("attention-axes-first", {"x": [2, 3, 6]}, {"num_heads": 2, "key_dim": 3, "attention_axes": [1],
                                                "inputs": ["x", "x"]}),
    ("attention-axes-last-output-shape", {"q": [2, 3, 6], "v": [2, 4, 5]},
     {"num_heads": 2, "key_dim": 3, "attention_axes": -2, "output_shape": [2, 2], "inputs": ["q", "v"]}),
    ("mask", {"q": [4, 6], "v": [5, 6], "m": [4, 5]},
     {"num_heads": 2, "key_dim": 3, "inputs": {"query": "q", "value": "v", "attention_mask": "m"}}),
    ("mask-broadcast-queries", {"q": [4, 6], "v": [5, 6], "m": [1, 5]},
     {"num_heads": 2, "key_dim": 3, "inputs": {"query": "q", "value": "v", "attention_mask": "m"}}),
    ("mask-and-causal-with-key", {"x": [5, 6], "k": [5, 2], "m": [5, 5]},
     {"num_heads": 2, "key_dim": 3, "use_causal_mask": True,
      "inputs": {"query": "x", "value": "x", "key": "k", "attention_mask": "m"}}),
]


def attention_inputs(engine: Engine, batch: int) -> list[np.ndarray]:
    """inputs_for's, with an attention mask of 0s and 1s: about a third masked, key 0 allowed to every query
    (so with the causal mask too each query has a key; a query with none is test_fully_masked_query_...)."""
    xs = inputs_for(engine, batch)
    for k, node in enumerate(engine.graph.inputs):
        if node.name == "m":
            mask = (np.random.default_rng(2).random(xs[k].shape) > 0.35).astype(np.float32)
            mask[..., 0] = 1
            xs[k] = mask
    return xs


@pytest.mark.parametrize("inputs, args", [a[1:] for a in ATTENTION], ids=[a[0] for a in ATTENTION])
def test_attention_exports_like_predict(inputs, args):
    text = ("specc: 1\nname: attention\nmodel:\n  inputs: " + json.dumps(inputs) + "\n  layers:\n"
            + f"    - {json.dumps({'type': 'MultiHeadAttention', 'name': 'att', **args})}\n  outputs: att\n")
    engine = engine_of(text)
    assert_same(engine, build_onnx(engine, "attention"), make_inputs=attention_inputs)


def test_attention_over_positions_of_unknown_size_is_an_error_naming_the_layer():
    text = """specc: 1
name: attention
model:
  inputs: {x: [null, 3, 6]}
  layers:
    - {type: MultiHeadAttention, name: att, num_heads: 2, key_dim: 3, inputs: [x, x]}
  outputs: att
"""
    engine = engine_of(text)
    with pytest.raises(ExportError, match=r"MultiHeadAttention 'att'.*2 position axes.*sizes known") as info:
        build_onnx(engine, "attention")
    assert info.value.layer == "att"


def test_time_distributed_layer_without_converter_is_an_error_naming_both(monkeypatch):
    engine = engine_of(sequential((3, 4, 2), {"type": "TimeDistributed", "name": "td", "layer": {"type": "Flatten"}}))
    monkeypatch.delitem(CONVERTERS, "Flatten")
    with pytest.raises(ExportError, match="TimeDistributed 'td'.*Flatten") as info:
        build_onnx(engine, "case")
    assert info.value.layer == "td"


def test_fully_masked_query_gets_a_zero_context():
    """specc's masked softmax (specc/kernels/attention.py) gives a query that may attend to no key zero
    probabilities, so its output is attention_output's bias; the exported model does the same, and equals
    predict on the other queries."""
    text = """specc: 1
name: attention
model:
  inputs: {q: [4, 6], v: [5, 6], m: [4, 5]}
  layers:
    - {type: MultiHeadAttention, name: att, num_heads: 2, key_dim: 3,
       inputs: {query: q, value: v, attention_mask: m}}
  outputs: att
"""
    engine = engine_of(text)
    session = ort.InferenceSession(build_onnx(engine, "attention").SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    xs = attention_inputs(engine, 3)
    xs[2][1, 2, :] = 0  # sample 1, query 2: no key allowed
    got = session.run(None, dict(zip(["q", "v", "m"], xs)))[0]
    bias = engine.steps[0].weights[-1]
    np.testing.assert_allclose(got[1, 2], bias, rtol=1e-6)
    expected = Trainer.predict_with(engine, xs, 3)[0]
    rows = np.ones(got.shape[:2], bool)
    rows[1, 2] = False
    np.testing.assert_allclose(got[rows], expected[rows], rtol=1e-5, atol=1e-6)
