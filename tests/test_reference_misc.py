"""Normalisation and upsampling against reference implementations: BatchNormalization against PyTorch
(forward, gradients, moving statistics; training and inference), LayerNormalization and UpSampling against
Keras 3 on its torch backend."""

from __future__ import annotations

import os

import numpy as np
import pytest

from specc.engine import Engine
from specc.spec import load_spec_text

from .modelspec import model_yaml

os.environ["KERAS_BACKEND"] = "torch"  # before anything imports keras

torch = pytest.importorskip("torch")
F = torch.nn.functional

TOL = {np.float32: dict(rtol=2e-4, atol=2e-5), np.float64: dict(rtol=1e-9, atol=1e-11)}


@pytest.fixture(scope="module")
def keras():
    keras = pytest.importorskip("keras")
    if keras.backend.backend() != "torch":
        pytest.skip(f"keras was already imported with the {keras.backend.backend()} backend")
    return keras


def run(layer: dict, x: np.ndarray, weights: list | None, training: bool, R: np.ndarray, dtype=np.float32):
    """One layer through the engine: output, d(sum(R * y))/dx, weight gradients and weights by name."""
    spec, errors = load_spec_text(model_yaml(layer, [list(x.shape[1:])]), "reference.yaml")
    assert not errors, [e.text() for e in errors]
    engine = Engine(spec.graph, dtype)
    engine.initialize(0)
    if weights is not None:
        engine.set_weights(weights)
    y = engine.forward([x], training=training)[0].copy()
    engine.backward([R.astype(dtype)])
    step = engine.steps[0]
    names = [s.name for s in step.specs]
    grads = {n: g.copy() for n, g in zip(names, step.grads, strict=True) if g is not None}
    values = {n: v.copy() for n, v in zip(names, step.weights, strict=True)}
    return y, engine._input_grads[engine.input_names[0]], grads, values


# --- BatchNormalization vs PyTorch ---------------------------------------------------------------------

BN_SHAPES = [  # (input with batch, Keras axis)
    ((8, 5), -1),
    ((3, 4, 3, 2), -1),
    ((4, 5, 3), 1),
    ((4, 5, 3), -1),
]


def _bn_case(shape, axis, dtype, momentum=0.9, epsilon=1e-3):
    rng = np.random.default_rng(0)
    x = (rng.standard_normal(shape) * 2 + 0.5).astype(dtype)
    c = shape[axis]
    weights = [rng.uniform(0.5, 1.5, c), rng.standard_normal(c), rng.standard_normal(c), rng.uniform(0.5, 2, c)]
    weights = [w.astype(dtype) for w in weights]
    R = rng.standard_normal(shape).astype(dtype)
    layer = {"type": "BatchNormalization", "axis": axis, "momentum": momentum, "epsilon": epsilon}
    return x, weights, R, layer


def _torch_bn(x, weights, R, axis, training, momentum, epsilon):
    """PyTorch wants channels at dim 1; its momentum is Keras's 1 - momentum."""
    a = axis % x.ndim
    xt = torch.tensor(np.moveaxis(x, a, 1), requires_grad=True)
    gamma, beta = (torch.tensor(w, requires_grad=True) for w in weights[:2])
    rm, rv = (torch.tensor(w.copy()) for w in weights[2:])
    y = F.batch_norm(xt, rm, rv, gamma, beta, training=training, momentum=1 - momentum, eps=epsilon)
    (y * torch.tensor(np.moveaxis(R, a, 1))).sum().backward()
    back = lambda t: np.moveaxis(t.detach().numpy(), 1, a)  # noqa: E731
    return back(y), back(xt.grad), gamma.grad.numpy(), beta.grad.numpy(), rm.numpy(), rv.numpy(), xt


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape,axis", BN_SHAPES)
@pytest.mark.parametrize("training", [True, False], ids=["training", "inference"])
def test_batchnorm_matches_torch(shape, axis, training, dtype):
    x, weights, R, layer = _bn_case(shape, axis, dtype)
    y, dx, grads, values = run(layer, x, weights, training, R, dtype)
    ty, tdx, tdgamma, tdbeta, trm, trv, xt = _torch_bn(x, weights, R, axis, training, 0.9, 1e-3)
    tol = TOL[dtype]
    np.testing.assert_allclose(y, ty, **tol)
    np.testing.assert_allclose(dx, tdx, **tol)
    np.testing.assert_allclose(grads["gamma"], tdgamma, **tol)
    np.testing.assert_allclose(grads["beta"], tdbeta, **tol)
    np.testing.assert_allclose(values["moving_mean"], trm, **tol)
    if not training:
        np.testing.assert_array_equal(values["moving_mean"], weights[2])
        np.testing.assert_array_equal(values["moving_variance"], weights[3])
        np.testing.assert_allclose(values["moving_variance"], trv, **tol)
        return
    # Keras 3 feeds the *biased* batch variance into the moving variance; PyTorch the unbiased one.
    reduce = tuple(d for d in range(x.ndim) if d != 1)
    biased = xt.detach().double().var(dim=reduce, unbiased=False).numpy()
    unbiased = xt.detach().double().var(dim=reduce, unbiased=True).numpy()
    np.testing.assert_allclose(values["moving_variance"], 0.9 * weights[3] + 0.1 * biased, **tol)
    np.testing.assert_allclose(trv, 0.9 * weights[3] + 0.1 * unbiased, **tol)


def test_batchnorm_without_center_and_scale_matches_torch():
    x, weights, R, layer = _bn_case((6, 4), -1, np.float64)
    layer = dict(layer, center=False, scale=False)
    y, dx, grads, values = run(layer, x, weights[2:], True, R, np.float64)
    ones, zeros = np.ones(4), np.zeros(4)
    ty, tdx, *_ = _torch_bn(x, [ones, zeros, *weights[2:]], R, -1, True, 0.9, 1e-3)
    np.testing.assert_allclose(y, ty, **TOL[np.float64])
    np.testing.assert_allclose(dx, tdx, **TOL[np.float64])
    assert grads == {}


def test_batchnorm_moving_statistics_match_keras(keras):
    x, weights, R, layer = _bn_case((6, 2, 3), -1, np.float32, momentum=0.8)
    _, _, _, values = run(layer, x, weights, True, R)
    ref = keras.layers.BatchNormalization(momentum=0.8)
    ref.build(x.shape)
    ref.set_weights(weights)
    ref(torch.tensor(x), training=True)
    for v, name in zip(ref.weights, ["gamma", "beta", "moving_mean", "moving_variance"], strict=True):
        np.testing.assert_allclose(values[name], v.value.detach().numpy(), **TOL[np.float32])


# --- Keras references ----------------------------------------------------------------------------------


def _keras_run(keras, layer, x, R):
    """Output and d(sum(R * y))/d(x and each weight) from a Keras layer on the torch backend."""
    xt = torch.tensor(x, requires_grad=True)
    y = layer(xt)
    (y * torch.tensor(R)).sum().backward()
    grads = [v.value.grad.numpy() for v in layer.weights]
    return y.detach().numpy(), xt.grad.numpy(), grads


LN_CASES = [
    ((4, 5), {}),
    ((2, 3, 6), {}),
    ((2, 3, 6), {"epsilon": 0.1}),
    ((2, 3, 6), {"center": False}),
    ((2, 3, 6), {"scale": False}),
    ((4, 5), {"center": False, "scale": False}),
]


@pytest.mark.parametrize("shape,options", LN_CASES, ids=[f"{s}-{o}" for s, o in LN_CASES])
def test_layernorm_matches_keras(keras, shape, options):
    rng = np.random.default_rng(3)
    x = (rng.standard_normal(shape) * 3 + 1).astype(np.float32)
    R = rng.standard_normal(shape).astype(np.float32)
    ref = keras.layers.LayerNormalization(**options)
    ref.build(x.shape)
    weights = [rng.standard_normal(w.shape).astype(np.float32) for w in ref.weights]
    ref.set_weights(weights)
    ky, kdx, kgrads = _keras_run(keras, ref, x, R)

    y, dx, grads, _ = run({"type": "LayerNormalization", **options}, x, weights, False, R)
    tol = TOL[np.float32]
    np.testing.assert_allclose(y, ky, **tol)
    np.testing.assert_allclose(dx, kdx, **tol)
    assert len(grads) == len(kgrads)
    for (name, g), kg in zip(grads.items(), kgrads, strict=True):
        np.testing.assert_allclose(g, kg, err_msg=name, **tol)


UP2D_CASES = [
    ((2, 3, 4, 3), (2, 2), "nearest"),
    ((2, 3, 4, 3), (3, 2), "nearest"),
    ((2, 3, 4, 3), (2, 2), "bilinear"),
    ((2, 3, 4, 3), (3, 2), "bilinear"),
    ((1, 5, 2, 2), (1, 4), "bilinear"),
    ((2, 1, 2, 1), (3, 3), "bilinear"),
]


@pytest.mark.parametrize("shape,size,interpolation", UP2D_CASES)
def test_upsampling2d_matches_keras(keras, shape, size, interpolation):
    rng = np.random.default_rng(4)
    x = rng.standard_normal(shape).astype(np.float32)
    out_shape = (shape[0], shape[1] * size[0], shape[2] * size[1], shape[3])
    R = rng.standard_normal(out_shape).astype(np.float32)
    ky, kdx, _ = _keras_run(keras, keras.layers.UpSampling2D(size, interpolation=interpolation), x, R)
    y, dx, _, _ = run({"type": "UpSampling2D", "size": list(size), "interpolation": interpolation}, x, None,
                      False, R)
    assert y.shape == out_shape
    np.testing.assert_allclose(y, ky, **TOL[np.float32])
    np.testing.assert_allclose(dx, kdx, **TOL[np.float32])


@pytest.mark.parametrize("size", [1, 2, 3])
def test_upsampling1d_matches_keras(keras, size):
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 4, 3)).astype(np.float32)
    R = rng.standard_normal((2, 4 * size, 3)).astype(np.float32)
    ky, kdx, _ = _keras_run(keras, keras.layers.UpSampling1D(size), x, R)
    y, dx, _, _ = run({"type": "UpSampling1D", "size": size}, x, None, False, R)
    np.testing.assert_allclose(y, ky, **TOL[np.float32])
    np.testing.assert_allclose(dx, kdx, **TOL[np.float32])
