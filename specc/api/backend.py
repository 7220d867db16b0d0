"""Session state of the Python API, as Keras keeps it: the auto-name counters and the random generator.

Keras numbers layers per Python session (`dense`, `dense_1`, ...; models `sequential`, `functional`);
`clear_session()` starts the numbering again. Weight initialisation, shuffling and dropout draw from one
generator that `set_random_seed(seed)` makes reproducible (Keras's `keras.utils.set_random_seed`).
"""

from __future__ import annotations

import weakref

import numpy as np

_counters: dict[str, int] = {}
_rng = np.random.default_rng()


def auto_name(prefix: str) -> str:
    """`prefix` the first time, then `prefix_1`, `prefix_2`, ... (Keras's backend.get_uid)."""
    k = _counters.get(prefix, 0)
    _counters[prefix] = k + 1
    return prefix if k == 0 else f"{prefix}_{k}"


def clear_session() -> None:
    """Reset the auto-name counters, as keras.backend.clear_session() does."""
    _counters.clear()


def set_random_seed(seed: int) -> None:
    """Seed weight initialisation, shuffling and dropout for the Python API."""
    global _rng
    _rng = np.random.default_rng(seed)


def rng() -> np.random.Generator:
    return _rng


def draw_seed() -> int:
    """A seed for a component that keeps its own generator (the training loop)."""
    return int(_rng.integers(0, 2**31 - 1))


# Models compiled in this session (weakly held): a change of `trainable` on one of their layers after
# compile() warns that the model must be recompiled, as Keras does.
compiled_models: weakref.WeakSet = weakref.WeakSet()


# Bumped by every change that can give a model another engine (a Sequential's add/pop/build, a layer's or a
# model's `trainable`, compile): a model keeps its structure signature and its inference engine for the
# version it last saw instead of working them out again at every predict() or call.
_structure_version = 0


def structure_changed() -> None:
    global _structure_version
    _structure_version += 1


def structure_version() -> int:
    return _structure_version
