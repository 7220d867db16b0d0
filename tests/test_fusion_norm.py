"""BatchNormalization (last axis) or a two-input Add, and the ReLU/ReLU6 Activation that alone reads it, run
as one step (layers/fusion.py's BatchNormAct and AddAct; kernels/norm.py's batch_* passes), and so do a
two-input Add and the LayerNormalization (last axis) that alone reads it (AddNorm): where the engine
fuses, that the gradients match finite differences in float64 (training-mode statistics), that the fused
step gives what the layers give apart, that the batch statistics stay accurate for a large mean over many
rows, and that results do not depend on the thread count."""

from __future__ import annotations

import numba
import numpy as np
import pytest
import yaml

from specc.engine import Engine
from specc.spec import load_spec_text

from .gradcheck import central_difference, check

BN = {"type": "BatchNormalization"}


def relu(name="relu"):
    return {"type": "Activation", "activation": name}


def engine_of(model: dict, dtype=np.float32, fuse=True) -> Engine:
    spec, errors = load_spec_text(yaml.safe_dump({"specc": 1, "seed": 0, "model": model}), "m.yaml")
    assert not errors, [e.text() for e in errors]
    engine = Engine(spec.graph, dtype, fuse=fuse)
    engine.initialize(0)
    return engine


def plan_types(model: dict) -> list[str]:
    return [type(s.layer).__name__ for s in engine_of(model).plan]


RESIDUAL = {  # a residual block as ResNet writes it: conv, BN, ReLU, conv, BN, Add with the input, ReLU
    "inputs": {"x": [6, 5, 4]},
    "layers": [{"type": "Conv2D", "filters": 4, "kernel_size": 3, "padding": "same", "name": "c1", "inputs": "x"},
               dict(BN, name="b1", inputs="c1"), dict(relu(), name="r1", inputs="b1"),
               {"type": "Conv2D", "filters": 4, "kernel_size": 3, "padding": "same", "name": "c2", "inputs": "r1"},
               dict(BN, name="b2", inputs="c2"), {"type": "Add", "name": "add", "inputs": ["b2", "x"]},
               dict(relu(), name="out", inputs="add")],
    "outputs": "out"}


@pytest.mark.parametrize("model,expected", [
    ({"input": [5, 3], "layers": [BN, relu()]}, ["BatchNormAct"]),
    ({"input": [5, 3], "layers": [BN, relu("relu6")]}, ["BatchNormAct"]),
    ({"input": [5, 3], "layers": [BN, relu("tanh")]}, ["BatchNormalization", "Activation"]),
    ({"input": [5, 3], "layers": [dict(BN, axis=1), relu()]}, ["BatchNormalization", "Activation"]),
    # the normalisation's output is read by a second layer
    ({"inputs": {"x": [3]}, "layers": [dict(BN, name="b", inputs="x"), dict(relu(), name="r", inputs="b"),
                                       {"type": "Dense", "units": 2, "name": "d", "inputs": "b"}],
      "outputs": ["r", "d"]}, ["BatchNormalization", "Activation", "Dense"]),
    (RESIDUAL, ["Conv2D", "BatchNormAct", "Conv2D", "BatchNormalization", "AddAct"]),
    # three inputs: not fused (relu(a + b + c) is one sum, then the ReLU)
    ({"inputs": {"a": [3], "b": [3], "c": [3]},
      "layers": [{"type": "Add", "name": "s", "inputs": ["a", "b", "c"]}, dict(relu(), name="r", inputs="s")],
      "outputs": "r"}, ["Add", "Activation"]),
], ids=["bn_relu", "bn_relu6", "bn_tanh", "bn_axis1", "bn_read_twice", "residual", "add3"])
def test_fused_where_the_activation_alone_reads_it(model, expected):
    assert plan_types(model) == expected


@pytest.mark.parametrize("layers,shapes", [
    ([{"type": "Dense", "units": 5}, BN, relu()], [[4]]),
    ([{"type": "Conv2D", "filters": 3, "kernel_size": 2}, BN, relu("relu6")], [[4, 5, 2]]),
    ([{"type": "Conv2D", "filters": 3, "kernel_size": 2}, dict(BN, center=False), relu()], [[4, 5, 2]]),
    ([{"type": "Dense", "units": 5}, dict(BN, scale=False)], [[4]]),
], ids=["dense_bn_relu", "conv_bn_relu6", "bn_no_center_relu", "bn_no_scale"])
def test_gradient_matches_finite_differences(layers, shapes):
    # batch 7: statistics over several rows; the Dense/Conv2D in front makes the weights' gradients pass
    # through the normalisation's (training) input gradient
    check(layers, shapes, batch=7, training=True)


def test_add_relu_gradient_matches_finite_differences():
    engine = engine_of({"inputs": {"a": [4, 3], "b": [4, 3]},
                        "layers": [{"type": "Add", "name": "s", "inputs": ["a", "b"]}, dict(relu(), name="r", inputs="s")],
                        "outputs": "r"}, np.float64)
    assert [type(s.layer).__name__ for s in engine.plan] == ["AddAct"]
    rng = np.random.default_rng(2)
    a, b = rng.standard_normal((5, 4, 3)), rng.standard_normal((5, 4, 3))
    r = rng.standard_normal((5, 4, 3))
    out = engine.forward([a, b], training=True)[0]
    np.testing.assert_array_equal(out, np.maximum(a + b, 0))
    engine.backward([r])
    h = 1e-6
    for name, x in (("a", a), ("b", b)):
        numeric = np.empty_like(x)
        for i in np.ndindex(x.shape):
            old = x[i]
            x[i] = old + h
            up = np.sum(engine.forward([a, b])[0] * r)
            x[i] = old - h
            down = np.sum(engine.forward([a, b])[0] * r)
            x[i] = old
            numeric[i] = (up - down) / (2 * h)
        np.testing.assert_allclose(engine._input_grads[name], numeric, rtol=1e-6, atol=1e-8)


def run(engine, x):
    out = engine.forward([x], training=True)[0].copy()
    engine.backward([np.random.default_rng(4).standard_normal(out.shape).astype(x.dtype)])
    return out, engine.grads.copy(), engine._input_grads[engine.input_names[0]].copy()


def test_residual_block_fused_gives_what_the_layers_give_apart():
    x = np.random.default_rng(3).standard_normal((9, 6, 5, 4)).astype(np.float32)
    fused, apart = engine_of(RESIDUAL), engine_of(RESIDUAL, fuse=False)
    for e in (fused, apart):
        e.params[...] += np.random.default_rng(5).standard_normal(e.params.shape).astype(np.float32) * 0.1
    got, want = run(fused, x), run(apart, x)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=2e-5, atol=2e-5 * np.abs(w).max())
    np.testing.assert_allclose(fused.params, apart.params, rtol=1e-6, atol=1e-7)  # moving statistics too


def test_batch_statistics_accurate_for_a_large_mean_over_many_rows():
    # 40,000 rows with mean 1000 and spread 1: float32 running sums of x and x^2 would cancel (the variance
    # is 1e-6 of the mean's square) and lose the spread; the output is the float64 normalisation
    engine = engine_of({"input": [3], "layers": [dict(BN, momentum=0.5)]})
    rng = np.random.default_rng(6)
    x = (1000 + rng.standard_normal((40000, 3)) * np.array([1.0, 0.5, 2.0])).astype(np.float32)
    out = engine.forward([x], training=True)[0]
    x64 = x.astype(np.float64)
    mean, var = x64.mean(0), x64.var(0)
    np.testing.assert_allclose(out, (x64 - mean) / np.sqrt(var + 1e-3), atol=2e-4)
    # the moving statistics, from zeros and ones: half of them, half the batch's
    np.testing.assert_allclose(engine.params[-6:-3], 0.5 * mean, rtol=1e-7)
    np.testing.assert_allclose(engine.params[-3:], 0.5 + 0.5 * var, rtol=1e-4)


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="needs two Numba threads")
def test_same_bits_at_one_and_two_threads():
    from specc.kernels import configure_threads, thread_count

    x = np.random.default_rng(7).standard_normal((64, 8, 8, 4)).astype(np.float32)
    before = thread_count()
    results = []
    try:
        for threads in (1, 2):
            configure_threads(threads)
            results.append(run(engine_of(RESIDUAL), x))
    finally:
        configure_threads(before)
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b)


LN = {"type": "LayerNormalization"}


def add_norm(norm=LN, shapes=([5, 8], [5, 8])):
    """Two inputs, their sum, its normalisation."""
    return {"inputs": {"a": shapes[0], "b": shapes[1]},
            "layers": [{"type": "Add", "name": "s", "inputs": ["a", "b"]}, dict(norm, name="n", inputs="s")],
            "outputs": "n"}


@pytest.mark.parametrize("model,expected", [
    (add_norm(), ["AddNorm"]),
    (add_norm(dict(LN, axis=2)), ["AddNorm"]),  # the last axis by its index
    (add_norm(dict(LN, axis=1)), ["Add", "LayerNormalization"]),
    (add_norm(dict(LN, center=False, scale=False)), ["AddNorm"]),
    # the sum is also read by a second layer
    ({"inputs": {"a": [8], "b": [8]},
      "layers": [{"type": "Add", "name": "s", "inputs": ["a", "b"]}, dict(LN, name="n", inputs="s"),
                 {"type": "Dense", "units": 2, "name": "d", "inputs": "s"}],
      "outputs": ["n", "d"]}, ["Add", "LayerNormalization", "Dense"]),
], ids=["last_axis", "axis_2", "axis_1", "no_affine", "sum_read_twice"])
def test_add_then_layernorm_fused_where_it_alone_reads_the_sum(model, expected):
    assert plan_types(model) == expected


@pytest.mark.parametrize("shapes", [([5, 8], [5, 8]), ([5, 8], [1, 8])], ids=["same_shape", "broadcast"])
def test_add_norm_gradient_matches_finite_differences(shapes):
    engine = engine_of(add_norm(dict(LN, epsilon=1e-3), shapes), np.float64)
    assert [type(s.layer).__name__ for s in engine.plan] == ["AddNorm"]
    rng = np.random.default_rng(8)
    engine.params[...] = rng.standard_normal(engine.params.shape)  # gamma and beta away from 1 and 0
    a, b = rng.standard_normal((3, *shapes[0])), rng.standard_normal((3, *shapes[1]))
    r = rng.standard_normal((3, *shapes[0]))
    engine.forward([a, b], training=True)
    engine.backward([r])
    analytic = [engine._input_grads["a"].copy(), engine._input_grads["b"].copy(), engine.grads.copy()]

    def loss():
        return np.sum(engine.forward([a, b])[0] * r)

    for x, want in zip((a, b, engine.params), analytic):
        numeric = np.empty_like(x)
        for i in np.ndindex(x.shape):
            numeric[i] = central_difference(loss, x, i)
        np.testing.assert_allclose(want, numeric, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("training", [False, True], ids=["inference", "training"])
def test_add_norm_gives_the_bits_of_the_layers_apart(training):
    # a Transformer block's residuals at float32: the sum is the Add's float32 sum, then the same kernel
    model = {"inputs": {"x": [12, 16]},
             "layers": [{"type": "Dense", "units": 16, "name": "d", "inputs": "x"},
                        {"type": "Add", "name": "s", "inputs": ["x", "d"]}, dict(LN, name="n", inputs="s"),
                        {"type": "Dense", "units": 16, "name": "f", "inputs": "n"},
                        {"type": "Add", "name": "s2", "inputs": ["n", "f"]}, dict(LN, name="n2", inputs="s2")],
             "outputs": "n2"}
    fused, apart = engine_of(model), engine_of(model, fuse=False)
    assert [type(s.layer).__name__ for s in fused.plan] == ["Dense", "AddNorm", "Dense", "AddNorm"]
    rng = np.random.default_rng(9)
    fused.params[...] = rng.standard_normal(fused.params.shape).astype(np.float32)
    apart.params[...] = fused.params
    x = (rng.standard_normal((40, 12, 16)) * 3 + 5).astype(np.float32)
    outs = [e.forward([x], training=training)[0].copy() for e in (fused, apart)]
    np.testing.assert_array_equal(*outs)
    if training:
        d = rng.standard_normal(outs[0].shape).astype(np.float32)
        for e in (fused, apart):
            e.backward([d])
        np.testing.assert_array_equal(fused.grads, apart.grads)
        np.testing.assert_array_equal(fused._input_grads["x"], apart._input_grads["x"])
