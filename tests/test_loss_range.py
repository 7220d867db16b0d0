"""Every loss at the ends of its range — probabilities exactly 0 and 1 and at the clipping bounds, logits
of +-40 (a probability that rounds to 1), +-1e4 and +-float32 max, huge regression errors — against float64
references written here: the value, and the gradient w.r.t. the predictions (or the logits, fused), to
float32 rounding (tests/test_activation_range.assert_exact), never NaN. Through the Loss objects the
engine's training loop calls (compiled and run_eagerly), and through the fused MLP training step, where
the loss reads the last Dense layer's logits.
"""

from __future__ import annotations

import contextlib

import numpy as np
import pytest

import specc
from specc import layers
from specc.api.eager import no_jit
from specc.train.fused import DenseChain
from specc.train.losses import get_loss

from .test_activation_range import BIG, F32, assert_exact, expit, threads  # noqa: F401 (a fixture)

LO, HI = float(F32(1e-7)), float(F32(1 - 1e-7))  # Keras's clipping bounds, as float32 rounds them
VALUE_REL = 1e-12  # the loss value is a float64 sum


# --- inputs -----------------------------------------------------------------------------------------


def probabilities() -> np.ndarray:
    """(rows, 4) float32 predictions in [0, 1]: exact 0 and 1, the clipping bounds and their neighbours,
    values that round to 1 in float32, a seeded uniform sample."""
    edge = [0.0, 1.0, 1e-30, 1e-8, LO, float(np.nextafter(F32(LO), F32(0))), float(np.nextafter(F32(LO), F32(1))),
            HI, float(np.nextafter(F32(HI), F32(0))), float(np.nextafter(F32(HI), F32(1))), 0.5, 1 - 1e-9, 0.25]
    rng = np.random.default_rng(4)
    return np.concatenate([np.array(edge * 4, F32), rng.random(48).astype(F32)]).reshape(-1, 4)


def logits() -> np.ndarray:
    """(rows, 4) float32 logits: hand-picked rows (one class far ahead by 17, 40, 1e4; ties at the top;
    the ends of float32), then draws of extreme and ordinary values."""
    hand = np.array([[40, 0, 0, 0], [0, 40, 0, 0], [17, 0, -17, 3], [1e4, -1e4, 0, 1], [-1e4, 1e4, -1e4, 0],
                     [BIG, -BIG, 0, BIG], [-BIG, -BIG, -BIG, -BIG], [88.7, 88.7, -88.7, 0],
                     [1e30, 1e30, -1e30, 5], [0, 0, 0, 0], [103.9, 0, -103.9, -1e4], [-40, -40, -40, 0]], F32)
    pool = np.array([0, 1, -1, 17, -17, 40, -40, 88.7, -88.7, 104, -104, 1e4, -1e4, 1e30, -1e30, BIG, -BIG], F32)
    rng = np.random.default_rng(5)
    drawn = np.where(rng.random((20, 4)) < 0.5, rng.choice(pool, (20, 4)), rng.standard_normal((20, 4)) * 5)
    return np.concatenate([hand, drawn.astype(F32)])


def binary_targets(shape, seed: int = 6) -> np.ndarray:
    """0, 1 and 0.3 (a soft label) per element."""
    return np.random.default_rng(seed).choice(np.array([0, 1, 0.3], F32), shape)


def class_targets(z: np.ndarray, soft: bool) -> tuple[np.ndarray, np.ndarray]:
    """(labels, one-hot or soft targets): the first half of the rows labelled with their top logit (a
    confident right answer), the rest with a random other class (a confident wrong one)."""
    rng = np.random.default_rng(7)
    n = z.shape[1]
    labels = np.where(np.arange(len(z)) < len(z) // 2, z.argmax(axis=1), rng.integers(0, n, len(z)))
    t = np.eye(n, dtype=F32)[labels]
    if soft:
        t = (0.8 * t + 0.05).astype(F32)
    return labels, t


# --- float64 references -----------------------------------------------------------------------------


def log_softmax64(z: np.ndarray) -> np.ndarray:
    """log softmax, keeping the digits of log p where p rounds to 1: log1p of the other terms."""
    z = z.astype(np.float64)
    top = z.argmax(axis=1)[:, None]
    m = np.take_along_axis(z, top, axis=1)
    e = np.exp(z - m)
    others = np.arange(z.shape[1]) != top
    return (z - m) - np.log1p((e * others).sum(axis=1, keepdims=True))


def softmax_crossentropy_gradient(z: np.ndarray, t: np.ndarray) -> np.ndarray:
    """d/dz of -sum_j t_j log softmax(z)_j = p_j sum(t) - t_j, as p_j sum_{i != j} t_i - t_j sum_{i != j} p_i
    (no cancellation where p_j rounds to 1)."""
    p = np.exp(log_softmax64(z))
    not_j = 1 - np.eye(z.shape[1])
    return p * (t @ not_j) - t * (p @ not_j)


def reference(name: str, t: np.ndarray, p: np.ndarray, from_logits: bool) -> tuple[float, np.ndarray]:
    """(value, gradient w.r.t. p) of Keras's loss under "sum_over_batch_size", in float64."""
    t64, p64 = t.astype(np.float64), p.astype(np.float64)
    rows, n = p.shape
    if name == "sparse_categorical_crossentropy":  # t: the labels one-hot
        name = "categorical_crossentropy"
    if name == "categorical_crossentropy":
        if from_logits:
            per_row = -(t64 * log_softmax64(p)).sum(axis=1)
            return per_row.mean(), softmax_crossentropy_gradient(p, t64) / rows
        s = p64.sum(axis=1, keepdims=True)
        s = np.where(s == 0, 1, s)  # an all-zero row: clipped, as the kernel does (Keras: 0/0)
        q = p64 / s
        qc = np.clip(q, LO, HI)
        inside = (q >= LO) & (q <= HI)
        g = np.where(inside, -t64 / qc, 0)
        return -(t64 * np.log(qc)).sum(axis=1).mean(), (g - (g * q).sum(axis=1, keepdims=True)) / s / rows
    if name == "binary_crossentropy":
        if from_logits:  # softplus(x) - t x, and its derivative sigmoid(x) - t = (1 - t) s(x) - t s(-x)
            a = np.abs(p64)
            value = np.maximum(p64, 0) - t64 * p64 + np.log1p(np.exp(-a))
            return value.mean(), ((1 - t64) * expit(p64) - t64 * expit(-p64)) / (rows * n)
        q = np.clip(p64, LO, HI)
        value = -(t64 * np.log(q) + (1 - t64) * np.log(1 - q))
        grad = np.where((p64 >= LO) & (p64 <= HI), (q - t64) / (q * (1 - q)), 0)
        return value.mean(), grad / (rows * n)
    if name == "kl_divergence":
        tc, q = np.clip(t64, LO, 1), np.clip(p64, LO, 1)
        return (tc * np.log(tc / q)).sum(axis=1).mean(), np.where((p64 >= LO) & (p64 <= 1), -tc / q, 0) / rows
    d = p64 - t64
    if name == "mean_squared_error":
        return (d * d).mean(), 2 * d / (rows * n)
    if name == "mean_absolute_error":
        return np.abs(d).mean(), np.sign(d) / (rows * n)
    if name == "huber":
        a = np.abs(d)
        return np.where(a <= 1, 0.5 * d * d, a - 0.5).mean(), np.clip(d, -1, 1) / (rows * n)
    if name == "hinge":
        s = 2 * t64 - 1
        margin = 1 - s * p64
        return np.maximum(margin, 0).mean(), np.where(margin > 0, -s, 0) / (rows * n)
    raise KeyError(name)


def assert_value(got: float, want: float, what: str) -> None:
    assert np.isfinite(got), f"{what}: value {got}"
    assert abs(got - want) <= VALUE_REL * abs(want) + 1e-300, f"{what}: value {got!r}, want {want!r}"


def runtime(eager: bool):
    return no_jit() if eager else contextlib.nullcontext()


# --- the Loss objects (the engine's training loop and evaluate) --------------------------------------

CASES = [  # (loss, from_logits, predictions)
    ("binary_crossentropy", False, "probabilities"),
    ("binary_crossentropy", True, "logits"),
    ("categorical_crossentropy", False, "probabilities"),
    ("categorical_crossentropy", True, "logits"),
    ("sparse_categorical_crossentropy", False, "probabilities"),
    ("sparse_categorical_crossentropy", True, "logits"),
    ("kl_divergence", False, "probabilities"),
    ("mean_squared_error", False, "logits"),
    ("mean_absolute_error", False, "logits"),
    ("huber", False, "logits"),
    ("hinge", False, "logits"),
]


@pytest.mark.parametrize("eager", [False, True], ids=["compiled", "eager"])
@pytest.mark.parametrize("soft", [False, True], ids=["hard", "soft"])
@pytest.mark.parametrize("name,from_logits,kind", CASES, ids=[f"{c[0]}{'-logits' if c[1] else ''}" for c in CASES])
def test_loss_is_exact_at_the_extremes(name, from_logits, kind, soft, eager):
    p = probabilities() if kind == "probabilities" else logits()
    labels, onehot = class_targets(p, soft)
    if name == "sparse_categorical_crossentropy":
        if soft:
            pytest.skip("sparse labels are hard")
        y_true, t = labels, onehot
    elif name in ("categorical_crossentropy", "kl_divergence"):
        y_true = t = onehot
    elif name == "hinge":
        y_true = t = binary_targets(p.shape).round().astype(F32)  # 0/1 labels (hinge maps them to -1/+1)
    elif name in ("mean_squared_error", "mean_absolute_error", "huber"):  # targets far from the predictions too
        y_true = t = np.roll(p, 1, axis=0) if soft else binary_targets(p.shape)
    else:
        y_true = t = binary_targets(p.shape) if soft else binary_targets(p.shape).round().astype(F32)
    want_value, want_grad = reference(name, t, p, from_logits)
    with runtime(eager):
        value, grad = get_loss(name, from_logits=from_logits)(y_true, p)
    assert_value(value, want_value, name)
    assert_exact(grad, want_grad, f"{name} gradient")


@pytest.mark.parametrize("eager", [False, True], ids=["compiled", "eager"])
@pytest.mark.parametrize("name,activation", [("categorical_crossentropy", "softmax"),
                                             ("sparse_categorical_crossentropy", "softmax"),
                                             ("binary_crossentropy", "sigmoid")])
def test_fused_loss_is_exact_at_the_extremes(name, activation, eager):
    """Loss.fused: the loss of the activation's output from the logits, its gradient w.r.t. the logits."""
    z = logits()
    labels, t = class_targets(z, soft=False)
    if name == "binary_crossentropy":
        t = binary_targets(z.shape)
    want_value, want_grad = reference(name, t, z, True)
    with runtime(eager):
        value, grad = get_loss(name).fused(activation, labels if name.startswith("sparse") else t, z)
    assert_value(value, want_value, name)
    assert_exact(grad, want_grad, f"fused {name} gradient")


def test_a_confident_right_answer_has_its_tiny_loss_and_gradient():
    """[40, 0, 0, 0] labelled 0: the loss is log1p(3 e^-40) = 1.3e-17 and d/dz_0 = -3e-17 / (1 + 3e-17),
    not 0 (log-sum-exp as m + log(s) rounds them away)."""
    z = np.array([[40, 0, 0, 0]], F32)
    tiny = 3 * np.exp(-40.0)
    for labels, loss in ((np.array([0]), "sparse_categorical_crossentropy"),
                         (np.eye(4, dtype=F32)[[0]], "categorical_crossentropy")):
        value, grad = get_loss(loss, from_logits=True)(labels, z)
        assert value == pytest.approx(np.log1p(tiny), rel=1e-12)
        assert grad[0, 0] == pytest.approx(-tiny / (1 + tiny), rel=2**-22)
    value, grad = get_loss("binary_crossentropy", from_logits=True)(np.ones((1, 1), F32), z[:, :1])
    assert value == pytest.approx(np.log1p(np.exp(-40.0)), rel=1e-12)
    assert grad[0, 0] == pytest.approx(-np.exp(-40.0), rel=2**-22)


# --- the fused MLP training step ---------------------------------------------------------------------

FUSED = [  # (activation, loss, from_logits)
    ("softmax", "categorical_crossentropy", False),
    ("softmax", "sparse_categorical_crossentropy", False),
    ("sigmoid", "binary_crossentropy", False),
    ("linear", "categorical_crossentropy", True),
    ("linear", "sparse_categorical_crossentropy", True),
    ("linear", "binary_crossentropy", True),
]


@pytest.mark.usefixtures("threads")
@pytest.mark.parametrize("eager", [False, True], ids=["compiled", "eager"])
@pytest.mark.parametrize("activation,name,from_logits", FUSED, ids=[f"{a}-{n}" for a, n, _ in FUSED])
def test_mlp_training_step_is_exact_at_the_extremes(activation, name, from_logits, eager):
    """One Dense layer whose logits on the one-hot inputs are z, so that its kernel's gradient is the
    gradient w.r.t. the logits; the step reads the logits (softmax/sigmoid fused) or the linear output.
    Then the same without +-float32 max, whose sum over the outputs the step's NaN check overflows (see
    the xfail below), for the value."""
    for z in (logits(), np.clip(logits(), -1e30, 1e30)):
        value, grad, (want_value, want_grad) = _mlp_step(z, activation, name, from_logits, eager)
        assert_exact(grad, want_grad, f"fused MLP {name} gradient")
    assert_value(value, want_value, name)


def _mlp_step(z, activation, name, from_logits, eager):
    rows, n = z.shape
    labels, t = class_targets(z, soft=False)
    if name == "binary_crossentropy":
        t = binary_targets(z.shape)
    y = labels if name.startswith("sparse") else t
    specc.clear_session()
    model = specc.Sequential([specc.Input((rows,)), layers.Dense(n, activation=activation)])
    model.set_weights([z, np.zeros(n, F32)])
    engine = model._engine()
    chain = DenseChain.of(engine)
    assert chain is not None
    step = chain.trainer(get_loss(name, from_logits=from_logits), None if from_logits else activation)
    with runtime(eager):
        value, _ = step(np.eye(rows, dtype=F32), step.targets(y))
    return value, engine.steps[0].grads[0].copy(), reference(name, t, z, True)


def test_mlp_training_step_value_with_outputs_that_sum_past_float32():
    z = np.array([[BIG, 0], [BIG, 0], [0, 1]], F32)
    value, _, (want_value, _) = _mlp_step(z, "linear", "categorical_crossentropy", True, False)
    assert_value(value, want_value, "categorical_crossentropy")


# --- the engine's activation + loss fusion (the training loop's general path) ------------------------

ENGINE_FUSED = [("softmax", "categorical_crossentropy"), ("softmax", "sparse_categorical_crossentropy"),
                ("sigmoid", "binary_crossentropy")]


@pytest.mark.usefixtures("threads")
@pytest.mark.parametrize("eager", [False, True], ids=["compiled", "eager"])
@pytest.mark.parametrize("kind", ["activation", "conv"])
@pytest.mark.parametrize("activation,name", ENGINE_FUSED, ids=[f"{a}-{n}" for a, n in ENGINE_FUSED])
def test_engine_training_step_is_exact_at_the_extremes(activation, name, kind, eager):
    """An Activation layer (after a linear Dense) or a Conv2D with the activation, whose pre-activation is
    the logits: the Trainer fuses the activation into the loss and the engine's backward starts from the
    logits' gradient, read here from the kernel gradient as in the MLP test."""
    from specc.engine import Engine
    from specc.spec import load_spec_text
    from specc.train.fit import Trainer

    z = logits()
    rows, n = z.shape
    if kind == "activation":
        model = f"input: [{rows}]\n  layers: [{{type: Dense, units: {n}}}, {{type: Activation, activation: {activation}}}]"
    else:
        model = f"input: [1, 1, {rows}]\n  layers: [{{type: Conv2D, filters: {n}, kernel_size: 1, activation: {activation}}}]"
    x = np.eye(rows, dtype=F32).reshape(rows, *([1, 1] if kind == "conv" else []), rows)
    spec, errors = load_spec_text(f"specc: 1\nmodel:\n  {model}\ncompile:\n  optimizer: sgd\n  loss: {name}\n")
    assert not errors, errors
    engine = Engine(spec.graph, F32)
    engine.steps[0].weights[0][...] = z.reshape(engine.steps[0].weights[0].shape)
    engine.steps[0].weights[1][...] = 0
    trainer = Trainer(engine, spec.compile, 0)
    assert trainer.fused_step is None and trainer.fused == [activation], "not the engine's fused path"
    labels, t = class_targets(z, soft=False)
    if name == "binary_crossentropy":
        t = binary_targets(z.shape)
    spatial = (1, 1) if kind == "conv" else ()
    y = labels.reshape(rows, *spatial) if name.startswith("sparse") else t.reshape(rows, *spatial, n)
    with runtime(eager):
        value = trainer.train_step([x], [y], None)[0]
    want_value, want_grad = reference(name, t, z, True)
    assert_value(value, want_value, name)
    assert_exact(engine.steps[0].grads[0].reshape(rows, n), want_grad, f"engine {kind} {name} gradient")
