"""Gradient checking against central finite differences, in float64, through the real engine.

A case is one layer in a tiny model: `loss = sum(R * output)` with a fixed random R, so d(loss)/d(output)
is R, and the engine's backward gives d(loss)/d(weights) and d(loss)/d(inputs). Each is compared to
(loss(p + h) - loss(p - h)) / 2h, element by element on a random subset.
"""

from __future__ import annotations

import numpy as np

from specc.engine import Engine
from specc.spec import load_spec_text

from .modelspec import model_yaml

H = 1e-6
RTOL, ATOL = 1e-5, 1e-7


def build(layer: dict | list[dict], input_shapes: list[list[int]], fuse: bool = True) -> Engine:
    spec, errors = load_spec_text(model_yaml(layer, input_shapes), "gradcheck.yaml")
    assert not errors, [e.text() for e in errors]
    engine = Engine(spec.graph, np.float64, fuse=fuse)
    engine.initialize(0)
    return engine


def make_inputs(engine: Engine, batch: int, rng, int_high: int | None = None) -> list[np.ndarray]:
    xs = []
    for node in engine.graph.inputs:
        shape = (batch, *node.output_shape)
        if int_high is not None:
            xs.append(rng.integers(0, int_high, shape).astype(np.float64))
        else:
            xs.append(rng.standard_normal(shape))
    return xs


def check(layer: dict | list[dict], input_shapes: list[list[int]], batch: int = 3, training: bool = False,
          integer_inputs: int | None = None, samples: int = 40, perturb_weights: bool = True) -> None:
    rng = np.random.default_rng(1)
    engine = build(layer, input_shapes)
    if perturb_weights:  # zeros/ones initializers (biases, BN) would hide mistakes
        engine.params += rng.standard_normal(engine.params.shape) * 0.1
    xs = make_inputs(engine, batch, rng, integer_inputs)

    def loss(seed_for_dropout: int = 7) -> float:
        out = engine.forward(xs, training=training, rng=np.random.default_rng(seed_for_dropout))
        return float(np.sum(out[0] * R))

    out = engine.forward(xs, training=training, rng=np.random.default_rng(7))
    R = rng.standard_normal(out[0].shape)
    engine.forward(xs, training=training, rng=np.random.default_rng(7))
    engine.backward([R])
    analytic_params = engine.grads.copy()
    analytic_inputs = [engine._input_grads[n] for n in engine.input_names]

    def numeric(array: np.ndarray, index) -> float:
        return central_difference(loss, array, index)

    failures = []
    trainable = engine.params[: engine.n_trainable]
    for idx in _pick(trainable.size, samples, rng):
        num = numeric(trainable, idx)
        if not np.isclose(analytic_params[idx], num, rtol=RTOL, atol=ATOL):
            failures.append(f"param[{idx}]: analytic {analytic_params[idx]:.8g} numeric {num:.8g}")
    if integer_inputs is None:
        for k, x in enumerate(xs):
            flat = x.reshape(-1)
            got = analytic_inputs[k]
            assert got is not None, "no gradient reached the input"
            got = got.reshape(-1)
            for idx in _pick(flat.size, samples, rng):
                num = numeric(flat, idx)
                if not np.isclose(got[idx], num, rtol=RTOL, atol=ATOL):
                    failures.append(f"input{k}[{idx}]: analytic {got[idx]:.8g} numeric {num:.8g}")
    assert not failures, "\n".join(failures[:10])


def central_difference(loss, array: np.ndarray, index, h: float = H) -> float:
    """(loss() with array[index] + h - loss() with array[index] - h) / 2h; array[index] is restored."""
    old = array[index]
    array[index] = old + h
    up = loss()
    array[index] = old - h
    down = loss()
    array[index] = old
    return (up - down) / (2 * h)


def _pick(n: int, k: int, rng) -> np.ndarray:
    return np.arange(n) if n <= k else rng.choice(n, k, replace=False)
