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
