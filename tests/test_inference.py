"""The inference plan (specc/infer.py) that predict runs for convolutional networks: BatchNormalization
folded into the convolution before it (Keras's inference: gamma * (z - moving_mean) / sqrt(moving_variance
+ epsilon) + beta), ZeroPadding2D into the window, the ReLU and the residual Add + ReLU in the convolution's
epilogue, buffers reused. Checked against the layers run apart (Engine(fuse=False)), against a float64
NumPy reference, against Keras's recorded predictions, for every way the weights can change, and at 1
and 2 threads."""

from __future__ import annotations

import os
import subprocess
import sys

import numba
import numpy as np
import pytest

import specc
from specc.engine import Engine
from specc.infer import InferencePlan

# --- models ------------------------------------------------------------------------------------------------


def residual_net(lib, size=9, blocks=1):
    """A small ResNet with every pattern the plan fuses: conv+BN+ReLU (with and without a conv bias, ReLU as an
    Activation or a ReLU layer), conv+BN+Add+ReLU (the conv being the Add's later input), ZeroPadding2D before a
    strided 'valid' conv, a 1x1 strided shortcut, BN without center or scale; then GAP and a softmax head.
    `lib` is `specc` or `keras`."""
    L = lib.layers
    inp = lib.Input(shape=(size, size, 3), name="image")
    x = L.Conv2D(8, 3, padding="same", use_bias=False, name="c0")(inp)
    x = L.BatchNormalization(name="bn0")(x)
    x = L.Activation("relu", name="r0")(x)
    for b in range(blocks):
        y = L.Conv2D(8, 3, padding="same", name=f"c1_{b}")(x)
        y = L.BatchNormalization(epsilon=1e-5, name=f"bn1_{b}")(y)
        y = L.ReLU(name=f"r1_{b}")(y)
        y = L.Conv2D(8, 3, padding="same", use_bias=False, name=f"c2_{b}")(y)
        y = L.BatchNormalization(center=False, name=f"bn2_{b}")(y)
        x = L.Add(name=f"a0_{b}")([x, y])
        x = L.Activation("relu", name=f"r2_{b}")(x)
    p = L.ZeroPadding2D(1, name="p0")(x)
    y = L.Conv2D(16, 3, strides=2, use_bias=False, name="c3")(p)
    y = L.BatchNormalization(scale=False, name="bn3")(y)
    y = L.Activation("relu", name="r3")(y)
    y = L.Conv2D(16, 3, padding="same", use_bias=False, name="c4")(y)
    y = L.BatchNormalization(name="bn4")(y)
    s = L.Conv2D(16, 1, strides=2, padding="same", use_bias=False, name="c5")(x)
    s = L.BatchNormalization(name="bn5")(s)
    x = L.Add(name="a1")([y, s])
    x = L.Activation("relu", name="r4")(x)
    x = L.GlobalAveragePooling2D(name="gap")(x)
    out = L.Dense(5, activation="softmax", name="head")(x)
    return lib.Model(inp, out, name="resnet")


def perturbed(model, seed=0):
    """Random weights with BN statistics far from 0 and 1 (a swapped mean and variance would show)."""
    rng = np.random.default_rng(seed)
    weights = []
    for layer in model.layers:
        for spec, w in zip(layer.weights, layer.get_weights()):
            name = spec.name if hasattr(spec, "name") else ""
            if "variance" in name:
                weights.append(rng.uniform(0.5, 2.0, w.shape).astype(w.dtype))
            elif "gamma" in name:
                weights.append(rng.uniform(0.5, 1.5, w.shape).astype(w.dtype))
            else:
                weights.append(rng.normal(0, 0.4, w.shape).astype(w.dtype))
    model.set_weights(weights)


def specc_model(**kw):
    specc.clear_session()
    model = residual_net(specc, **kw)
    perturbed(model)
    return model


def engine_of(model):
    """The engine the model's predictions run on."""
    return model._plan_and_engine()[1]


# --- a float64 reference -----------------------------------------------------------------------------------


def conv_ref(x, kernel, bias, stride, padding):
    """Keras's Conv2D in float64: x (N, H, W, C), kernel (kh, kw, C, F); 'same' pads total // 2 before."""
    n, h, w, _ = x.shape
    kh, kw = kernel.shape[:2]
    if padding == "same":
        ho, wo = -(-h // stride), -(-w // stride)
        th, tw = max((ho - 1) * stride + kh - h, 0), max((wo - 1) * stride + kw - w, 0)
        x = np.pad(x, ((0, 0), (th // 2, th - th // 2), (tw // 2, tw - tw // 2), (0, 0)))
    ho, wo = (x.shape[1] - kh) // stride + 1, (x.shape[2] - kw) // stride + 1
    y = np.zeros((n, ho, wo, kernel.shape[3]))
    for i in range(kh):
        for j in range(kw):
            patch = x[:, i: i + stride * (ho - 1) + 1: stride, j: j + stride * (wo - 1) + 1: stride]
            y += patch @ kernel[i, j]
    return y + (0 if bias is None else bias)


def reference(model, x, blocks=1):
    """residual_net's predictions in float64 NumPy from the model's weights."""
    w = {layer.name: [a.astype(np.float64) for a in layer.get_weights()] for layer in model.layers}

    def conv(t, name, stride=1, padding="same"):
        p = w[name]
        return conv_ref(t, p[0], p[1] if len(p) > 1 else None, stride, padding)

    def bn(t, name, eps=1e-3, center=True, scale=True):
        p = w[name]
        gamma = p[0] if scale else 1.0
        beta = p[1 if scale else 0] if center else 0.0
        return gamma * (t - p[-2]) / np.sqrt(p[-1] + eps) + beta

    relu = lambda t: np.maximum(t, 0)  # noqa: E731
    x = relu(bn(conv(x.astype(np.float64), "c0"), "bn0"))
    for b in range(blocks):
        y = relu(bn(conv(x, f"c1_{b}"), f"bn1_{b}", eps=1e-5))
        y = bn(conv(y, f"c2_{b}"), f"bn2_{b}", center=False)
        x = relu(x + y)
    p = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    y = relu(bn(conv(p, "c3", 2, "valid"), "bn3", scale=False))
    y = bn(conv(y, "c4"), "bn4")
    s = bn(conv(x, "c5", 2), "bn5")
    x = relu(y + s).mean(axis=(1, 2))
    z = x @ w["head"][0] + w["head"][1]
    z = np.exp(z - z.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


def images(n, size=9, seed=1):
    return np.random.default_rng(seed).standard_normal((n, size, size, 3)).astype(np.float32)


# --- the plan ----------------------------------------------------------------------------------------------


def test_plan_folds_normalisation_and_fuses_padding_relu_and_residual_add():
    model = specc_model()
    model.predict(images(2), verbose=0)
    plan = InferencePlan.cached(engine_of(model))
    assert plan is not None
    assert [s.covers for s in plan.steps] == [
        ["c0", "bn0", "r0"], ["c1_0", "bn1_0", "r1_0"], ["c2_0", "bn2_0", "a0_0", "r2_0"],
        ["p0", "c3", "bn3", "r3"], ["c4", "bn4"], ["c5", "bn5", "a1", "r4"], ["gap"], ["head"]]


@pytest.mark.parametrize("n", [3, 37, 70])  # one chunk; several; more than the API's small batch (Trainer.predict_with)
def test_predictions_match_unfolded_layers_and_float64_reference(n):
    model = specc_model()
    x = images(n)
    got = model.predict(x, verbose=0)
    apart = Engine(engine_of(model).graph, fuse=False)
    apart.set_weights(model.get_weights())
    np.testing.assert_allclose(got, apart.forward([x], training=False)[0], rtol=2e-5, atol=1e-6)
    np.testing.assert_allclose(got, reference(model, x), rtol=5e-5, atol=1e-6)


def test_buffers_are_reused_along_the_network():
    """Eight residual blocks: the convolutions' outputs share three buffers (the block's input, the
    block's middle, its output), not one per layer."""
    model = specc_model(blocks=8)
    x = images(4)
    np.testing.assert_allclose(model.predict(x, verbose=0), reference(model, x, blocks=8), rtol=5e-5, atol=1e-6)
    plan = InferencePlan.cached(engine_of(model))
    buffers = plan._buffers[((4, 9, 9, 3),)]
    assert len(buffers) == 20  # every convolution step's output
    assert len({b.base.ctypes.data for b in buffers.values()}) <= 3
    for n in (1, 2, 3, 5, 6):  # buffers are kept for a few batch sizes only
        model.predict(images(n), verbose=0)
    assert len(plan._buffers) == 4


def test_many_batch_sizes_keep_arrays_for_a_few_only():
    """Predicting n = 65 ... 104 samples in batches of 32 meets 40 sizes of last batch: the plan's buffers
    and its workspace hold arrays for the most recently used few, and the full batch's stay."""
    model = specc_model()
    model.predict(images(64), batch_size=32, verbose=0)
    plan = InferencePlan.cached(engine_of(model))
    model.predict(images(64), batch_size=32, verbose=0)
    held = plan.workspace.nbytes
    for n in range(65, 105):
        model.predict(images(n), batch_size=32, verbose=0)
    assert len(plan._buffers) == 4 and ((32, 9, 9, 3),) in plan._buffers
    assert plan.workspace.nbytes <= 4 * held


def test_outputs_of_earlier_calls_stay_as_they_were():
    model = specc_model()
    a, b = images(4, seed=1), images(4, seed=2)
    pa = model.predict(a, verbose=0)
    keep = pa.copy()
    model.predict(b, verbose=0)
    np.testing.assert_array_equal(pa, keep)
    np.testing.assert_allclose(np.asarray(model(a)), keep, rtol=1e-6, atol=1e-7)  # the call path


# --- weights that change -----------------------------------------------------------------------------------


def check_current(model, x):
    np.testing.assert_allclose(model.predict(x, verbose=0), reference(model, x), rtol=5e-5, atol=1e-6)


def test_set_weights_refolds():
    model = specc_model()
    x = images(5)
    before = model.predict(x, verbose=0)
    perturbed(model, seed=3)
    check_current(model, x)
    assert not np.allclose(model.predict(x, verbose=0), before)


def test_a_layers_set_weights_and_a_write_into_a_weight_refold():
    model = specc_model()
    x = images(5)
    model.predict(x, verbose=0)
    bn = model.get_layer("bn4")
    gamma, beta, mean, var = bn.get_weights()
    bn.set_weights([gamma * 2, beta + 1, mean - 0.5, var * 3])
    check_current(model, x)
    # a write straight into the engine's weight (no API call to tell anyone): the moving mean of bn1_0
    step = next(s for s in engine_of(model).steps if s.name == "bn1_0")
    before = model.predict(x, verbose=0)
    step.weights[-2][...] += 0.5
    check_current(model, x)
    assert not np.allclose(model.predict(x, verbose=0), before)


def test_fit_refolds():
    model = specc_model()
    x = images(16)
    y = np.random.default_rng(0).integers(0, 5, 16)
    before = model.predict(x, verbose=0)
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    model.fit(x, y, epochs=1, batch_size=8, verbose=0)  # moves the BN statistics and the kernels
    check_current(model, x)
    assert not np.allclose(model.predict(x, verbose=0), before)


def test_load_weights_refolds(tmp_path):
    model = specc_model()
    x = images(5)
    saved = model.predict(x, verbose=0)
    model.save_weights(str(tmp_path / "m.weights.h5"))
    perturbed(model, seed=4)
    assert not np.allclose(model.predict(x, verbose=0), saved)
    model.load_weights(str(tmp_path / "m.weights.h5"))
    np.testing.assert_allclose(model.predict(x, verbose=0), saved, rtol=1e-6, atol=1e-7)
    check_current(model, x)


def test_trainable_changes_keep_inference_the_same():
    """A frozen BN (or model) still normalises with its moving statistics in inference, as Keras's does."""
    model = specc_model()
    x = images(5)
    before = model.predict(x, verbose=0)
    model.get_layer("bn0").trainable = False
    np.testing.assert_allclose(model.predict(x, verbose=0), before, rtol=1e-6, atol=1e-7)
    model.trainable = False
    np.testing.assert_allclose(model.predict(x, verbose=0), before, rtol=1e-6, atol=1e-7)
    perturbed(model, seed=5)
    check_current(model, x)


# --- paths and settings ------------------------------------------------------------------------------------


def test_eager_predictions_match():
    model = specc_model()
    x = images(5)
    compiled = model.predict(x, verbose=0)
    model.compile(optimizer="sgd", loss="mse", run_eagerly=True)
    np.testing.assert_allclose(model.predict(x, verbose=0), compiled, rtol=2e-5, atol=1e-6)


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="needs two Numba threads")
def test_same_bits_at_one_and_two_threads():
    from specc.kernels import configure_threads, thread_count

    model, wide = specc_model(size=16), blas_model()
    x = images(40, size=16)
    xw = np.random.default_rng(3).standard_normal((20, 3, 3, 128)).astype(np.float32)
    before = thread_count()
    results = []
    try:
        for threads in (1, 2):
            configure_threads(threads)
            results.append((model.predict(x, verbose=0), wide.predict(xw, verbose=0)))
    finally:
        configure_threads(before)
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b)


def test_models_without_convolutions_have_no_plan():
    specc.clear_session()
    L = specc.layers
    inp = specc.Input(shape=(6,))
    model = specc.Model(inp, L.Dense(3)(L.BatchNormalization()(L.Dense(4)(inp))))
    model.predict(np.zeros((2, 6), np.float32), verbose=0)
    assert InferencePlan.cached(engine_of(model)) is None


def test_layers_the_plan_does_not_fuse_run_as_apart():
    """A tanh convolution, a BN read twice, a BN over another axis, Conv1D with a causal window, a Flatten
    (a view of its input): the same as the layers apart."""
    specc.clear_session()
    L = specc.layers
    inp = specc.Input(shape=(10, 4))
    a = L.Conv1D(6, 3, padding="causal", name="k0")(inp)
    a = L.BatchNormalization(name="n0")(a)
    b = L.Conv1D(6, 3, padding="same", activation="tanh", name="k1")(a)
    c = L.Add(name="add")([a, b])
    d = L.Conv1D(6, 2, name="k2")(c)
    d = L.BatchNormalization(axis=1, name="n1")(d)
    e = L.Conv1D(6, 3, activation="relu", name="k3")(d)
    out = L.Dense(2, name="out")(L.Flatten(name="flat")(e))
    model = specc.Model(inp, out)
    perturbed(model, seed=6)
    x = np.random.default_rng(2).standard_normal((7, 10, 4)).astype(np.float32)
    got = model.predict(x, verbose=0)
    plan = InferencePlan.cached(engine_of(model))
    assert plan is not None and ["k0", "n0"] in [s.covers for s in plan.steps]
    apart = Engine(engine_of(model).graph, fuse=False)
    apart.set_weights(model.get_weights())
    np.testing.assert_allclose(got, apart.forward([x], training=False)[0], rtol=2e-5, atol=1e-5)


def blas_model():
    specc.clear_session()
    L = specc.layers
    inp = specc.Input(shape=(3, 3, 128))
    a = L.BatchNormalization(name="n0")(L.Conv2D(256, 3, padding="same", use_bias=False, name="wide")(inp))
    a = L.Activation("relu", name="r0")(a)
    b = L.Conv2D(16, 1, name="narrow")(a)
    c = L.BatchNormalization(name="n1")(L.Conv2D(4, 1, name="point")(b))
    d = L.Conv2D(4, 1, name="side")(b)
    out = L.Activation("relu", name="r1")(L.Add(name="add")([d, c]))
    model = specc.Model(inp, out)
    perturbed(model, seed=7)
    return model


def test_wide_kernels_and_pointwise_convolutions_match_the_layers_apart():
    """A 3x3 kernel of 128 -> 256 (im2col + sgemm) and a 1x1 convolution of 16 channels to 4 filters, which
    runs as one product on x's rows (kernels/infer.py); with BN folded, the residual Add and the ReLU, as
    the layers apart."""
    from specc.infer import _in_place

    model = blas_model()
    x = np.random.default_rng(3).standard_normal((5, 3, 3, 128)).astype(np.float32)
    got = model.predict(x, verbose=0)
    plan = InferencePlan.cached(engine_of(model))
    # the engine runs `point` before `side`: the Add fuses into the later one
    assert [s.covers for s in plan.steps] == [["wide", "n0", "r0"], ["narrow"], ["point", "n1"], ["side", "add", "r1"]]
    assert not _in_place((5, 3, 3, 128), (3, 3, 1, 1, 1, 1, 1, 1), 3, 3, 1152, 256)
    assert _in_place((5, 3, 3, 16), (1, 1, 1, 1, 1, 1, 0, 0), 3, 3, 16, 4)
    assert not _in_place((5, 3, 3, 256), (1, 1, 1, 1, 1, 1, 0, 0), 3, 3, 256, 16 * 4 + 1)
    apart = Engine(engine_of(model).graph, fuse=False)
    apart.set_weights(model.get_weights())
    np.testing.assert_allclose(got, apart.forward([x], training=False)[0], rtol=1e-4, atol=1e-4)


def test_predictions_match_keras_recorded():
    """Keras's predictions of residual_net (two blocks; BN statistics away from 0 and 1), recorded with its
    weights by tests/fixtures/record_inference.py: the same weights loaded into specc's build predict the same
    through the plan (and BN folded: gamma, beta, moving mean and variance in Keras's order and meaning)."""
    from pathlib import Path

    pytest.importorskip("h5py")
    fixtures = Path(__file__).resolve().parent / "fixtures" / "keras"
    data = np.load(fixtures / "inference_resnet.npz")
    specc.clear_session()
    model = residual_net(specc, blocks=2)
    model.load_weights(str(fixtures / "inference_resnet.weights.h5"))
    np.testing.assert_allclose(model.predict(data["x"], verbose=0), data["y"], rtol=1e-4, atol=1e-6)
    plan = InferencePlan.cached(engine_of(model))
    assert ["c2_1", "bn2_1", "a0_1", "r2_1"] in [s.covers for s in plan.steps]
    # Keras's small residual Functional fixture (a conv read by a BN and an Add) through the plan too
    import sys

    sys.path.insert(0, str(fixtures))
    try:
        from builders import nested_functional
    finally:
        sys.path.pop(0)
    specc.clear_session()
    nested = specc.Model(*nested_functional(specc), name="small_functional")
    nested.load_weights(str(fixtures / "small_functional.weights.h5"))
    data = np.load(fixtures / "small_functional.npz")
    np.testing.assert_allclose(nested.predict(data["x"], verbose=0), data["y"], rtol=1e-4, atol=1e-7)


def test_pairs_the_engine_fuses_and_the_plan_does_not_fold_run_fused():
    """A convolution read only by a max pooling (nothing to fold: the engine's ConvPool, one kernel) and a BN
    after a Dense with its ReLU (the engine's BatchNormAct): one step each, as the engine runs them."""
    specc.clear_session()
    L = specc.layers
    inp = specc.Input(shape=(8, 8, 2))
    a = L.MaxPooling2D(name="pool")(L.Conv2D(4, 3, activation="relu", name="conv")(inp))
    a = L.Dense(6, name="dense")(L.Flatten(name="flat")(a))
    out = L.Activation("relu", name="act")(L.BatchNormalization(name="bn")(a))
    model = specc.Model(inp, out)
    perturbed(model, seed=8)
    x = np.random.default_rng(4).standard_normal((5, 8, 8, 2)).astype(np.float32)
    got = model.predict(x, verbose=0)
    plan = InferencePlan.cached(engine_of(model))
    assert [s.covers for s in plan.steps] == [["conv", "pool"], ["flat"], ["dense"], ["bn", "act"]]
    apart = Engine(engine_of(model).graph, fuse=False)
    apart.set_weights(model.get_weights())
    np.testing.assert_allclose(got, apart.forward([x], training=False)[0], rtol=2e-5, atol=1e-6)


_WARM_PREDICT = """
import numpy as np, specc
specc.set_random_seed(0)
model = specc.Sequential([specc.Input((9, 9, 3)), specc.layers.Conv2D(16, 3, padding="same", use_bias=False),
                          specc.layers.BatchNormalization(), specc.layers.ReLU(),
                          specc.layers.GlobalAveragePooling2D(), specc.layers.Dense(4)])
x = np.random.default_rng(0).standard_normal((8, 9, 9, 3)).astype(np.float32)
print(float(np.abs(model.predict(x, verbose=0)).sum()))
"""


def test_predict_in_a_process_that_loads_its_kernels_from_the_cache(tmp_path):
    """The plan's convolution kernel reaches the direct tiles, whose entry points are loaded when first
    needed: a second process, loading that kernel from the cache instead of compiling it, must load them
    too (it crashed when it did not)."""
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "cache"), PYTHONFAULTHANDLER="1")
    runs = [subprocess.run([sys.executable, "-c", _WARM_PREDICT], capture_output=True, text=True, env=env,
                           timeout=900) for _ in range(2)]
    for proc in runs:
        assert proc.returncode == 0, proc.stderr[-3000:]
    assert runs[0].stdout == runs[1].stdout
