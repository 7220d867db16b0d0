"""Merge layers: elementwise Add/Subtract/Multiply/Average/Maximum/Minimum (with Keras's broadcasting of
size-1 axes) and Concatenate along an axis."""

from __future__ import annotations

from typing import ClassVar, Literal

from ..spec.types import StrictInt
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


@register
class Add(_Elementwise):
    type: Literal["Add"] = "Add"


@register
class Subtract(_Elementwise):
    max_inputs: ClassVar[int | None] = 2
    type: Literal["Subtract"] = "Subtract"


@register
class Multiply(_Elementwise):
    type: Literal["Multiply"] = "Multiply"


@register
class Average(_Elementwise):
    type: Literal["Average"] = "Average"


@register
class Maximum(_Elementwise):
    type: Literal["Maximum"] = "Maximum"


@register
class Minimum(_Elementwise):
    type: Literal["Minimum"] = "Minimum"


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
