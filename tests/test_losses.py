"""Losses: value and gradient against central finite differences (float64) and against Keras 3 (torch
backend, gradients by autograd through Keras's own loss), and the fused softmax/sigmoid paths against
the unfused composition."""

from __future__ import annotations

import os
import zlib

import numpy as np
import pytest

from specc.kernels import activations
from specc.train.losses import EPSILON, get_loss

LOSS_NAMES = ("mean_squared_error", "mean_absolute_error", "huber", "binary_crossentropy",
              "categorical_crossentropy", "sparse_categorical_crossentropy", "kl_divergence", "hinge")
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # Keras on NumPy 2

CE = ("binary_crossentropy", "categorical_crossentropy", "sparse_categorical_crossentropy")
# (name, from_logits) for every case the loss supports
CASES = [(n, False) for n in LOSS_NAMES] + [(n, True) for n in CE]


def make_data(name: str, from_logits: bool, shape: tuple, rng: np.random.Generator, labels: str = "default"):
    """y_true, y_pred in each loss's domain, away from kinks and clip bounds (finite differences)."""
    c = shape[-1]
    if name in ("mean_squared_error", "mean_absolute_error", "huber"):
        return rng.normal(size=shape), 2.0 * rng.normal(size=shape)
    if name == "hinge":
        t = rng.integers(0, 2, shape).astype(float) if labels == "default" else rng.choice([-1.0, 1.0], shape)
        return t, rng.normal(size=shape)
    if name == "binary_crossentropy":
        t = rng.integers(0, 2, shape).astype(float) if labels == "default" else rng.uniform(0, 1, shape)
        p = 3.0 * rng.normal(size=shape) if from_logits else rng.uniform(0.05, 0.95, shape)
        return t, p
    if name == "kl_divergence":
        t = rng.uniform(0.05, 1, shape)
        p = rng.uniform(0.05, 1, shape)
        return t / t.sum(-1, keepdims=True), p / p.sum(-1, keepdims=True)
    # categorical: unnormalised positive "probabilities" exercise Keras's renormalisation too
    p = 2.0 * rng.normal(size=shape) if from_logits else rng.uniform(0.1, 1.0, shape)
    k = rng.integers(0, c, shape[:-1])
    if name == "sparse_categorical_crossentropy":
        return k, p
    if labels == "soft":
        t = rng.uniform(0, 1, shape)
        return t / t.sum(-1, keepdims=True), p
    return np.eye(c)[k], p


def finite_difference(loss, y_true, y_pred, sample_weight=None, h=1e-6):
    g = np.zeros_like(y_pred)
    for idx in np.ndindex(y_pred.shape):
        plus, minus = y_pred.copy(), y_pred.copy()
        plus[idx] += h
        minus[idx] -= h
        g[idx] = (loss(y_true, plus, sample_weight)[0] - loss(y_true, minus, sample_weight)[0]) / (2 * h)
    return g


# --- finite differences ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name,from_logits", CASES)
@pytest.mark.parametrize("shape", [(5, 3), (2, 3, 4)])
@pytest.mark.parametrize("weighted", [False, True])
def test_gradient_matches_finite_differences(name, from_logits, shape, weighted):
    rng = np.random.default_rng(zlib.crc32(repr((name, from_logits, shape, weighted)).encode()))
    y_true, y_pred = make_data(name, from_logits, shape, rng)
    sw = rng.uniform(0.2, 2.0, shape[0]) if weighted else None
    loss = get_loss(name, from_logits=from_logits)
    value, grad = loss(y_true, y_pred, sw)
    assert grad.shape == y_pred.shape and grad.dtype == np.float64
    assert np.isfinite(value)
    np.testing.assert_allclose(grad, finite_difference(loss, y_true, y_pred, sw), rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("name,labels", [("categorical_crossentropy", "soft"), ("binary_crossentropy", "soft"),
                                         ("hinge", "signed")])
@pytest.mark.parametrize("from_logits", [False, True])
def test_gradient_other_labels(name, labels, from_logits):
    if name == "hinge" and from_logits:
        pytest.skip("hinge has no from_logits")
    rng = np.random.default_rng(3)
    y_true, y_pred = make_data(name, from_logits, (6, 3), rng, labels)
    loss = get_loss(name, from_logits=from_logits)
    np.testing.assert_allclose(loss(y_true, y_pred)[1], finite_difference(loss, y_true, y_pred),
                               rtol=1e-5, atol=1e-8)


# --- closed forms and reduction -------------------------------------------------------------------------


def test_reduction_is_sum_over_batch_size():
    y_true = np.array([[0.0, 1.0], [1.0, 1.0], [2.0, 0.0]])
    y_pred = np.array([[1.0, 1.0], [1.0, 3.0], [0.0, 0.0]])
    per_sample = ((y_pred - y_true) ** 2).mean(-1)  # [0.5, 2, 2]
    mse = get_loss("mse")
    assert mse(y_true, y_pred)[0] == pytest.approx(per_sample.mean())
    w = np.array([1.0, 0.0, 2.0])
    # divided by the number of samples (3), not by the sum of the weights
    assert mse(y_true, y_pred, w)[0] == pytest.approx((per_sample * w).sum() / 3)
    np.testing.assert_allclose(mse(y_true, y_pred, w)[1], 2 * (y_pred - y_true) / 2 * w[:, None] / 3)


def test_sequence_outputs_average_over_batch_and_time():
    rng = np.random.default_rng(0)
    y_true, y_pred = rng.normal(size=(2, 3, 4)), rng.normal(size=(2, 3, 4))
    w = np.array([0.5, 2.0])
    expected = (((y_pred - y_true) ** 2).mean(-1) * w[:, None]).sum() / 6
    assert get_loss("mse")(y_true, y_pred, w)[0] == pytest.approx(expected)
    # a per-timestep weight of shape (batch, time) is used as is
    wt = rng.uniform(size=(2, 3))
    expected = (((y_pred - y_true) ** 2).mean(-1) * wt).sum() / 6
    assert get_loss("mse")(y_true, y_pred, wt)[0] == pytest.approx(expected)


def test_closed_forms():
    t, p = np.array([[1.0, 0.0]]), np.array([[0.8, 0.3]])
    assert get_loss("binary_crossentropy")(t, p)[0] == pytest.approx(-(np.log(0.8) + np.log(0.7)) / 2)
    assert get_loss("huber")(np.zeros((1, 2)), np.array([[0.5, 3.0]]))[0] == pytest.approx((0.125 + 2.5) / 2)
    assert get_loss("mae")(t, p)[0] == pytest.approx(0.25)
    # kl_divergence sums over the last axis
    t, p = np.array([[0.25, 0.75]]), np.array([[0.5, 0.5]])
    assert get_loss("kld")(t, p)[0] == pytest.approx(0.25 * np.log(0.5) + 0.75 * np.log(1.5))
    # categorical_crossentropy renormalises probabilities
    assert get_loss("categorical_crossentropy")(np.array([[0.0, 1.0]]), np.array([[1.0, 3.0]]))[0] == \
        pytest.approx(-np.log(0.75))


def test_hinge_converts_binary_labels_only():
    p = np.array([[0.3, -0.5], [2.0, 0.1]])
    hinge = get_loss("hinge")
    binary = hinge(np.array([[0.0, 1.0], [1.0, 0.0]]), p)[0]
    signed = hinge(np.array([[-1.0, 1.0], [1.0, -1.0]]), p)[0]
    assert binary == pytest.approx(signed) == pytest.approx(np.mean(np.maximum(1 - np.array([[-1, 1], [1, -1]]) * p, 0)))
    # a batch mixing 0 with -1 is not binary: 0 stays 0
    mixed = hinge(np.array([[0.0, 1.0], [-1.0, 0.0]]), p)[0]
    assert mixed == pytest.approx(np.mean(np.maximum(1 - np.array([[0, 1], [-1, 0]]) * p, 0)))


def test_clipping_at_saturated_probabilities():
    bce = get_loss("binary_crossentropy")
    t = np.array([[1.0, 0.0, 1.0]])
    p = np.array([[0.0, 1.0, 1.0]])
    value, grad = bce(t, p)
    assert value == pytest.approx(-2 * np.log(EPSILON) / 3 - np.log(1 - EPSILON) / 3)
    # outside the clip range the gradient is zero (the clamp's gradient)
    np.testing.assert_array_equal(grad[0, :2], 0.0)
    cce = get_loss("categorical_crossentropy")
    value, grad = cce(np.array([[1.0, 0.0]]), np.array([[0.0, 1.0]]))
    assert value == pytest.approx(-np.log(EPSILON))
    assert np.all(np.isfinite(grad))


def test_float32_keeps_dtype_and_uses_float32_clip_bound():
    rng = np.random.default_rng(1)
    for name in LOSS_NAMES:
        y_true, y_pred = make_data(name, False, (4, 3), rng)
        v64, g64 = get_loss(name)(y_true, y_pred)
        v32, g32 = get_loss(name)(y_true, y_pred.astype(np.float32))
        assert g32.dtype == np.float32
        assert v32 == pytest.approx(v64, rel=1e-5)
        np.testing.assert_allclose(g32, g64, rtol=1e-4, atol=1e-6)
    # 1 - 1e-7 rounds to 1 - 2**-23 in float32, so log(1 - p) saturates at log(2**-23) as in Keras
    v = get_loss("binary_crossentropy")(np.zeros((1, 1)), np.ones((1, 1), np.float32))[0]
    assert v == pytest.approx(-np.log(2.0 ** -23), rel=1e-6)


def test_sparse_label_shapes_and_errors():
    rng = np.random.default_rng(2)
    p = rng.uniform(0.1, 1, (4, 3))
    scce = get_loss("sparse_categorical_crossentropy")
    labels = np.array([0, 2, 1, 2])
    v1, g1 = scce(labels, p)
    v2, g2 = scce(labels.reshape(4, 1).astype(float), p)
    v3, g3 = get_loss("categorical_crossentropy")(np.eye(3)[labels], p)
    assert v1 == v2 == pytest.approx(v3)
    np.testing.assert_allclose(g1, g3)
    np.testing.assert_array_equal(g1, g2)
    with pytest.raises(ValueError, match="labels must be in"):
        scce(np.array([0, 3, 1, 2]), p)
    with pytest.raises(ValueError, match="do not match"):
        scce(np.array([0, 1]), p)


def test_names_aliases_and_errors():
    assert get_loss("mse").name == "mean_squared_error"
    assert get_loss("kld").name == "kl_divergence"
    assert get_loss("kullback_leibler_divergence").name == "kl_divergence"
    assert get_loss("huber_loss").name == "huber"
    with pytest.raises(ValueError, match="unknown loss"):
        get_loss("poisson")
    with pytest.raises(ValueError, match="does not match"):
        get_loss("mse")(np.zeros((3, 2)), np.zeros((3, 3)))
    with pytest.raises(ValueError, match="sample_weight"):
        get_loss("mse")(np.zeros((3, 2)), np.zeros((3, 2)), np.ones(2))


def test_nan_prediction_gives_nan():
    p = np.array([[0.5, np.nan]])
    for name in ("binary_crossentropy", "mse", "categorical_crossentropy"):
        assert np.isnan(get_loss(name)(np.array([[1.0, 0.0]]), p)[0])


# --- fused paths ----------------------------------------------------------------------------------------


def _act_backward(code, z, y, dy):
    dz = np.empty_like(z)
    activations.backward(code, z, y, np.ascontiguousarray(dy), dz)
    return dz


@pytest.mark.parametrize("name,labels", [("categorical_crossentropy", "default"),
                                         ("categorical_crossentropy", "soft"),
                                         ("sparse_categorical_crossentropy", "default")])
@pytest.mark.parametrize("weighted", [False, True])
def test_fused_softmax_equals_composition(name, labels, weighted):
    rng = np.random.default_rng(4)
    y_true, logits = make_data(name, True, (6, 5), rng, labels)
    sw = rng.uniform(0.5, 2, 6) if weighted else None
    loss = get_loss(name)
    assert loss.fuses_with == "softmax"
    probs = np.empty_like(logits)
    activations.forward(activations.SOFTMAX, logits, probs)
    value, d_probs = loss(y_true, probs, sw)
    expected = _act_backward(activations.SOFTMAX, logits, probs, d_probs)
    fused_value, d_logits = loss.fused_softmax(y_true, logits, sw)
    assert fused_value == pytest.approx(value, rel=1e-12)
    np.testing.assert_allclose(d_logits, expected, rtol=1e-9, atol=1e-14)
    # and the documented closed form (softmax - onehot) * w / N
    onehot = np.eye(5)[y_true] if name.startswith("sparse") else y_true
    w = np.ones(6) if sw is None else sw
    np.testing.assert_allclose(d_logits, (probs - onehot) * w[:, None] / 6, atol=1e-14)
    assert loss.fused("softmax", y_true, logits, sw)[0] == fused_value


@pytest.mark.parametrize("shape", [(6, 1), (6, 3), (2, 3, 2)])
def test_fused_sigmoid_equals_composition(shape):
    rng = np.random.default_rng(5)
    y_true, logits = make_data("binary_crossentropy", True, shape, rng, "soft")
    loss = get_loss("binary_crossentropy")
    assert loss.fuses_with == "sigmoid"
    z = logits.reshape(-1, shape[-1])
    probs = np.empty_like(z)
    activations.forward(activations.CODE["sigmoid"], z, probs)
    value, d_probs = loss(y_true, probs.reshape(shape))
    expected = _act_backward(activations.CODE["sigmoid"], z, probs, d_probs.reshape(z.shape)).reshape(shape)
    fused_value, d_logits = loss.fused_sigmoid(y_true, logits)
    assert fused_value == pytest.approx(value, rel=1e-10)
    np.testing.assert_allclose(d_logits, expected, rtol=1e-8, atol=1e-14)


def test_fused_softmax_stays_exact_where_keras_clips():
    logits = np.array([[0.0, 40.0, -40.0]])
    loss = get_loss("categorical_crossentropy")
    value, grad = loss.fused_softmax(np.array([[1.0, 0.0, 0.0]]), logits)
    assert value == pytest.approx(40.0, rel=1e-9)  # the unfused value saturates at -log(1e-7) ~ 16.1
    assert grad[0, 0] == pytest.approx(-1.0)


def test_fuses_with():
    assert get_loss("categorical_crossentropy", from_logits=True).fuses_with is None
    assert get_loss("mse").fuses_with is None
    with pytest.raises(ValueError):
        get_loss("mse").fused_softmax(np.zeros((2, 2)), np.zeros((2, 2)))
    with pytest.raises(ValueError):
        get_loss("categorical_crossentropy").fused("sigmoid", np.zeros((2, 2)), np.zeros((2, 2)))


# --- Keras 3 --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def keras_torch():
    os.environ["KERAS_BACKEND"] = "torch"
    keras = pytest.importorskip("keras")
    torch = pytest.importorskip("torch")
    if keras.backend.backend() != "torch":
        pytest.skip("Keras was already imported with another backend")
    return keras, torch


def keras_loss(keras, name, from_logits, dtype):
    L = keras.losses
    if name in CE:
        cls = {"binary_crossentropy": L.BinaryCrossentropy, "categorical_crossentropy": L.CategoricalCrossentropy,
               "sparse_categorical_crossentropy": L.SparseCategoricalCrossentropy}[name]
        return cls(from_logits=from_logits, dtype=dtype)
    cls = {"mean_squared_error": L.MeanSquaredError, "mean_absolute_error": L.MeanAbsoluteError,
           "huber": L.Huber, "kl_divergence": L.KLDivergence, "hinge": L.Hinge}[name]
    return cls(dtype=dtype)


def keras_value_and_grad(keras_torch, name, from_logits, y_true, y_pred, sample_weight=None):
    keras, torch = keras_torch
    dtype = str(y_pred.dtype)
    p = torch.tensor(y_pred, requires_grad=True)
    value = keras_loss(keras, name, from_logits, dtype)(y_true, p, sample_weight=sample_weight)
    value.backward()
    return float(value.detach()), p.grad.numpy()


@pytest.mark.parametrize("name,from_logits", CASES)
@pytest.mark.parametrize("shape,weighted", [((5, 3), False), ((5, 3), True), ((2, 3, 4), True), ((6, 1), True)])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_matches_keras(keras_torch, name, from_logits, shape, weighted, dtype):
    if name in ("categorical_crossentropy", "sparse_categorical_crossentropy", "kl_divergence") and shape[-1] == 1:
        pytest.skip("single-class distributions")
    rng = np.random.default_rng(zlib.crc32(repr((name, from_logits, shape, weighted)).encode()))
    y_true, y_pred = make_data(name, from_logits, shape, rng)
    y_pred = y_pred.astype(dtype)
    sw = rng.uniform(0.2, 2.0, shape[:-1]) if weighted else None
    value, grad = get_loss(name, from_logits=from_logits)(y_true, y_pred, sw)
    k_value, k_grad = keras_value_and_grad(keras_torch, name, from_logits, y_true, y_pred, sw)
    # Keras's torch backend rounds the reduced loss (and so its gradient) to float32 even with a float64
    # loss dtype (divide_no_nan), so float64 agrees to float32 precision only.
    assert value == pytest.approx(k_value, rel=2e-6, abs=1e-7)
    np.testing.assert_allclose(grad, k_grad, rtol=2e-6, atol=1e-7)


@pytest.mark.parametrize("name", ["binary_crossentropy", "categorical_crossentropy",
                                  "sparse_categorical_crossentropy", "kl_divergence"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_matches_keras_at_clip_bounds(keras_torch, name, dtype):
    """Probabilities at and beyond the clip bounds: the clipped value and the zero gradient."""
    if name == "binary_crossentropy":
        y_true = np.array([[1.0, 0.0, 1.0, 0.0, 1.0]])
        y_pred = np.array([[0.0, 1.0, 1.0, 0.0, 1e-9]])
    elif name == "kl_divergence":
        y_true = np.array([[0.0, 0.5, 0.5], [1.0, 0.0, 0.0]])
        y_pred = np.array([[0.5, 0.5, 0.0], [1e-9, 0.5, 0.5]])
    else:
        y_true = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
        y_pred = np.array([[0.0, 0.5, 0.5], [0.0, 1.0, 0.0], [1e-9, 0.3, 0.7]])
        if name.startswith("sparse"):
            y_true = y_true.argmax(-1)
    y_pred = y_pred.astype(dtype)
    value, grad = get_loss(name)(y_true, y_pred)
    k_value, k_grad = keras_value_and_grad(keras_torch, name, False, y_true, y_pred)
    assert value == pytest.approx(k_value, rel=1e-6)
    np.testing.assert_allclose(grad, k_grad, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("labels", ["default", "signed"])
def test_hinge_matches_keras_labels(keras_torch, labels):
    rng = np.random.default_rng(7)
    y_true, y_pred = make_data("hinge", False, (8, 3), rng, labels)
    value, grad = get_loss("hinge")(y_true, y_pred)
    k_value, k_grad = keras_value_and_grad(keras_torch, "hinge", False, y_true, y_pred)
    assert value == pytest.approx(k_value, rel=2e-6)
    np.testing.assert_allclose(grad, k_grad, rtol=2e-6, atol=1e-8)


@pytest.mark.parametrize("name", ["categorical_crossentropy", "sparse_categorical_crossentropy",
                                  "binary_crossentropy"])
def test_fused_matches_keras_from_logits(keras_torch, name):
    rng = np.random.default_rng(8)
    y_true, logits = make_data(name, True, (7, 4), rng)
    sw = rng.uniform(0.5, 2, 7)
    loss = get_loss(name)
    value, d_logits = loss.fused(loss.fuses_with, y_true, logits, sw)
    k_value, k_grad = keras_value_and_grad(keras_torch, name, True, y_true, logits, sw)
    assert value == pytest.approx(k_value, rel=2e-6)
    np.testing.assert_allclose(d_logits, k_grad, rtol=2e-6, atol=1e-8)
