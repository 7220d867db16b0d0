"""Initializer names as Keras 3 spells them (the runtime implements each one)."""

from __future__ import annotations

from ..spec.types import choice

INITIALIZERS = (
    "glorot_uniform", "glorot_normal", "he_uniform", "he_normal", "lecun_uniform", "lecun_normal",
    "zeros", "ones", "orthogonal", "random_uniform", "random_normal", "truncated_normal",
)
# Keras accepts these short forms too (Embedding's default is "uniform").
ALIASES = {"uniform": "random_uniform", "normal": "random_normal", "zero": "zeros", "one": "ones"}

Initializer = choice(INITIALIZERS, "initializer", aliases=ALIASES)


# Keras's truncated normal draws within 2 standard deviations; this constant rescales so the truncated
# distribution has the intended variance (VarianceScaling's "truncated_normal").
_TRUNC_STD = 0.87962566103423978


def compute_fans(shape: tuple[int, ...]) -> tuple[int, int]:
    """Keras's fans: (in, out) for a matrix; conv kernels (..., in, out) multiply by the window size."""
    if len(shape) == 0:
        return 1, 1
    if len(shape) == 1:
        return shape[0], shape[0]
    if len(shape) == 2:
        return shape[0], shape[1]
    receptive = 1
    for d in shape[:-2]:
        receptive *= d
    return shape[-2] * receptive, shape[-1] * receptive


def _truncated(rng, std: float, shape):
    import numpy as np

    out = rng.standard_normal(shape)
    bad = np.abs(out) > 2
    while bad.any():  # redraw outside [-2, 2], as a truncated normal does
        out[bad] = rng.standard_normal(int(bad.sum()))
        bad = np.abs(out) > 2
    return out * std


def initialize(name: str, shape: tuple[int, ...], rng):
    """A float64 array of `shape` drawn as Keras 3's initializer `name` (with its default arguments)."""
    import numpy as np

    name = ALIASES.get(name, name)
    fan_in, fan_out = compute_fans(shape)
    if name == "zeros":
        return np.zeros(shape)
    if name == "ones":
        return np.ones(shape)
    if name == "random_uniform":
        return rng.uniform(-0.05, 0.05, shape)
    if name == "random_normal":
        return rng.standard_normal(shape) * 0.05
    if name == "truncated_normal":
        return _truncated(rng, 0.05, shape)
    if name == "orthogonal":
        rows = int(np.prod(shape[:-1]))
        cols = shape[-1]
        a = rng.standard_normal((max(rows, cols), min(rows, cols)))
        q, r = np.linalg.qr(a)
        q *= np.sign(np.diag(r))
        if rows < cols:
            q = q.T
        return q.reshape(shape)
    scale, fan = {"glorot": (1.0, (fan_in + fan_out) / 2), "he": (2.0, fan_in), "lecun": (1.0, fan_in)}[
        name.split("_")[0]]
    variance = scale / max(1.0, fan)
    if name.endswith("_uniform"):
        limit = np.sqrt(3.0 * variance)
        return rng.uniform(-limit, limit, shape)
    return _truncated(rng, np.sqrt(variance) / _TRUNC_STD, shape)
