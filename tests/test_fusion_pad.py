"""A ZeroPadding2D and the DepthwiseConv2D or Conv2D that alone reads it, run as one step (specc/layers/fusion.py's
PadDepthwise and PadConv): the convolution reads the unpadded input with the padding added to its own. The engine fuses
them only where nothing else reads the padding's output; the pair gives bit for bit what the two layers
give apart (outputs, weight and input gradients), the same at 1 and 2 threads, and its gradients match
finite differences in float64. The model's layers, weights and summary are the two layers."""

from __future__ import annotations

import numba
import numpy as np
import pytest
import yaml

from specc.engine import Engine
from specc.layers.fusion import PadConv, PadDepthwise
from specc.spec import load_spec_text

from .gradcheck import check
from .test_fusion import engine_for as unperturbed_engine
from .test_fusion import run


def pad(padding):
    return {"type": "ZeroPadding2D", "padding": padding}


def dw(**kw):
    return {"type": "DepthwiseConv2D", "kernel_size": 3, **kw}


def conv(**kw):
    return {"type": "Conv2D", "filters": 5, "kernel_size": 3, **kw}


# (id, [pad, conv], input shapes)
CASES = [
    # MobileNetV2's strided blocks: one row and column after, 3 x 3 stride 2 'valid'
    ("mobilenet_after_only", [pad([[0, 1], [0, 1]]), dw(strides=2, use_bias=False)], [[8, 8, 5]]),
    ("both_sides_bias_relu", [pad(1), dw(strides=2, activation="relu")], [[9, 8, 4]]),
    ("uneven_stride1", [pad([[2, 0], [1, 3]]), dw()], [[6, 7, 3]]),
    ("own_same_padding_multiplier", [pad([[1, 0], [0, 2]]), dw(padding="same", strides=2, depth_multiplier=2)],
     [[7, 6, 3]]),
    ("non_square_dilated", [pad([[0, 2], [3, 1]]), dw(kernel_size=[2, 3], dilation_rate=2)], [[6, 5, 2]]),
    ("pad_wider_than_input", [pad([[3, 3], [4, 4]]), dw(strides=2)], [[2, 2, 3]]),  # windows of padding only
    # Conv2D: ResNet's stems and strided blocks (pad then 'valid' stride 2), on both kernel paths (the direct
    # tiles for few filters, im2col + products for many), with the conv's own ReLU, 'same' and dilation
    ("conv_resnet_stride2", [pad(1), conv(strides=2, use_bias=False)], [[9, 8, 16]]),
    ("conv_both_sides_relu", [pad([[1, 2], [2, 1]]), conv(activation="relu")], [[7, 6, 3]]),
    ("conv_many_filters_stride2", [pad([[0, 1], [0, 1]]), conv(filters=40, strides=2)], [[8, 9, 8]]),
    ("conv_uneven_non_square", [pad([[2, 0], [0, 1]]), conv(kernel_size=[3, 2])], [[6, 5, 4]]),
    ("conv_dilated", [pad(2), conv(dilation_rate=2, filters=17)], [[5, 6, 2]]),
]
KIND = {"DepthwiseConv2D": PadDepthwise, "Conv2D": PadConv}
BATCH = 37  # odd, and several chunks of samples


def engine_for(layers, shapes, fuse, dtype=np.float32):
    """test_fusion's engine, with every parameter moved off its initial value (a nonzero bias)."""
    engine = unperturbed_engine(layers, shapes, fuse, dtype)
    engine.params += (np.random.default_rng(5).standard_normal(engine.params.shape) * 0.1).astype(engine.params.dtype)
    return engine


def sample(shapes):
    return np.random.default_rng(3).standard_normal((BATCH, *shapes[0])).astype(np.float32)


@pytest.mark.parametrize("layers,shapes", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_the_pair_runs_as_one_step(layers, shapes):
    engine = engine_for(layers, shapes, True)
    assert [type(s.layer) for s in engine.plan] == [KIND[layers[1]["type"]]]
    assert engine.plan[0].name == engine.steps[1].name  # the convolution's output, under its name
    assert engine.plan[0].weights == engine.steps[1].weights
    assert len(engine_for(layers, shapes, False).plan) == 2


@pytest.mark.parametrize("layers,shapes", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_same_bits_as_the_layers_apart(layers, shapes):
    x = sample(shapes)
    fused = run(engine_for(layers, shapes, True), x)
    apart = run(engine_for(layers, shapes, False), x)
    for a, b in zip(fused, apart):
        assert a.shape == b.shape
        assert np.array_equal(a, b)


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="needs two Numba threads")
@pytest.mark.parametrize("layers,shapes", [CASES[0][1:], CASES[3][1:], CASES[6][1:], CASES[8][1:]],
                         ids=[CASES[0][0], CASES[3][0], CASES[6][0], CASES[8][0]])
def test_same_bits_at_one_and_two_threads(layers, shapes):
    x = sample(shapes)
    one = run(engine_for(layers, shapes, True), x, threads=1)
    two = run(engine_for(layers, shapes, True), x, threads=2)
    for a, b in zip(one, two):
        assert np.array_equal(a, b)


@pytest.mark.parametrize("layers,shapes", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_gradient_matches_finite_differences(layers, shapes):
    check(layers, shapes, batch=3, training=True)


def _plan_types(model: dict) -> list[str]:
    spec, errors = load_spec_text(yaml.safe_dump({"specc": 1, "model": model}), "m.yaml")
    assert not errors, [e.text() for e in errors]
    return [type(s.layer).__name__ for s in Engine(spec.graph).plan]


X = {"x": [8, 8, 2]}


@pytest.mark.parametrize("model,expected", [
    # the padding's output is also a model output
    ({"inputs": X, "layers": [dict(pad(1), name="p", inputs="x"), dict(dw(), name="d", inputs="p")],
      "outputs": ["p", "d"]}, ["ZeroPadding2D", "DepthwiseConv2D"]),
    # read by a second layer
    ({"inputs": X, "layers": [dict(pad(1), name="p", inputs="x"), dict(dw(), name="d", inputs="p"),
                              dict(dw(), name="e", inputs="p")],
      "outputs": ["d", "e"]}, ["ZeroPadding2D", "DepthwiseConv2D", "DepthwiseConv2D"]),
    # other layers after the padding
    ({"input": [8, 8, 2], "layers": [pad(1), {"type": "SeparableConv2D", "filters": 2, "kernel_size": 3}]},
     ["ZeroPadding2D", "SeparableConv2D"]),
    ({"input": [8, 8, 2], "layers": [pad(1), {"type": "MaxPooling2D"}]}, ["ZeroPadding2D", "MaxPooling2D"]),
    # a Conv2D with its own 'same' padding too (fused only when 'valid')
    ({"input": [8, 8, 2], "layers": [pad(1), conv(padding="same", kernel_size=[3, 2])]}, ["ZeroPadding2D", "Conv2D"]),
    # a functional graph where the pair is not adjacent in the layer list
    ({"inputs": X, "layers": [dict(pad(1), name="p", inputs="x"), dict(dw(), name="e", inputs="x"),
                              dict(dw(), name="d", inputs="p")],
      "outputs": ["d", "e"]}, ["PadDepthwise", "DepthwiseConv2D"]),
    # inside a nested Sequential block, as specs/zoo/mobilenet_v2.yaml writes it
    ({"input": [8, 8, 2], "layers": [{"type": "Sequential", "name": "block",
                                      "layers": [pad([[0, 1], [0, 1]]), dw(strides=2)]}]}, ["PadDepthwise"]),
], ids=["pad_is_an_output", "pad_read_twice", "separable", "pooling", "conv_same", "functional", "nested_block"])
def test_fused_only_where_nothing_else_reads_the_padding(model, expected):
    assert _plan_types(model) == expected


MOBILE = {"input": [9, 10, 3], "layers": [
    {"type": "ZeroPadding2D", "name": "pad", "padding": [[0, 1], [0, 1]]},
    {"type": "DepthwiseConv2D", "name": "dwconv", "kernel_size": 3, "strides": 2, "activation": "relu"},
    {"type": "GlobalAveragePooling2D", "name": "gap"}, {"type": "Dense", "name": "head", "units": 2}]}


def mobile_spec(tmp_path):
    path = tmp_path / "pad_dw.yaml"
    path.write_text(yaml.safe_dump({"specc": 1, "model": MOBILE, "seed": 0,
                                    "compile": {"optimizer": "sgd", "loss": "mean_squared_error"}}))
    return path


def test_steps_and_weights_are_the_models():
    """The fusion is the engine's plan only: its steps (what get_weights, set_weights, initialize and
    adapt walk) keep both layers, and the weights are the same views."""
    spec, errors = load_spec_text(yaml.safe_dump({"specc": 1, "model": MOBILE}), "m.yaml")
    assert not errors
    fused, apart = Engine(spec.graph), Engine(spec.graph, fuse=False)
    assert [type(s.layer).__name__ for s in fused.plan] == ["PadDepthwise", "GlobalAveragePooling2D", "Dense"]
    assert [s.name for s in fused.steps] == [s.name for s in apart.steps] == ["pad", "dwconv", "gap", "head"]
    fused.initialize(0)
    apart.initialize(0)
    assert all(np.array_equal(a, b) for a, b in zip(fused.get_weights(), apart.get_weights(), strict=True))


def test_onnx_export_keeps_the_padding_and_matches_the_fused_predict():
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from specc.export import build_onnx
    from specc.train.fit import Trainer

    spec, errors = load_spec_text(yaml.safe_dump({"specc": 1, "model": MOBILE}), "m.yaml")
    assert not errors
    engine = Engine(spec.graph)
    engine.params[...] = np.random.default_rng(0).uniform(-0.6, 0.6, engine.params.shape)
    assert type(engine.plan[0].layer) is PadDepthwise
    model = build_onnx(engine, "pad_dw")
    assert "Pad" in [node.op_type for node in model.graph.node]
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(1).standard_normal((5, 9, 10, 3)).astype(np.float32)
    got = session.run(None, {session.get_inputs()[0].name: x})[0]
    np.testing.assert_allclose(got, Trainer.predict_with(engine, [x], 5)[0], rtol=1e-5, atol=1e-6)


def test_specc_time_reports_the_pair_as_one_row(tmp_path):
    import json
    import os
    import subprocess
    import sys

    env = dict(os.environ, PYTHONIOENCODING="utf-8", NO_COLOR="1")
    proc = subprocess.run([sys.executable, "-m", "specc.cli", "time", str(mobile_spec(tmp_path)), "--batch", "4",
                           "--iters", "1", "--format", "json"], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)["layers"]
    assert [(r["name"], r["type"], r["layers"]) for r in rows][0] == (
        "dwconv", "ZeroPadding2D+DepthwiseConv2D", ["pad", "dwconv"])
    assert [r["name"] for r in rows[1:]] == ["gap", "head"]
