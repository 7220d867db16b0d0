"""Merge layers: elementwise Add/Subtract/Multiply/Average/Maximum/Minimum (with Keras's broadcasting of
size-1 axes) and Concatenate along an axis.

The runtime is NumPy (broadcasting elementwise ops, concatenate/split); there is no arithmetic worth a
kernel. As in Keras's `Merge.call`, an input of lower rank gets size-1 axes inserted after the batch axis
until the ranks match, then everything broadcasts; backward sums each input's gradient over the axes it
was broadcast along. Maximum/Minimum send the whole gradient to the winning input; on ties the first
input wins (as numpy's argmax picks the first maximum).
"""

from __future__ import annotations

from typing import ClassVar, Literal

from ..spec.types import StrictInt
from ..workspace import empty
from .base import LayerSpec, ShapeError, fmt_shape, register


class _Elementwise(LayerSpec):
    min_inputs: ClassVar[int] = 2
    max_inputs: ClassVar[int | None] = None

    def compute_output_shape(self, shapes):
        out = shapes[0]
        for s in shapes[1:]:
            out = self._broadcast(out, s, shapes)
        return out

    def _broadcast(self, a, b, shapes):
        if len(a) < len(b):
            a, b = b, a
        head, tail = a[: len(a) - len(b)], a[len(a) - len(b):]
        out = []
        for i, j in zip(tail, b):
            if i is None or j is None:
                out.append(None)
            elif i == 1 or j == 1 or i == j:
                out.append(max(i, j))
            else:
                listing = " and ".join(fmt_shape(s) for s in shapes)
                raise ShapeError(f"{self.type} needs inputs of the same shape (or size 1 to broadcast), "
                                 f"got {listing}")
        return tuple(head) + tuple(out)

    # --- runtime -------------------------------------------------------------------------------------

    def forward(self, w, xs, training, rng):
        import numpy as np

        rank = max(x.ndim for x in xs)
        aligned = [x.reshape((x.shape[0],) + (1,) * (rank - x.ndim) + x.shape[1:]) for x in xs]
        y, saved = self._merge(np, aligned)
        return y, (saved, [x.shape for x in xs], [a.shape for a in aligned])

    def backward(self, w, g, saved, dy, need_dx=True):
        import numpy as np

        saved, shapes, aligned = saved
        parts = self._grads(np, saved, dy, len(shapes))
        return [_unbroadcast(np, p, a, dy).reshape(s) for p, a, s in zip(parts, aligned, shapes, strict=True)]

    def _merge(self, np, xs):
        """(output, saved) from the rank-aligned inputs."""
        raise NotImplementedError

    def _grads(self, np, saved, dy, n):
        """Gradient of each input, broadcastable to the output's shape (reduced by the caller)."""
        raise NotImplementedError


def _unbroadcast(np, grad, shape, dy):
    """Sum `grad` (broadcastable to dy's shape) down to `shape`; always a fresh contiguous array."""
    grad = np.broadcast_to(grad, dy.shape)
    axes = tuple(d for d, (n, m) in enumerate(zip(shape, grad.shape, strict=True)) if n == 1 and m != 1)
    if axes:
        return np.ascontiguousarray(grad.sum(axis=axes, keepdims=True))
    return np.array(grad, copy=True, order="C")


def _pick(np, xs, greater):
    """Elementwise max (greater=True) or min of the inputs, and the index of the first input that wins."""
    best = np.array(np.broadcast_to(xs[0], np.broadcast_shapes(*(x.shape for x in xs))))
    winner = np.zeros(best.shape, np.int32)
    for i, x in enumerate(xs[1:], 1):
        take = x > best if greater else x < best  # strict: ties stay with the earlier input
        best = np.where(take, x, best)
        winner[take] = i
    return best, winner


@register
class Add(_Elementwise):
    type: Literal["Add"] = "Add"

    def _merge(self, np, xs):
        shape = xs[0].shape
        if all(x.shape == shape and x.dtype == xs[0].dtype for x in xs):  # no broadcasting: into the workspace
            y = empty("out", shape, xs[0].dtype)
            np.add(xs[0], xs[1], out=y)
            for x in xs[2:]:
                np.add(y, x, out=y)
            return y, None
        y = xs[0]
        for x in xs[1:]:
            y = y + x
        return np.ascontiguousarray(y), None

    def _grads(self, np, saved, dy, n):
        return [dy] * n

    def backward(self, w, g, saved, dy, need_dx=True):
        _, shapes, _ = saved
        if all(s == dy.shape for s in shapes):  # no broadcasting: every input's gradient is dy itself
            return [dy] * len(shapes)
        return super().backward(w, g, saved, dy, need_dx)


@register
class Subtract(_Elementwise):
    max_inputs: ClassVar[int | None] = 2
    type: Literal["Subtract"] = "Subtract"

    def _merge(self, np, xs):
        return np.ascontiguousarray(xs[0] - xs[1]), None

    def _grads(self, np, saved, dy, n):
        return [dy, -dy]


@register
class Multiply(_Elementwise):
    type: Literal["Multiply"] = "Multiply"

    def _merge(self, np, xs):
        y = xs[0]
        for x in xs[1:]:
            y = y * x
        return np.ascontiguousarray(y), xs

    def _grads(self, np, xs, dy, n):
        parts = []
        for i in range(n):
            p = dy
            for j, x in enumerate(xs):
                if j != i:
                    p = p * x  # the product of the others, without dividing (safe with zeros)
            parts.append(p)
        return parts


@register
class Average(_Elementwise):
    type: Literal["Average"] = "Average"

    def _merge(self, np, xs):
        y = xs[0]
        for x in xs[1:]:
            y = y + x
        return np.ascontiguousarray(y / y.dtype.type(len(xs))), None

    def _grads(self, np, saved, dy, n):
        return [dy / dy.dtype.type(n)] * n


@register
class Maximum(_Elementwise):
    type: Literal["Maximum"] = "Maximum"

    def _merge(self, np, xs):
        return _pick(np, xs, greater=True)

    def _grads(self, np, winner, dy, n):
        return [np.where(winner == i, dy, 0) for i in range(n)]


@register
class Minimum(_Elementwise):
    type: Literal["Minimum"] = "Minimum"

    def _merge(self, np, xs):
        return _pick(np, xs, greater=False)

    def _grads(self, np, winner, dy, n):
        return [np.where(winner == i, dy, 0) for i in range(n)]


@register
class Concatenate(LayerSpec):
    min_inputs: ClassVar[int] = 2
    max_inputs: ClassVar[int | None] = None
    type: Literal["Concatenate"] = "Concatenate"
    axis: StrictInt = -1

    def compute_output_shape(self, shapes):
        rank = len(shapes[0])
        listing = " and ".join(fmt_shape(s) for s in shapes)
        if any(len(s) != rank for s in shapes):
            raise ShapeError(f"Concatenate needs inputs of the same rank, got {listing}")
        a = self.axis if self.axis >= 0 else rank + 1 + self.axis  # Keras counts the batch axis
        if not 1 <= a <= rank:
            raise ShapeError(f"axis {self.axis} is out of range for inputs {listing}")
        a -= 1
        for d in range(rank):
            sizes = {s[d] for s in shapes if s[d] is not None}
            if d != a and len(sizes) > 1:
                raise ShapeError(f"Concatenate along axis {self.axis} needs the other axes to match, got {listing}")
        sizes = [s[a] for s in shapes]
        total = None if None in sizes else sum(sizes)
        return tuple(total if d == a else next((s[d] for s in shapes if s[d] is not None), None) for d in range(rank))

    def forward(self, w, xs, training, rng):
        import numpy as np

        a = self.axis % xs[0].ndim  # Keras counts the batch axis
        return np.concatenate(xs, axis=a), (a, [x.shape[a] for x in xs])

    def backward(self, w, g, saved, dy, need_dx=True):
        import numpy as np

        a, sizes = saved
        return [np.ascontiguousarray(p) for p in np.split(dy, np.cumsum(sizes)[:-1], axis=a)]
