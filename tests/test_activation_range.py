"""Every activation, forward and gradient, over the whole float32 range (the tails, +-1e4, +-float32 max,
and both sides of every kink and overflow threshold), against float64 references written here, through
each code path a model runs:

- the fused MLP kernel (a chain of Dense layers: predict() and its training step, kernels/fused.py),
- the engine's central activation (Dense and Conv2D with an activation, and the Activation layer),
- the eager path (run_eagerly: the kernels' Python source on NumPy scalars),
- the activation kernels called directly on larger arrays (vector loops and their remainders),

at one and two threads. Each model is set up so that its pre-activation is exactly the chosen values: the
inputs are one-hot rows (batch R, R features) and the kernel's row r holds the values of sample r, bias
zero, so z = x @ kernel is exact, and the kernel's gradient x.T @ dz is dz itself, element by element.

"Exact" means within a few float32 ulps of the float64 reference (REL), or, below float32's normal range,
within its smallest normal number (where float32 itself has no relative precision). A value whose
true result overflows float32 must be +-inf, and nothing may be NaN.
"""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
from scipy import special

import specc
from specc import layers
from specc.api.eager import no_jit
from specc.kernels import activations as A
from specc.kernels import configure_threads
from specc.train.fused import DenseChain
from specc.train.losses import get_loss

F32 = np.float32
BIG = float(np.finfo(F32).max)
TINY = float(np.finfo(F32).tiny)
REL = 2.0**-22  # float32: 4 ulps at the bottom of a binade, 2 at the top
# float64 (the engine's other dtype): the kernels' exp is within 1e-13, and where a derivative crosses zero
# (gelu's at -0.75) its terms cancel to a few 1e-11 relative in any float64 formula, the reference's too
REL64 = 1e-9
ELEMENTWISE = ["linear", "relu", "relu6", "leaky_relu", "elu", "selu", "gelu", "sigmoid", "hard_sigmoid", "tanh",
               "softplus", "softsign", "silu", "exponential"]
SELU_ALPHA, SELU_SCALE = 1.6732632423543772, 1.0507009873554805


def _values() -> np.ndarray:
    """float32 pre-activations: a grid over [-120, 120], the far range, and each threshold with its
    float32 neighbours (kinks at 0, +-3, 6; the float32 exp overflow near 88.72 and underflow near
    -103.97; where sigmoid and tanh round to +-1 in float32 and float64; float64's exp limits)."""
    points = [0.0, 1e-30, 1e-7, 0.5, 0.75179, 1.0, 1.27846, 3.0, 6.0, 9.0, 17.0, 20.0, 37.0, 44.0, 87.3, 88.0,
              88.72284, 89.0, 103.97, 104.0, 150.0, 355.0, 709.0, 710.0, 745.0, 1e4, 1e30, BIG]
    with np.errstate(over="ignore"):  # BIG's upper neighbour is inf, dropped below
        near = [np.nextafter(F32(p), F32(np.inf)) for p in points] + [np.nextafter(F32(p), F32(-np.inf)) for p in points]
    special_ = np.array(points + near, F32)
    grid = np.linspace(-120, 120, 481, dtype=F32)
    v = np.concatenate([grid, special_, -special_, [F32(-0.0)]])
    v = v[np.isfinite(v)]
    rng = np.random.default_rng(0)
    return rng.permutation(v)


VALUES = _values()


# --- float64 references -----------------------------------------------------------------------------


def expit(x: np.ndarray) -> np.ndarray:
    """The logistic function, exact in both tails (scipy's expit is 0 below -709, not subnormal)."""
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1, e) / (1 + e)


def reference(name: str, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(act(x), act'(x)) in float64, written from the definitions (Keras 3's) in a form that is exact in
    float64 over the whole range. At a kink the derivative is the one of the side x > 0 decides (as
    Keras/TensorFlow: relu'(0) = 0, leaky_relu'(0) = slope)."""
    x = x.astype(np.float64)
    with np.errstate(over="ignore"):
        if name == "linear":
            return x, np.ones_like(x)
        if name == "relu":
            return np.maximum(x, 0), (x > 0) * 1.0
        if name == "relu6":
            return np.clip(x, 0, 6), ((x > 0) & (x < 6)) * 1.0
        if name == "leaky_relu":
            return np.where(x > 0, x, 0.2 * x), np.where(x > 0, 1.0, 0.2)
        if name == "elu":
            return np.where(x > 0, x, np.expm1(np.minimum(x, 0))), np.where(x > 0, 1.0, np.exp(np.minimum(x, 0)))
        if name == "selu":
            neg = SELU_ALPHA * np.expm1(np.minimum(x, 0))
            return SELU_SCALE * np.where(x > 0, x, neg), SELU_SCALE * np.where(x > 0, 1.0, SELU_ALPHA * np.exp(np.minimum(x, 0)))
        if name == "gelu":  # x * Phi(x), Phi(x) = erfc(-x / sqrt 2) / 2 (no cancellation for x << 0)
            phi = 0.5 * special.erfc(-x / np.sqrt(2))
            density = np.exp(-0.5 * np.minimum(x * x, 1e300)) / np.sqrt(2 * np.pi)
            return x * phi, phi + x * density
        if name == "sigmoid":
            return expit(x), expit(x) * expit(-x)
        if name == "hard_sigmoid":
            return np.clip((x + 3) / 6, 0, 1), ((x > -3) & (x < 3)) / 6.0
        if name == "tanh":
            return np.tanh(x), 1 / np.cosh(x) ** 2
        if name == "softplus":
            return np.logaddexp(0, x), expit(x)
        if name == "softsign":
            return x / (1 + np.abs(x)), 1 / (1 + np.abs(x)) ** 2
        if name == "silu":
            return x * expit(x), expit(x) * (1 + x * expit(-x))
        if name == "exponential":
            return np.exp(x), np.exp(x)
    raise KeyError(name)


def softmax_reference(z: np.ndarray, dy: np.ndarray, log: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row-wise (log_)softmax of z, the gradient J.T @ dy, and the sum of the gradient's terms' magnitudes,
    in float64, in forms that do not cancel where a probability rounds to 1: log-sum-exp as the maximum
    plus log1p of the other terms, the softmax gradient as p_j sum_i p_i (dy_j - dy_i), log_softmax's as
    dy_j sum_{i != j} p_i - p_j sum_{i != j} dy_i.

    The magnitudes bound what float64 can resolve in a kernel that sums in O(n) (y_j sum_i y_i dy_i
    against y_j dy_j): a gradient far below them cancels there, as it does in any float64 computation."""
    z = z.astype(np.float64)
    dy = dy.astype(np.float64)
    top = z.argmax(axis=-1)[:, None]
    m = np.take_along_axis(z, top, axis=-1)
    e = np.exp(z - m)
    others = np.arange(z.shape[-1]) != top  # every entry but one maximum
    p = e / e.sum(axis=-1, keepdims=True)
    if not log:
        grad = p * np.einsum("ri,rji->rj", p, dy[:, :, None] - dy[:, None, :])
        return p, grad, p * np.einsum("ri,rji->rj", p, np.abs(dy[:, :, None]) + np.abs(dy[:, None, :]))
    y = (z - m) - np.log1p((e * others).sum(axis=-1, keepdims=True))
    not_j = 1 - np.eye(z.shape[-1])
    return y, dy * (p @ not_j) - p * (dy @ not_j), np.abs(dy) + p * np.abs(dy).sum(axis=-1, keepdims=True)


def assert_exact(got: np.ndarray, want: np.ndarray, what: str, dtype=F32, magnitude=0.0) -> None:
    """got against the float64 `want`: NaN nowhere; +-inf where want rounds to it in `dtype`; elsewhere
    within REL of want (REL64 in float64), or within the smallest normal number below the normal range,
    plus float64's resolution of `magnitude` (see softmax_reference)."""
    info = np.finfo(dtype)
    rel = REL if dtype == F32 else REL64
    got = np.asarray(got, np.float64)
    want = np.asarray(want, np.float64)
    assert got.shape == want.shape, (what, got.shape, want.shape)
    with np.errstate(over="ignore"):
        overflow = np.isinf(want.astype(dtype))
    with np.errstate(invalid="ignore"):
        close = np.abs(got - want) <= rel * np.abs(want) + float(info.tiny) + 1e-15 * magnitude
    bad = np.where(overflow, got != np.copysign(np.inf, want), ~close)
    if bad.any():
        idx = np.flatnonzero(bad)[:8]
        rows = [f"  got {got.reshape(-1)[i]!r} want {want.reshape(-1)[i]!r}" for i in idx]
        pytest.fail(f"{what}: {bad.sum()} of {bad.size} wrong, e.g.\n" + "\n".join(rows))


# --- the models -------------------------------------------------------------------------------------


@pytest.fixture(params=[1, 2], ids=["1thread", "2threads"], scope="module")
def threads(request):
    configure_threads(request.param)
    yield request.param
    configure_threads(None)


def layout(cols: int) -> np.ndarray:
    """VALUES as (rows, cols), the last row filled up with a seeded normal sample."""
    rows = -(-len(VALUES) // cols)
    pad = (np.random.default_rng(1).standard_normal(rows * cols - len(VALUES)) * 10).astype(F32)
    return np.concatenate([VALUES, pad]).reshape(rows, cols)


def softmax_layout() -> np.ndarray:
    """Rows of 4 logits: extremes by hand (a probability that rounds to 1 in float32 or float64, huge gaps,
    ties, the ends of float32), then random draws from VALUES."""
    hand = np.array([[0, -69, -80, -100], [40, 0, 0, 0], [17, 0, -17, 3], [1e4, -1e4, 0, 1],
                     [BIG, -BIG, 0, BIG], [-BIG, -BIG, -BIG, -BIG], [88.7, 88.7, -88.7, 0],
                     [-1e4, -1e4 + 1, -1e4, -1e4], [1e30, 1e30, -1e30, 5], [0, 0, 0, 0],
                     [103.9, 0, -103.9, -1e4], [3, -3, 6, -6]], F32)
    drawn = np.random.default_rng(2).choice(VALUES, (52, 4)).astype(F32)
    return np.concatenate([hand, drawn])


def signs(shape, seed: int = 3) -> np.ndarray:
    """+-1 per element: as the gradient of the output it adds no cancellation of its own to softmax's."""
    return np.where(np.random.default_rng(seed).random(shape) < 0.5, -1.0, 1.0).astype(F32)


KINDS = ["dense", "activation", "conv"]


def build(kind: str, activation: str, z: np.ndarray, eager: bool):
    """A model whose pre-activation on the inputs `inputs(kind, rows)` is z (rows, cols)."""
    rows, cols = z.shape
    specc.clear_session()
    if kind == "dense":  # a Dense-only chain: the fused MLP kernel
        model = specc.Sequential([specc.Input((rows,)), layers.Dense(cols, activation=activation)])
    elif kind == "activation":
        model = specc.Sequential([specc.Input((rows,)), layers.Dense(cols), layers.Activation(activation)])
    else:
        model = specc.Sequential([specc.Input((1, 1, rows)), layers.Conv2D(cols, 1, activation=activation)])
    set_pre_activations(model, z)
    model.compile(optimizer="sgd", loss="mae", run_eagerly=eager)
    return model


def set_pre_activations(model, z: np.ndarray) -> None:
    kernel = model.get_weights()[0]
    model.set_weights([z.reshape(kernel.shape), np.zeros(z.shape[1], F32)])


def inputs(kind: str, rows: int) -> np.ndarray:
    """One-hot rows: sample r's pre-activation is the kernel's row r."""
    x = np.eye(rows, dtype=F32)
    return x.reshape(rows, 1, 1, rows) if kind == "conv" else x


@contextlib.contextmanager
def runtime(eager: bool):
    """run_eagerly's context for the engine and the fused step called directly."""
    with no_jit() if eager else contextlib.nullcontext():
        assert (type(A.forward).__name__ == "function") == eager  # the Python source, or compiled
        yield


def engine_gradient(model, kind: str, z: np.ndarray, dy: np.ndarray, eager: bool) -> np.ndarray:
    """d(sum(dy * output)) / d(pre-activation), through the engine's backward: the kernel's gradient,
    which the one-hot inputs make equal to it."""
    set_pre_activations(model, z)
    engine = model._engine()
    with runtime(eager):
        out = engine.forward([inputs(kind, len(z))])
        engine.backward([dy.reshape(out[0].shape)])
    return engine.steps[0].grads[0].reshape(z.shape).copy()


def fused_gradient(model, z: np.ndarray, want: np.ndarray, s: np.ndarray, eager: bool) -> np.ndarray:
    """The fused MLP training step's gradient w.r.t. the pre-activation under mean absolute error, with
    targets that make the output's gradient s / z.size (want: the output's reference)."""
    set_pre_activations(model, z)
    engine = model._engine()
    chain = DenseChain.of(engine)
    assert chain is not None, "not the fused path"
    step = chain.trainer(get_loss("mae"), None)
    # output - target = s * (1 + |output|): its sign is s
    targets = (want - s * (1 + np.abs(want))).astype(F32)
    with runtime(eager):
        step(inputs("dense", len(z)), step.targets(targets))
    return engine.steps[0].grads[0].reshape(z.shape).copy()


# --- the tests --------------------------------------------------------------------------------------


@pytest.mark.parametrize("eager", [False, True], ids=["compiled", "eager"])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("activation", ELEMENTWISE)
def test_elementwise_activation_is_exact_over_the_float32_range(threads, activation, kind, eager):
    z = layout(33 if eager else 131)  # widths that leave a remainder after the vector loops
    want, slope = reference(activation, z)
    model = build(kind, activation, z, eager)
    y = model.predict(inputs(kind, len(z)), batch_size=len(z), verbose=0)
    assert_exact(y.reshape(z.shape), want, f"{kind} {activation} forward")

    # Gradients where they are finite: an infinite one (exponential's past float32's range) would turn the
    # kernel gradient's zero products with the other one-hot rows into NaN, as in any model.
    ok = np.isfinite(slope) & (np.abs(want) < 1e37)
    zg = np.where(ok, z, F32(0))
    want, slope = reference(activation, zg)
    s = signs(z.shape)
    dy = s / F32(z.size)  # a power of two apart from s: the gradient of mean absolute error
    expected = slope * dy
    assert_exact(engine_gradient(model, kind, zg, dy, eager), expected, f"{kind} {activation} gradient")
    if kind == "dense":
        assert_exact(fused_gradient(model, zg, want, s, eager), expected, f"fused {activation} gradient")


@pytest.mark.parametrize("eager", [False, True], ids=["compiled", "eager"])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("activation", ["softmax", "log_softmax"])
def test_softmax_is_exact_for_extreme_logits(threads, activation, kind, eager):
    z = softmax_layout()
    log = activation == "log_softmax"
    s = signs(z.shape)
    dy = s / F32(z.size)
    want, expected, magnitude = softmax_reference(z, dy, log)
    model = build(kind, activation, z, eager)
    y = model.predict(inputs(kind, len(z)), batch_size=len(z), verbose=0)
    assert_exact(y.reshape(z.shape), want, f"{kind} {activation} forward")
    assert_exact(engine_gradient(model, kind, z, dy, eager), expected, f"{kind} {activation} gradient",
                 magnitude=magnitude)
    if kind == "dense":  # rows whose log_softmax overflows float32 give the loss an infinite output
        with np.errstate(over="ignore"):
            zg = np.where(np.isfinite(want.astype(F32)).all(axis=-1, keepdims=True), z, F32(0))
        want, expected, magnitude = softmax_reference(zg, dy, log)
        assert_exact(fused_gradient(model, zg, want, s, eager), expected, f"fused {activation} gradient",
                     magnitude=magnitude)


@pytest.mark.parametrize("dtype", [F32, np.float64])
@pytest.mark.parametrize("activation", ELEMENTWISE + ["softmax", "log_softmax"])
def test_kernels_called_directly_on_a_large_array(threads, activation, dtype):
    """forward and backward on a (3, 1003) array (softmax: rows of 4), the gradient written over dy as the
    fused kernel does, in float32 and in float64 (the engine's other dtype)."""
    code = A.CODE[activation]
    if activation in ("softmax", "log_softmax"):
        z = np.tile(softmax_layout(), (20, 1))
        dy = signs(z.shape) / 256
        want, expected, magnitude = softmax_reference(z, dy, activation == "log_softmax")
    else:
        magnitude = 0.0
        z = np.resize(VALUES, (3, 1003))
        dy = signs(z.shape) / 256
        want, slope = reference(activation, z)
        with np.errstate(invalid="ignore"):
            expected = slope * dy
    z, dy = z.astype(dtype), dy.astype(dtype)
    y = np.empty_like(z)
    A.forward(code, z, y)
    A.backward(code, z, y, dy, dy)
    finite = np.isfinite(expected)
    assert_exact(y, want, f"{activation} forward", dtype)
    assert_exact(np.where(finite, dy, 0), np.where(finite, expected, 0), f"{activation} gradient", dtype,
                 magnitude)
