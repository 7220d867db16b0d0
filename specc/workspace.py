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
import math
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
        token = self.enter()
        try:
            yield self
        finally:
            self.leave(token)

    def enter(self) -> contextvars.Token:
        """Makes this the active workspace until leave(token): `active` as two plain calls, for the engine's
        passes (Engine._enter says why)."""
        return _active.set(self)

    @staticmethod
    def leave(token: contextvars.Token) -> None:
        _active.reset(token)

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self._arrays.values())


def empty(role: str, shape: tuple, dtype: Any) -> np.ndarray:
    """An uninitialised array of `shape`: the active workspace's array for (role, shape, dtype) in the
    current layer call, or a new one when no workspace is active.

    Layers call this at every pass, where each Python or NumPy call costs (Engine._enter says why): the
    key takes `shape` and `dtype` as given (np.float32 and np.dtype("float32") are two keys, each with
    the right array; a caller passes one of them), and only a new array normalises them, since
    normalising (np.dtype(dtype).str) at every call would cost more than the lookup itself."""
    workspace = _active.get()
    if workspace is None:
        return aligned_empty(shape, dtype)
    try:
        key = (workspace.owner, role, shape, dtype)
        array = workspace._arrays.get(key)
    except TypeError:  # an unhashable shape (a list)
        shape = tuple(shape)
        key = (workspace.owner, role, shape, dtype)
        array = workspace._arrays.get(key)
    if array is None:
        array = workspace._arrays[key] = aligned_empty(shape, dtype)
    return array


ALIGN = 64  # bytes: one cache line, one 512-bit vector


def aligned_empty(shape: Any, dtype: Any) -> np.ndarray:
    """np.empty whose data starts on a 64-byte boundary. NumPy's large arrays start 16 bytes past one
    (malloc's header), so every 512-bit load of sgemm's b and store of its out would straddle two cache
    lines."""
    import numpy as np

    dtype = np.dtype(dtype)
    try:
        count = math.prod(shape)  # not np.prod, which costs several times the allocation itself
    except TypeError:  # one integer
        shape = (shape,)
        count = math.prod(shape)
    if shape and min(shape) < 0:
        raise ValueError(f"negative dimensions are not allowed: {tuple(shape)}")
    nbytes = int(count) * dtype.itemsize
    raw = np.empty(nbytes + ALIGN, np.uint8)
    start = -raw.ctypes.data % ALIGN
    return raw[start: start + nbytes].view(dtype).reshape(shape)


def aligned_zeros(shape: Any, dtype: Any) -> np.ndarray:
    array = aligned_empty(shape, dtype)
    array.fill(0)
    return array


def shared_scratch(role: str, shape: tuple, dtype: Any) -> np.ndarray:
    """Like `empty`, but one buffer per (role, dtype) for every layer call of the active workspace, grown
    to the largest shape asked for: for scratch a layer uses only within its own call (layers run one at
    a time), so a model keeps one set, not one per layer."""
    workspace = _active.get()
    if workspace is None:
        return aligned_empty(shape, dtype)
    count = math.prod(shape)
    key = (None, role, dtype)
    flat = workspace._arrays.get(key)
    if flat is None or flat.size < count:
        flat = workspace._arrays[key] = aligned_empty(max(count, 1), dtype)
    return flat[:count].reshape(shape)
