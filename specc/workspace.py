"""Arrays reused from one training step to the next, so a steady-state step allocates nothing.

A layer asks for its output and scratch arrays with `empty(role, shape, dtype)` instead of `np.empty`.
Outside a workspace that is `np.empty`. While a Workspace is active (the engine activates its own around
a training forward or backward and names the layer call it is running in `owner`), the array is made
once per (owner, role, shape, dtype) and handed out again at every later step: the key includes the
shape, so each batch size (the last, partial batch too) gets its own set.

Reuse is safe because an array is only asked for again by the same layer call in the next step, after
everything of the previous step has been consumed; callers that keep a step's outputs (predict) copy them
or run outside a workspace. The owner is the engine step's name, not the layer object: a layer shared by
two calls in a Functional model needs a separate set per call.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
# NumPy is imported where an array is made: layer modules import this one, and `specc summary` and
# `specc validate` load layer modules without NumPy.

_active: contextvars.ContextVar[Workspace | None] = contextvars.ContextVar("specc_workspace", default=None)


class Workspace:
    def __init__(self) -> None:
        self._arrays: dict[tuple, np.ndarray] = {}
        self.owner = ""  # the layer call now running; set by the engine

    @contextlib.contextmanager
    def active(self) -> Iterator[Workspace]:
        token = _active.set(self)
        try:
            yield self
        finally:
            _active.reset(token)

    def get(self, role: str, shape: tuple, dtype: Any) -> np.ndarray:
        import numpy as np

        key = (self.owner, role, shape, np.dtype(dtype).str)
        array = self._arrays.get(key)
        if array is None:
            array = self._arrays[key] = np.empty(shape, dtype)
        return array

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self._arrays.values())


def empty(role: str, shape: tuple, dtype: Any) -> np.ndarray:
    """An uninitialised array of `shape`: the active workspace's array for (role, shape, dtype) in the
    current layer call, or a new one when no workspace is active."""
    import numpy as np

    workspace = _active.get()
    if workspace is None:
        return np.empty(shape, dtype)
    return workspace.get(role, (shape,) if isinstance(shape, (int, np.integer)) else tuple(shape), dtype)
