"""Wrappers around another layer: Bidirectional (a recurrent layer run forwards and backwards, merged) and
TimeDistributed (one layer applied to every step of the time axis).

The wrapped layer is a full layer entry under `layer` (and `backward_layer`), validated like any other,
e.g. `{type: Bidirectional, layer: {type: LSTM, units: 32, return_sequences: true}}`. The wrapper's weights
are the wrapped layers' weights, in Keras's order: Bidirectional's forward layer's, then its backward
layer's, named forward_<layer>/kernel, ..., backward_<layer>/kernel, ...; TimeDistributed's are the inner
layer's own.
"""

from __future__ import annotations

import contextlib
from typing import ClassVar, Literal

from pydantic import SerializeAsAny, ValidationError, field_serializer, field_validator, model_validator

from ..spec.types import choice
from .base import REGISTRY, LayerSpec, ShapeError, WeightSpec, fmt_shape, register, snake_case

RECURRENT = ("SimpleRNN", "LSTM", "GRU")
MergeMode = choice(("concat", "sum", "mul", "ave"), "merge_mode")


@contextlib.contextmanager
def _part(suffix: str):
    """Gives a wrapped layer's calls workspace arrays of their own (workspace.py keys arrays by the layer
    call that asks): two wrapped layers in one step would otherwise share their 'out' arrays."""
    from .. import workspace

    active = workspace._active.get()
    if active is None:
        yield
        return
    owner = active.owner
    active.owner = f"{owner}/{suffix}"
    try:
        yield
    finally:
        active.owner = owner


def _inner_name(layer: LayerSpec) -> str:
    return layer.name or snake_case(layer.type)


class _Wrapper(LayerSpec):
    """A layer around other layers (`wrapped_layer_keys`); no nested Sequential blocks or wrappers inside."""

    # Keys whose values are layer entries, validated like layers of the model (spec/validate.py).
    wrapped_layer_keys: ClassVar[tuple[str, ...]] = ("layer",)

    @field_validator("layer", "backward_layer", mode="before", check_fields=False)
    @classmethod
    def _entry_to_layer(cls, v):
        """A layer entry given as a mapping (the Python API, from_config) -> its layer; a spec file's entries
        arrive validated already, with positioned errors (spec/validate.py)."""
        if not isinstance(v, dict):
            return v
        type_name = v.get("type")
        if not isinstance(type_name, str) or type_name not in REGISTRY:
            raise ValueError(f"must be a layer entry with a known `type`, got {v!r}")
        try:
            return REGISTRY[type_name].model_validate(v)
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
            raise ValueError(f"{type_name}: {problems}") from None

    @field_validator("layer", check_fields=False)
    @classmethod
    def _plain_layer_inside(cls, inner):
        if inner.type == "Sequential" or isinstance(inner, _Wrapper):
            raise ValueError(f"must be a plain layer, not {inner.type}")
        return inner

    def _parts(self) -> list[tuple[str, LayerSpec]]:
        """(weight-name prefix, wrapped layer) in weight order."""
        raise NotImplementedError

    def _inner_shape(self, s):
        return s

    def weight_specs(self, s):
        inner = self._inner_shape(s)
        return [WeightSpec(prefix + w.name, w.shape, w.initializer, w.trainable)
                for prefix, layer in self._parts() for w in layer.weight_specs(inner)]

    def _split_weights(self, s, w):
        """The wrapper's weights (or gradients) as one list per wrapped layer."""
        out, k = [], 0
        for _, layer in self._parts():
            n = len(layer.weight_specs(s))
            out.append(w[k: k + n])
            k += n
        return out

    def initial_value(self, spec, rng):
        for prefix, layer in self._parts():
            if spec.name.startswith(prefix):
                return layer.initial_value(WeightSpec(spec.name[len(prefix):], spec.shape, spec.initializer,
                                                      spec.trainable), rng)
        raise KeyError(spec.name)

    def macs(self, s, out):
        inner = self._inner_shape(s)
        total = 0
        for _, layer in self._parts():
            total += layer.macs(inner, layer.compute_output_shape(inner)) or 0
        return total

    @field_serializer("layer", "backward_layer", check_fields=False)
    def _entry(self, inner):
        """A wrapped layer as its spec entry (no `inputs`: it takes the wrapper's)."""
        return None if inner is None else {"type": inner.type, **inner.model_dump(exclude={"type", "inputs"})}

    def config(self) -> dict:
        extra = {key: getattr(self, key).config() for key in self.wrapped_layer_keys if getattr(self, key) is not None}
        return super().config() | extra


@register
class Bidirectional(_Wrapper):
    """A recurrent layer and its backward twin (a copy with go_backwards: true, or `backward_layer`) over
    the same sequence; outputs merged by `merge_mode` (concat on the last axis, sum, mul or ave). With
    return_sequences the backward outputs are flipped back to the input's time order first."""

    type: Literal["Bidirectional"] = "Bidirectional"
    layer: SerializeAsAny[LayerSpec]
    merge_mode: MergeMode = "concat"
    backward_layer: SerializeAsAny[LayerSpec] | None = None

    wrapped_layer_keys: ClassVar[tuple[str, ...]] = ("layer", "backward_layer")

    @field_validator("layer", "backward_layer")
    @classmethod
    def _recurrent(cls, inner):
        if inner is not None and inner.type not in RECURRENT:
            raise ValueError(f"must be a recurrent layer ({', '.join(RECURRENT)}), got {inner.type}")
        return inner

    @field_validator("backward_layer")
    @classmethod
    def _twin(cls, back, info):
        layer = info.data.get("layer")
        if back is not None and layer is not None:
            if back.go_backwards == layer.go_backwards:
                raise ValueError("`layer` and `backward_layer` must have different go_backwards values")
            if back.return_sequences != layer.return_sequences:
                raise ValueError("`layer` and `backward_layer` must have the same return_sequences")
        return back

    @model_validator(mode="after")
    def _backward_copy(self):
        if self.backward_layer is None and self.layer.go_backwards:
            raise ValueError("the wrapped layer has go_backwards: true, and its backward copy would too; give a "
                             "`backward_layer` that goes forwards, or drop go_backwards (Keras's rule)")
        return self

    @property
    def _backward(self) -> LayerSpec:
        """The backward layer: `backward_layer`, or a copy of `layer` going backwards (Keras's)."""
        if self.backward_layer is not None:
            return self.backward_layer
        return self.layer.model_copy(update={"go_backwards": True, "name": f"backward_{_inner_name(self.layer)}"})

    def _parts(self):
        backward_prefix = (f"backward_{_inner_name(self.layer)}/" if self.backward_layer is None
                           else f"{_inner_name(self.backward_layer)}/")
        return [(f"forward_{_inner_name(self.layer)}/", self.layer), (backward_prefix, self._backward)]

    def compute_output_shape(self, s):
        out = self.layer.compute_output_shape(s)
        back = self._backward.compute_output_shape(s)
        if self.merge_mode == "concat":
            return out[:-1] + (out[-1] + back[-1],)
        if out != back:
            raise ShapeError(f"merge_mode {self.merge_mode!r} needs both directions' outputs of the same shape, got "
                             f"{fmt_shape(out)} and {fmt_shape(back)}")
        return out

    def forward(self, w, x, training, rng):
        import numpy as np

        wf, wb = self._split_weights(x.shape[1:], w)
        with _part("forward"):
            y, saved_f = self.layer.forward(wf, x, training, rng)
        with _part("backward"):
            yb, saved_b = self._backward.forward(wb, x, training, rng)
        if self.layer.return_sequences:
            yb = yb[:, ::-1]
        mode = self.merge_mode
        if mode == "concat":
            out = np.concatenate([y, yb], axis=-1)
        elif mode == "sum":
            out = y + yb
        elif mode == "ave":
            out = (y + yb) * y.dtype.type(0.5)
        else:
            out = y * yb
        return out, (saved_f, saved_b, y, yb, x.shape)

    def backward(self, w, g, saved, dy, need_dx=True):
        import numpy as np

        saved_f, saved_b, y, yb, shape = saved
        mode = self.merge_mode
        if mode == "concat":
            units = y.shape[-1]
            dyf, dyb = dy[..., :units], dy[..., units:]
        elif mode == "sum":
            dyf = dyb = dy
        elif mode == "ave":
            dyf = dyb = dy * dy.dtype.type(0.5)
        else:
            dyf, dyb = dy * yb, dy * y
        if self.layer.return_sequences:
            dyb = dyb[:, ::-1]
        wf, wb = self._split_weights(shape[1:], w)
        gf, gb = self._split_weights(shape[1:], g)
        with _part("forward"):
            dxf = self.layer.backward(wf, gf, saved_f, np.ascontiguousarray(dyf), need_dx)
        with _part("backward"):
            dxb = self._backward.backward(wb, gb, saved_b, np.ascontiguousarray(dyb), need_dx)
        return dxf + dxb if need_dx else None


@register
class TimeDistributed(_Wrapper):
    """`layer` applied to every step of axis 1: input (batch, time, *inner) runs as (batch * time, *inner)."""

    type: Literal["TimeDistributed"] = "TimeDistributed"
    layer: SerializeAsAny[LayerSpec]

    @field_validator("layer")
    @classmethod
    def _single_input(cls, inner):
        if inner.is_merge:
            raise ValueError(f"{inner.type} takes several inputs and cannot be wrapped by TimeDistributed")
        return inner

    def _parts(self):
        return [("", self.layer)]

    def _inner_shape(self, s):
        if len(s) < 2:
            raise ShapeError(f"TimeDistributed needs samples of rank 2 or more (batch, time, ...), got {fmt_shape(s)}")
        return s[1:]

    def compute_output_shape(self, s):
        inner = self._inner_shape(s)
        try:
            return (s[0],) + tuple(self.layer.compute_output_shape(inner))
        except ShapeError as exc:
            raise ShapeError(f"the wrapped {self.layer.type} gets each step, {fmt_shape(inner)}: {exc}") from None

    def weight_specs(self, s):
        return self.layer.weight_specs(self._inner_shape(s))

    def _split_weights(self, s, w):
        return [w]

    def initial_value(self, spec, rng):
        return self.layer.initial_value(spec, rng)

    # The wrapped layer's activation is applied by the engine on the whole output, which is the same
    # elementwise (and, for softmax, over the same last axis).
    def output_activation(self):
        return self.layer.output_activation()

    def applies_activation(self):
        return self.layer.applies_activation()

    def forward(self, w, x, training, rng):
        import numpy as np

        n, t = x.shape[:2]
        y, saved = self.layer.forward(w, np.ascontiguousarray(x).reshape(n * t, *x.shape[2:]), training, rng)
        return y.reshape(n, t, *y.shape[1:]), (saved, x.shape)

    def backward(self, w, g, saved, dy, need_dx=True):
        import numpy as np

        saved, shape = saved
        n, t = dy.shape[:2]
        dx = self.layer.backward(w, g, saved, np.ascontiguousarray(dy).reshape(n * t, *dy.shape[2:]), need_dx)
        return None if dx is None else dx.reshape(shape)
