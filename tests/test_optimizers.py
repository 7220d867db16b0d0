"""Optimizers: every optimizer and option step by step against an independent NumPy implementation of
the published (Keras 3 documented) update rules, against Keras 3 optimizers on the same variables and
gradients, and SGD/Adam/AdamW against torch.optim; clipping, weight decay and schedules."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest

from specc.spec.schema import OptimizerDef
from specc.train.optimizers import (
    CosineDecay,
    ExponentialDecay,
    PiecewiseConstantDecay,
    RMSprop,
    make_optimizer,
    variable_offsets,
)

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # Keras on NumPy 2

# A small multi-variable problem: a (3, 2) kernel, a bias, a vector, a scalar-sized variable.
SHAPES = [(3, 2), (2,), (4,), (1,)]
OFFSETS = np.cumsum([0] + [int(np.prod(s)) for s in SHAPES])
STEPS = 5

# Keras 3 defaults, written out independently of the implementation (checked against Keras below).
KERAS_DEFAULTS = {
    "sgd": dict(learning_rate=0.01, momentum=0.0, nesterov=False),
    "adam": dict(learning_rate=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-7, amsgrad=False),
    "adamw": dict(learning_rate=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-7, amsgrad=False, weight_decay=0.004),
    "rmsprop": dict(learning_rate=0.001, rho=0.9, momentum=0.0, epsilon=1e-7, centered=False),
    "adagrad": dict(learning_rate=0.001, initial_accumulator_value=0.1, epsilon=1e-7),
    "adadelta": dict(learning_rate=0.001, rho=0.95, epsilon=1e-7),
    "nadam": dict(learning_rate=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-7),
}

CLIPS = [{}, {"clipnorm": 0.5}, {"clipvalue": 0.3}, {"global_clipnorm": 0.8}]

# (optimizer type, OptimizerDef arguments): each optimizer's own options
OWN = [
    ("sgd", {}), ("sgd", {"learning_rate": 0.1, "momentum": 0.9}),
    ("sgd", {"learning_rate": 0.1, "momentum": 0.9, "nesterov": True}),
    ("sgd", {"learning_rate": 0.1, "momentum": 0.5, "weight_decay": 0.05}),
    ("adam", {}), ("adam", {"learning_rate": 0.05, "amsgrad": True}),
    ("adam", {"learning_rate": 0.05, "beta_1": 0.8, "beta_2": 0.99, "epsilon": 0.01}),
    ("adam", {"learning_rate": 0.05, "weight_decay": 0.1}),
    ("adamw", {}), ("adamw", {"learning_rate": 0.05, "weight_decay": 0.2, "amsgrad": True}),
    ("rmsprop", {}), ("rmsprop", {"learning_rate": 0.05, "momentum": 0.9}),
    ("rmsprop", {"learning_rate": 0.05, "rho": 0.5, "epsilon": 0.01, "weight_decay": 0.1}),
    ("adagrad", {}), ("adagrad", {"learning_rate": 0.1, "initial_accumulator_value": 0.5, "epsilon": 0.01}),
    ("adadelta", {}), ("adadelta", {"learning_rate": 1.0, "rho": 0.5, "epsilon": 1e-3}),
    ("nadam", {}), ("nadam", {"learning_rate": 0.05, "beta_1": 0.8, "beta_2": 0.9, "weight_decay": 0.1}),
]
SCHEDULES = [
    {"type": "ExponentialDecay", "initial_learning_rate": 0.1, "decay_steps": 2, "decay_rate": 0.5},
    {"type": "ExponentialDecay", "initial_learning_rate": 0.1, "decay_steps": 2, "decay_rate": 0.5, "staircase": True},
    {"type": "CosineDecay", "initial_learning_rate": 0.1, "decay_steps": 3, "alpha": 0.1},
    {"type": "PiecewiseConstantDecay", "boundaries": [1, 3], "values": [0.1, 0.05, 0.01]},
]
CASES = ([(t, dict(kw, **clip)) for t, kw in OWN for clip in CLIPS]
         + [(t, {"learning_rate": s}) for t in KERAS_DEFAULTS for s in SCHEDULES[::len(SCHEDULES) - 1]]
         + [("sgd", {"learning_rate": s}) for s in SCHEDULES[1:3]])


def case_id(case):
    return f"{case[0]}-" + "-".join(f"{k}={v['type'] if isinstance(v, dict) else v}" for k, v in case[1].items())


def problem(seed: int = 0):
    """Initial variables and STEPS gradient lists; the kernel's gradients are large so clipnorm bites."""
    rng = np.random.default_rng(seed)
    variables = [rng.normal(size=s) for s in SHAPES]
    scale = [3.0, 0.2, 1.0, 0.05]
    grads = [[rng.normal(size=s) * k for s, k in zip(SHAPES, scale, strict=True)] for _ in range(STEPS)]
    return variables, grads


def flat(arrays) -> np.ndarray:
    return np.concatenate([np.ravel(a) for a in arrays])


# --- the reference: Keras 3's documented rules, per variable, in plain NumPy ------------------------------


def ref_schedule(lr):
    if not isinstance(lr, dict):
        return lambda step: lr
    if lr["type"] == "ExponentialDecay":
        def f(step):
            p = step / lr["decay_steps"]
            return lr["initial_learning_rate"] * lr["decay_rate"] ** (math.floor(p) if lr.get("staircase") else p)
        return f
    if lr["type"] == "CosineDecay":
        def f(step):
            frac = min(step, lr["decay_steps"]) / lr["decay_steps"]
            a = lr.get("alpha", 0.0)
            return lr["initial_learning_rate"] * ((1 - a) * 0.5 * (1 + math.cos(math.pi * frac)) + a)
        return f

    def f(step):  # PiecewiseConstantDecay: inclusive upper boundaries
        return lr["values"][int(np.searchsorted(lr["boundaries"], step, side="left"))]
    return f


def ref_clip(grads, hp):
    if hp.get("clipnorm"):
        c = hp["clipnorm"]
        return [g * c / max(np.linalg.norm(g), c) for g in grads]
    if hp.get("global_clipnorm"):
        c = hp["global_clipnorm"]
        norm = math.sqrt(sum(float(np.sum(g * g)) for g in grads))
        return [g * c / max(norm, c) for g in grads]
    if hp.get("clipvalue"):
        return [np.clip(g, -hp["clipvalue"], hp["clipvalue"]) for g in grads]
    return grads


def reference_run(kind: str, kwargs: dict, variables, grad_steps, centered: bool = False):
    """Parameters (flat) after each step."""
    hp = dict(KERAS_DEFAULTS[kind], **kwargs)
    lr_at = ref_schedule(hp["learning_rate"])
    wd = hp.get("weight_decay") or 0.0
    w = [v.copy() for v in variables]
    zeros = lambda: [np.zeros_like(v) for v in variables]  # noqa: E731
    m, v, v_max, mg = zeros(), zeros(), zeros(), zeros()
    acc = [np.full_like(x, hp.get("initial_accumulator_value", 0.0)) for x in variables]
    u_prod = 1.0
    history = []
    for t, grads in enumerate(grad_steps, start=1):
        lr = lr_at(t - 1)  # the schedule sees the iterations before this update
        gs = ref_clip(grads, hp)
        w = [x - x * wd * lr for x in w]  # weight decay, before the update
        if kind == "nadam":
            b1 = hp["beta_1"]
            u_t = b1 * (1 - 0.5 * 0.96 ** t)
            u_t1 = b1 * (1 - 0.5 * 0.96 ** (t + 1))
            u_prod *= u_t
        for i, g in enumerate(gs):
            if kind == "sgd":
                mu = hp["momentum"]
                if mu:
                    m[i] = mu * m[i] - lr * g
                    w[i] = w[i] + (mu * m[i] - lr * g if hp["nesterov"] else m[i])
                else:
                    w[i] = w[i] - lr * g
            elif kind in ("adam", "adamw"):
                b1, b2, eps = hp["beta_1"], hp["beta_2"], hp["epsilon"]
                m[i] = b1 * m[i] + (1 - b1) * g
                v[i] = b2 * v[i] + (1 - b2) * g * g
                vv = v[i]
                if hp["amsgrad"]:
                    v_max[i] = np.maximum(v_max[i], v[i])
                    vv = v_max[i]
                # Kingma & Ba's "epsilon hat" form, as Keras writes it
                alpha_t = lr * math.sqrt(1 - b2 ** t) / (1 - b1 ** t)
                w[i] = w[i] - alpha_t * m[i] / (np.sqrt(vv) + eps)
            elif kind == "rmsprop":
                rho, eps, mu = hp["rho"], hp["epsilon"], hp["momentum"]
                v[i] = rho * v[i] + (1 - rho) * g * g
                denom = v[i] + eps
                if centered:
                    mg[i] = rho * mg[i] + (1 - rho) * g
                    denom = denom - mg[i] ** 2
                step = lr * g / np.sqrt(denom)
                if mu > 0:
                    m[i] = mu * m[i] + step
                    step = m[i]
                w[i] = w[i] - step
            elif kind == "adagrad":
                acc[i] = acc[i] + g * g
                w[i] = w[i] - lr * g / np.sqrt(acc[i] + hp["epsilon"])
            elif kind == "adadelta":
                rho, eps = hp["rho"], hp["epsilon"]
                v[i] = rho * v[i] + (1 - rho) * g * g  # E[g^2]
                delta = -np.sqrt(m[i] + eps) / np.sqrt(v[i] + eps) * g  # m: E[dx^2]
                m[i] = rho * m[i] + (1 - rho) * delta * delta
                w[i] = w[i] + lr * delta
            elif kind == "nadam":
                b2, eps = hp["beta_2"], hp["epsilon"]
                m[i] = b1 * m[i] + (1 - b1) * g
                v[i] = b2 * v[i] + (1 - b2) * g * g
                m_hat = u_t1 * m[i] / (1 - u_prod * u_t1) + (1 - u_t) * g / (1 - u_prod)
                v_hat = v[i] / (1 - b2 ** t)
                w[i] = w[i] - lr * m_hat / (np.sqrt(v_hat) + eps)
        history.append(flat(w))
    return history


def specc_run(kind: str, kwargs: dict, variables, grad_steps, dtype=np.float64, centered: bool = False):
    if centered:
        opt = RMSprop(OFFSETS, dtype, centered=True, **kwargs)
    else:
        opt = make_optimizer(OptimizerDef(type=kind, **kwargs), OFFSETS, dtype)
    params = flat(variables).astype(dtype)
    history = []
    for t, grads in enumerate(grad_steps):
        assert opt.iterations == t
        opt.step(params, flat(grads).astype(dtype))
        history.append(params.copy())
    assert opt.iterations == len(grad_steps)
    return history


# --- against the reference --------------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_matches_reference(case):
    kind, kwargs = case
    variables, grads = problem()
    ours = specc_run(kind, kwargs, variables, grads)
    ref = reference_run(kind, kwargs, variables, grads)
    for t, (a, b) in enumerate(zip(ours, ref, strict=True)):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14, err_msg=f"step {t + 1}")
    assert not np.allclose(ours[-1], flat(variables))


@pytest.mark.parametrize("clip", CLIPS, ids=lambda c: "-".join(c) or "none")
@pytest.mark.parametrize("momentum", [0.0, 0.5])
def test_rmsprop_centered_matches_reference(clip, momentum):
    variables, grads = problem(1)
    kwargs = dict(learning_rate=0.01, momentum=momentum, **clip)
    ours = specc_run("rmsprop", kwargs, variables, grads, centered=True)
    ref = reference_run("rmsprop", kwargs, variables, grads, centered=True)
    np.testing.assert_allclose(ours, ref, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("kind", sorted(KERAS_DEFAULTS))
def test_float32_close_to_float64(kind):
    variables, grads = problem(2)
    kwargs = {"learning_rate": 0.05, "clipnorm": 1.0}
    a = specc_run(kind, kwargs, variables, grads, np.float32)
    b = specc_run(kind, kwargs, variables, grads, np.float64)
    assert a[-1].dtype == np.float32
    np.testing.assert_allclose(a[-1] - flat(variables), b[-1] - flat(variables), rtol=1e-4, atol=1e-6)


# --- clipping and weight decay, seen directly through SGD(lr=1): params move by -clipped gradient --------------


def sgd_displacement(grads_flat, **kwargs):
    opt = make_optimizer(OptimizerDef(type="sgd", learning_rate=1.0, **kwargs), OFFSETS, np.float64)
    p = np.zeros(OFFSETS[-1])
    opt.step(p, grads_flat.copy())
    return -p


def test_clipnorm_is_per_variable():
    g = np.zeros(OFFSETS[-1])
    g[0:6] = 1.0  # norm sqrt(6) > 1: scaled to norm 1
    g[6:8] = [0.3, 0.4]  # norm 0.5 <= 1: untouched
    d = sgd_displacement(g, clipnorm=1.0)
    np.testing.assert_allclose(d[0:6], 1 / np.sqrt(6))
    np.testing.assert_allclose(d[6:8], [0.3, 0.4])
    np.testing.assert_allclose(np.linalg.norm(d[0:6]), 1.0)


def test_global_clipnorm_scales_everything():
    g = np.zeros(OFFSETS[-1])
    g[0:6] = 1.0
    g[6:8] = [0.3, 0.4]
    d = sgd_displacement(g, global_clipnorm=1.0)
    np.testing.assert_allclose(d, g / np.linalg.norm(g))
    np.testing.assert_allclose(sgd_displacement(g, global_clipnorm=100.0), g)
    np.testing.assert_array_equal(sgd_displacement(np.zeros_like(g), global_clipnorm=1.0), 0.0)


def test_clipvalue():
    g = np.linspace(-2, 2, OFFSETS[-1])
    np.testing.assert_allclose(sgd_displacement(g, clipvalue=0.5), np.clip(g, -0.5, 0.5))


def test_weight_decay_is_decoupled():
    opt = make_optimizer(OptimizerDef(type="adamw", learning_rate=0.1, weight_decay=0.5), OFFSETS, np.float64)
    p = np.full(OFFSETS[-1], 2.0)
    opt.step(p, np.zeros_like(p))  # zero gradient: only the decay moves the weights
    np.testing.assert_allclose(p, 2.0 * (1 - 0.1 * 0.5))


# --- schedules and the learning-rate contract ---------------------------------------------------------------


def test_schedule_is_evaluated_before_the_update():
    lr = {"type": "PiecewiseConstantDecay", "boundaries": [2, 4], "values": [1.0, 0.5, 0.1]}
    opt = make_optimizer(OptimizerDef(type="sgd", learning_rate=lr), OFFSETS, np.float64)
    p = np.zeros(OFFSETS[-1])
    seen = []
    for _ in range(7):
        seen.append(opt.learning_rate_now())
        before = p[0]
        opt.step(p, np.ones_like(p))
        assert before - p[0] == pytest.approx(seen[-1])
    assert seen == [1.0, 1.0, 1.0, 0.5, 0.5, 0.1, 0.1]  # boundaries are inclusive upper bounds


def test_schedule_formulas():
    e = ExponentialDecay(0.1, 10, 0.5)
    assert e(5) == pytest.approx(0.1 * 0.5 ** 0.5)
    assert ExponentialDecay(0.1, 10, 0.5, staircase=True)(19) == pytest.approx(0.05)
    c = CosineDecay(0.1, 10, alpha=0.2)
    assert c(0) == pytest.approx(0.1) and c(10) == pytest.approx(0.02) and c(50) == pytest.approx(0.02)
    assert c(5) == pytest.approx(0.1 * (0.8 * 0.5 + 0.2))
    pc = PiecewiseConstantDecay([3], [1.0, 2.0])
    assert [pc(s) for s in (0, 3, 4)] == [1.0, 1.0, 2.0]


def test_learning_rate_setter():
    opt = make_optimizer(OptimizerDef(type="adam"), OFFSETS)
    assert opt.learning_rate_now() == 0.001
    opt.learning_rate = 0.01
    assert opt.learning_rate_now() == 0.01
    sched = make_optimizer(OptimizerDef(type="adam", learning_rate=SCHEDULES[0]), OFFSETS)
    with pytest.raises(TypeError):
        sched.learning_rate = 0.01


# --- construction, state, errors ------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(KERAS_DEFAULTS))
def test_defaults(kind):
    opt = make_optimizer(OptimizerDef(type=kind), OFFSETS)
    for key, value in KERAS_DEFAULTS[kind].items():
        got = opt.learning_rate_now() if key == "learning_rate" else getattr(opt, key)
        assert got == value, key


@pytest.mark.parametrize("kind", sorted(KERAS_DEFAULTS))
def test_state_round_trip(kind):
    variables, grads = problem(3)
    kwargs = {"learning_rate": SCHEDULES[2]} if kind in ("adam", "nadam") else {"momentum": 0.9} if kind == "sgd" else {}
    a = make_optimizer(OptimizerDef(type=kind, **kwargs), OFFSETS, np.float64)
    p = flat(variables)
    for g in grads[:3]:
        a.step(p, flat(g))
    if not a.schedule:
        a.learning_rate = 0.5 * a.learning_rate  # as ReduceLROnPlateau would; restored with the state
    saved = {k: np.array(v) for k, v in a.state_arrays().items()}
    p_saved = p.copy()
    for g in grads[3:]:
        a.step(p, flat(g))
    b = make_optimizer(OptimizerDef(type=kind, **kwargs), OFFSETS, np.float64)
    b.load_state_arrays(saved)
    assert b.iterations == 3
    assert b.learning_rate_now() == a.learning_rate_now()
    q = p_saved
    for g in grads[3:]:
        b.step(q, flat(g))
    np.testing.assert_array_equal(p, q)
    for arr in saved.values():
        assert arr.shape in ((), (OFFSETS[-1],))


def test_state_slots_follow_keras():
    def slots(kind, **kw):
        return sorted(make_optimizer(OptimizerDef(type=kind, **kw), OFFSETS).state_arrays())
    assert slots("sgd") == ["iterations", "learning_rate"]
    assert slots("sgd", momentum=0.9) == ["iterations", "learning_rate", "momentum"]
    assert slots("adam", amsgrad=True) == ["iterations", "learning_rate", "momentum", "velocity", "velocity_hat"]
    assert slots("rmsprop", learning_rate=SCHEDULES[0]) == ["iterations", "velocity"]  # a schedule is not state
    assert slots("nadam") == ["iterations", "learning_rate", "momentum", "u_product", "velocity"]
    acc = make_optimizer(OptimizerDef(type="adagrad"), OFFSETS).state_arrays()["accumulator"]
    np.testing.assert_array_equal(acc, np.float32(0.1))


def test_step_checks_shapes_and_dtype():
    opt = make_optimizer(OptimizerDef(type="sgd"), OFFSETS, np.float32)
    n = OFFSETS[-1]
    with pytest.raises(ValueError, match="length"):
        opt.step(np.zeros(n + 1, np.float32), np.zeros(n + 1, np.float32))
    with pytest.raises(ValueError, match="float32"):
        opt.step(np.zeros(n), np.zeros(n))


def _engine():
    from specc.engine import Engine
    from specc.spec import load_spec_text

    text = """
specc: 1
seed: 0
model:
  input: [4]
  layers:
    - {type: Dense, units: 5, activation: relu}
    - {type: Dense, units: 3, activation: softmax}
"""
    spec, errors = load_spec_text(text, "opt.yaml")
    assert not errors, [e.text() for e in errors]
    engine = Engine(spec.graph, np.float64)
    engine.initialize(0)
    return engine


def test_variable_offsets_of_an_engine():
    engine = _engine()
    np.testing.assert_array_equal(variable_offsets(engine), [0, 20, 25, 40, 43])


def test_training_a_tiny_model_reduces_the_loss():
    from specc.train.losses import get_loss

    engine = _engine()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 4))
    y = (x[:, 0] > 0).astype(int) + (x[:, 1] > 0.5).astype(int)
    loss = get_loss("sparse_categorical_crossentropy")
    opt = make_optimizer(OptimizerDef(type="adam", learning_rate=0.05, clipnorm=1.0), variable_offsets(engine),
                         engine.dtype)
    values = []
    for _ in range(60):
        engine.forward([x], training=True)
        value, d_logits = loss.fused_softmax(y, engine.pre_activation(0))
        values.append(value)
        engine.backward([d_logits], pre_activation=[True])
        opt.step(engine.params[:engine.n_trainable], engine.grads)
    assert values[-1] < 0.5 * values[0]


# --- Keras 3 ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def keras_torch():
    os.environ["KERAS_BACKEND"] = "torch"
    keras = pytest.importorskip("keras")
    torch = pytest.importorskip("torch")
    if keras.backend.backend() != "torch":
        pytest.skip("Keras was already imported with another backend")
    return keras, torch


def keras_optimizer(keras, kind, kwargs):
    cls = {"sgd": keras.optimizers.SGD, "adam": keras.optimizers.Adam, "adamw": keras.optimizers.AdamW,
           "rmsprop": keras.optimizers.RMSprop, "adagrad": keras.optimizers.Adagrad,
           "adadelta": keras.optimizers.Adadelta, "nadam": keras.optimizers.Nadam}[kind]
    kw = dict(kwargs)
    lr = kw.get("learning_rate")
    if isinstance(lr, dict):
        s = dict(lr)
        kw["learning_rate"] = getattr(keras.optimizers.schedules, s.pop("type"))(**s)
    for key in ("momentum", "learning_rate", "weight_decay", "epsilon", "rho", "beta_1", "beta_2"):
        if isinstance(kw.get(key), int):
            kw[key] = float(kw[key])
    return cls(**kw)


def keras_run(keras_torch, kind, kwargs, variables, grad_steps, dtype="float64"):
    keras, _ = keras_torch
    kvars = [keras.Variable(v, dtype=dtype) for v in variables]
    opt = keras_optimizer(keras, kind, kwargs)
    history = []
    for grads in grad_steps:
        opt.apply([keras.ops.convert_to_tensor(g, dtype=dtype) for g in grads], kvars)
        history.append(flat([keras.ops.convert_to_numpy(v) for v in kvars]))
    return history


@pytest.mark.parametrize("kind", sorted(KERAS_DEFAULTS))
def test_defaults_match_keras(keras_torch, kind):
    config = keras_optimizer(keras_torch[0], kind, {}).get_config()
    for key, value in KERAS_DEFAULTS[kind].items():
        assert config[key] == pytest.approx(value), key


KERAS_CASES = ([(t, dict(kw, **clip)) for t, kw in OWN for clip in (CLIPS[0], CLIPS[1])]
               + [(t, dict(kw, **clip)) for t, kw in OWN[1::3] for clip in CLIPS[2:]]
               + [(t, {"learning_rate": s}) for t in KERAS_DEFAULTS for s in SCHEDULES[::len(SCHEDULES) - 1]]
               + [("sgd", {"learning_rate": s}) for s in SCHEDULES[1:3]])


@pytest.mark.parametrize("case", KERAS_CASES, ids=case_id)
def test_matches_keras(keras_torch, case):
    kind, kwargs = case
    variables, grads = problem(4)
    start = flat(variables)
    ours = specc_run(kind, kwargs, variables, grads)
    theirs = keras_run(keras_torch, kind, kwargs, variables, grads)
    # Keras keeps the learning rate, schedules and the decay factor 1 - wd * lr in float32 even for float64
    # variables, so displacements agree to ~1e-6 relative, ~1e-8 absolute on weights of order 1.
    for t, (a, b) in enumerate(zip(ours, theirs, strict=True)):
        np.testing.assert_allclose(a - start, b - start, rtol=2e-6, atol=1e-7, err_msg=f"step {t + 1}")


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_rmsprop_centered_matches_keras(keras_torch, momentum):
    variables, grads = problem(5)
    kwargs = dict(learning_rate=0.01, momentum=momentum, clipnorm=0.5)
    ours = specc_run("rmsprop", kwargs, variables, grads, centered=True)
    theirs = keras_run(keras_torch, "rmsprop", dict(kwargs, centered=True), variables, grads)
    start = flat(variables)
    np.testing.assert_allclose(np.array(ours) - start, np.array(theirs) - start, rtol=2e-6, atol=1e-9)


@pytest.mark.parametrize("kind", sorted(KERAS_DEFAULTS))
def test_matches_keras_float32(keras_torch, kind):
    variables, grads = problem(6)
    kwargs = {"learning_rate": 0.05, "global_clipnorm": 2.0}
    start = flat(variables).astype(np.float32)
    ours = specc_run(kind, kwargs, variables, grads, np.float32)
    theirs = keras_run(keras_torch, kind, kwargs, variables, grads, "float32")
    np.testing.assert_allclose(ours[-1] - start, theirs[-1] - start, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("schedule", SCHEDULES, ids=lambda s: s["type"] + ("-staircase" if s.get("staircase") else ""))
def test_schedules_match_keras(keras_torch, schedule):
    keras, _ = keras_torch
    from specc.spec.schema import Schedule
    from specc.train.optimizers import make_schedule

    s = dict(schedule)
    theirs = getattr(keras.optimizers.schedules, s.pop("type"))(**s)
    ours = make_schedule(Schedule(**schedule))
    for step in range(12):
        assert ours(step) == pytest.approx(float(theirs(step)), rel=1e-6), step


# --- torch.optim ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def torch():
    return pytest.importorskip("torch")


def torch_run(torch, cls, kwargs, variables, grad_steps):
    params = [torch.tensor(v, dtype=torch.float64, requires_grad=True) for v in variables]
    opt = cls(params, **kwargs)
    history = []
    for grads in grad_steps:
        for p, g in zip(params, grads, strict=True):
            p.grad = torch.tensor(g, dtype=torch.float64)
        opt.step()
        history.append(flat([p.detach().numpy() for p in params]))
    return history


@pytest.mark.parametrize("momentum,nesterov", [(0.0, False), (0.9, False), (0.9, True)])
def test_sgd_matches_torch(torch, momentum, nesterov):
    variables, grads = problem(7)
    ours = specc_run("sgd", dict(learning_rate=0.1, momentum=momentum, nesterov=nesterov), variables, grads)
    theirs = torch_run(torch, torch.optim.SGD, dict(lr=0.1, momentum=momentum, nesterov=nesterov), variables, grads)
    np.testing.assert_allclose(ours, theirs, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("kind", ["adam", "adamw"])
@pytest.mark.parametrize("amsgrad", [False, True])
def test_adam_matches_torch(torch, kind, amsgrad):
    """torch adds epsilon to sqrt(v_hat) where Keras adds it to sqrt(v) (epsilon-hat); with a tiny epsilon
    the two agree."""
    variables, grads = problem(8)
    kwargs = dict(learning_rate=0.05, beta_1=0.8, beta_2=0.99, epsilon=1e-15, amsgrad=amsgrad)
    tkw = dict(lr=0.05, betas=(0.8, 0.99), eps=1e-15, amsgrad=amsgrad)
    if kind == "adamw":
        kwargs["weight_decay"] = tkw["weight_decay"] = 0.1
    ours = specc_run(kind, kwargs, variables, grads)
    theirs = torch_run(torch, torch.optim.Adam if kind == "adam" else torch.optim.AdamW, tkw, variables, grads)
    np.testing.assert_allclose(ours, theirs, rtol=1e-10, atol=1e-11)


@pytest.mark.parametrize("kwargs", [{"type": "adam"}, {"type": "adamw", "weight_decay": 0.01},
                                    {"type": "sgd"}, {"type": "sgd", "momentum": 0.9, "nesterov": True}],
                         ids=["adam", "adamw", "sgd", "sgd-nesterov"])
def test_large_variables_update_the_same_on_two_threads(kwargs):
    # variables of >= PARALLEL_MIN_SIZE elements are updated in slices on several threads: elementwise,
    # so the result must be the same bits as on one thread, clipping included
    from specc.kernels import configure_threads, optim

    sizes = [optim.PARALLEL_MIN_SIZE + 37, 5, 3 * optim.PARALLEL_MIN_SIZE]
    offsets = np.cumsum([0] + sizes).astype(np.int64)
    rng = np.random.default_rng(3)
    params0 = rng.standard_normal(offsets[-1]).astype(np.float32)
    grads = [rng.standard_normal(offsets[-1]).astype(np.float32) for _ in range(3)]
    results = []
    before = configure_threads(None)
    try:
        for threads in (1, 2):
            configure_threads(threads)
            opt = make_optimizer(OptimizerDef(learning_rate=0.01, clipnorm=50.0, **kwargs), offsets, np.float32)
            params = params0.copy()
            for g in grads:
                opt.step(params, g.copy())
            results.append(params)
    finally:
        configure_threads(before)
    assert not np.array_equal(results[0], params0)
    np.testing.assert_array_equal(results[0], results[1])
