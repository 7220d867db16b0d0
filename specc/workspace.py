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

Backward's arrays (input gradients, their sums, a layer's backward scratch) live much shorter: an input
gradient dies once the layer that produced that input has run its backward. While the engine's backward
runs, `empty` takes them from the workspace's BufferPool instead, whose buffers go back to the pool as soon
as no pending gradient reaches them (BufferPool.keep_only), so the layers share a few buffers, as
registers are shared, instead of each keeping its own.
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
        self.pool = BufferPool()
        self.pooling = False  # whether `empty` takes from `pool`: on during the engine's backward

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
        return sum(a.nbytes for a in self._arrays.values()) + self.pool.nbytes


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
    if workspace.pooling:
        return workspace.pool.take(shape, dtype)
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

    return _aligned(shape, dtype, np.empty)


def aligned_zeros(shape: Any, dtype: Any) -> np.ndarray:
    """aligned_empty's array, zeros: from np.zeros, whose large allocations come from calloc, so the OS
    hands out zeroed pages as they are first written instead of a pass of stores over all of them up front
    (the engine's parameters and gradients, at every start)."""
    import numpy as np

    return _aligned(shape, dtype, np.zeros)


def _aligned(shape: Any, dtype: Any, allocate) -> np.ndarray:
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
    raw = allocate(nbytes + ALIGN, np.uint8)
    start = -raw.ctypes.data % ALIGN
    return raw[start: start + nbytes].view(dtype).reshape(shape)


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


class BufferPool:
    """Buffers shared by the arrays of one pass whose lifetimes the caller knows, like registers: `take`
    hands out a buffer no live array uses, `keep_only(live)` gives back every buffer that none of `live`
    (arrays or views of them) reaches, `release_all` gives back all of them (a new pass).

    A buffer serves requests of its exact byte size, whatever the shape and dtype: a network repeats a
    few gradient sizes (ResNet-50's stages), and a buffer taken for a smaller size would leave the larger
    requests to make new ones. The same sequence of requests and releases (every training step of a batch
    size) takes the same buffers, so after the first pass of each batch size nothing is allocated; and the
    typed view of a buffer is made once per shape and dtype, as `empty` makes an array once per key (`take`
    runs once or twice per layer at every step).

    poison=True fills a buffer with NaN bytes when it is given back (the tests: an array read after its
    buffer was released then reads NaN instead of a plausible stale gradient).
    """

    def __init__(self, poison: bool = False) -> None:
        self._sizes: dict[tuple, int] = {}  # (shape, dtype) as asked -> bytes
        # byte size -> buffers not in use, each (the id of its memory's owner, the 64-byte aligned uint8 array)
        self._free: dict[int, list[tuple[int, np.ndarray]]] = {}
        self._used: dict[int, tuple[int, np.ndarray]] = {}  # the same, handed out, by the owner's id
        self._views: dict[tuple, np.ndarray] = {}  # (owner id, shape, dtype) -> the buffer as that array
        self.nbytes = 0  # every buffer made, in use or not
        self.poison = poison

    def take(self, shape: Any, dtype: Any) -> np.ndarray:
        try:
            nbytes = self._sizes[shape, dtype]
        except KeyError:
            nbytes = self._sizes[shape, dtype] = _nbytes(shape, dtype)
        except TypeError:  # an unhashable shape (a list)
            return self.take(tuple(shape), dtype)
        free = self._free.get(nbytes)
        if free:
            entry = free.pop()
        else:
            buffer = aligned_empty(nbytes, "uint8")
            entry = (id(_owner(buffer)), buffer)
            self.nbytes += nbytes
        key = entry[0]
        self._used[key] = entry
        view = self._views.get((key, shape, dtype))
        if view is None:
            view = self._views[key, shape, dtype] = entry[1].view(dtype).reshape(shape)
        return view

    def keep_only(self, live: Any) -> None:
        """Gives back every buffer in use that no array of `live` (an iterable) is or views."""
        used = self._used
        if not used:
            return
        reached = set()
        for a in live:  # NumPy makes a view's base its memory's owner: _owner's walk is the rare case
            base = a.base
            if base is not None:
                a = base if getattr(base, "base", None) is None else _owner(base)
            reached.add(id(a))
        for key in used.keys() - reached:  # (a set operation in C: this runs before every layer's backward)
            self._give_back(used.pop(key))

    def release_all(self) -> None:
        for entry in self._used.values():
            self._give_back(entry)
        self._used.clear()

    @property
    def in_use(self) -> int:
        return len(self._used)

    def _give_back(self, entry: tuple[int, np.ndarray]) -> None:
        buffer = entry[1]
        if self.poison:
            buffer.fill(0xFF)  # every float32/float64 made of these bytes is a NaN
        self._free.setdefault(buffer.nbytes, []).append(entry)


def _nbytes(shape: Any, dtype: Any) -> int:
    import numpy as np

    if not isinstance(shape, tuple):  # one integer
        shape = (shape,)
    if shape and min(shape) < 0:
        raise ValueError(f"negative dimensions are not allowed: {shape}")
    return int(math.prod(shape)) * np.dtype(dtype).itemsize


def _owner(array: Any) -> Any:
    """The object that owns an array's memory: the end of its chain of bases (NumPy shortens the chain
    of a view of a view, but not through every kind of view)."""
    base = array.base
    while base is not None:
        array = base
        base = getattr(array, "base", None)
    return array
