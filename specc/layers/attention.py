"""MultiHeadAttention with Keras 3's arguments, weights and masks.

In a Functional spec it takes `inputs: [query, value]` or `[query, value, key]` (Keras's call order), or a
mapping with those names and `attention_mask`: `inputs: {query: x, value: x, attention_mask: pad}`. The
mask input holds, per sample, a (queries, keys) array (size-1 axes broadcast) with nonzero where a query
may attend to a key. `use_causal_mask` (a call argument in Keras) is a layer argument here: query t
attends to keys 0..t. Both combine with a logical and, as in Keras.

Weights, in Keras's order and shapes: query/kernel (d_query, heads, key_dim), query/bias (heads,
key_dim), key/kernel (d_key, heads, key_dim), key/bias, value/kernel (d_value, heads, value_dim),
value/bias, attention_output/kernel (heads, value_dim, *output_shape), attention_output/bias
(*output_shape).

The runtime moves the sample axes that are not attention axes into the batch and flattens the attention
axes into one (attention over several axes is attention over their product), so every case runs as
(batch', positions, features) arrays. Each distinct input array is projected by one product (the dense
kernels) against its projections' kernels side by side (self-attention: query, key and value in one), and
the attention itself, scores to context, is one kernel call over every (sample, head) that reads the
projections' (B', L, heads, size) column blocks in place (kernels/attention.py).
"""

from __future__ import annotations

import math
from typing import ClassVar, Literal

from pydantic import PrivateAttr, field_validator, model_validator

from ..spec.types import Bool, PositiveInt, Rate, StrictInt
from ..workspace import empty
from .base import LayerSpec, ShapeError, WeightSpec, fmt_shape, register
from .initializers import Initializer

ROLES = ("query", "value", "key", "attention_mask")


@register
class MultiHeadAttention(LayerSpec):
    type: Literal["MultiHeadAttention"] = "MultiHeadAttention"
    num_heads: PositiveInt
    key_dim: PositiveInt
    value_dim: PositiveInt | None = None
    dropout: Rate = 0.0
    use_bias: Bool = True
    output_shape: list[PositiveInt] | None = None
    attention_axes: list[StrictInt] | None = None
    kernel_initializer: Initializer = "glorot_uniform"
    bias_initializer: Initializer = "zeros"
    use_causal_mask: Bool = False
    seed: StrictInt | None = None

    # `inputs` may name each input (spec/jsonschema.py shows the mapping form).
    named_inputs: ClassVar[tuple[str, ...]] = ROLES
    min_inputs: ClassVar[int] = 2
    max_inputs: ClassVar[int | None] = 4
    # The (sample, head) pairs are split over Numba's threads, as the products are (kernels/attention.py).
    runs_own_threads: ClassVar[bool] = False
    # What each of `inputs` is, in order (query, value, then key and/or attention_mask when given).
    _roles: tuple[str, ...] | None = PrivateAttr(default=None)

    @field_validator("output_shape", "attention_axes", mode="before")
    @classmethod
    def _int_or_list(cls, v):
        return [v] if isinstance(v, int) and not isinstance(v, bool) else v

    @model_validator(mode="wrap")
    @classmethod
    def _named_inputs(cls, data, handler):
        """`inputs` as a mapping {query, value, key, attention_mask} -> the list in that order."""
        roles = None
        if isinstance(data, dict) and isinstance(data.get("inputs"), dict):
            mapping = data["inputs"]
            unknown = [k for k in mapping if k not in ROLES]
            if unknown:
                raise ValueError(f"`inputs` of MultiHeadAttention: unknown name {unknown[0]!r}; the names are "
                                 f"{', '.join(ROLES)}")
            missing = [k for k in ("query", "value") if k not in mapping]
            if missing:
                raise ValueError(f"`inputs` of MultiHeadAttention needs `{missing[0]}`")
            roles = tuple(k for k in ROLES if k in mapping)
            data = {**data, "inputs": [mapping[k] for k in roles]}
        layer = handler(data)
        if roles is None and layer.inputs is not None:
            roles = ROLES[: len(layer.inputs)] if len(layer.inputs) <= 3 else None
        layer._roles = roles
        return layer

    @property
    def input_roles(self) -> tuple[str, ...] | None:
        """The role of each input when a spec must name them (an attention mask is given), else None: the
        `inputs` list then reads in Keras's call order (query, value, key)."""
        return self._roles if self._roles and "attention_mask" in self._roles else None

    def set_input_roles(self, roles: tuple[str, ...]) -> None:
        """The roles of the inputs in order (the Python API's call with keyword arguments)."""
        if roles[:2] != ("query", "value") or any(r not in ROLES for r in roles):
            raise ValueError(f"inputs must start with query and value, then key and/or attention_mask; got {roles}")
        self._roles = tuple(roles)

    # --- shape rule ------------------------------------------------------------------------------------

    def _split(self, shapes):
        """{role: sample shape} for the given input shapes."""
        roles = self._roles or ROLES[: len(shapes)]
        if len(shapes) == 4 and self._roles is None:
            raise ShapeError("with an attention mask, name the inputs: inputs: {query: ..., value: ..., key: ..., "
                             "attention_mask: ...}")
        return dict(zip(roles, shapes, strict=True))

    def _axes(self, q):
        """Attention axes as sample axes (0-based, batch excluded), sorted."""
        rank = len(q) + 1  # with the batch axis, as Keras counts
        if self.attention_axes is None:
            return list(range(len(q) - 1))
        axes = []
        for a in self.attention_axes:
            k = a if a >= 0 else rank + a  # Keras: (rank of the projection - 1) + a
            if not 1 <= k <= rank - 2:
                raise ShapeError(f"attention_axes entry {a} is out of range for query {fmt_shape(q)}: attention runs "
                                 f"over axes 1 to {rank - 2} (not the batch axis nor the feature axis)")
            if k - 1 in axes:
                raise ShapeError(f"attention_axes entry {a} is given twice")
            axes.append(k - 1)
        return sorted(axes)

    def _dims(self, shapes):
        parts = self._split(shapes)
        q, v = parts["query"], parts["value"]
        k = parts.get("key", v)
        for role, s in (("query", q), ("value", v), ("key", k)):
            if len(s) < 2:
                raise ShapeError(f"the {role} {fmt_shape(s)} needs at least one position axis and a feature axis")
            if s[-1] is None:
                raise ShapeError(f"the last axis of the {role} {fmt_shape(s)} must be known to size the projections")
        if v[:-1] != k[:-1]:
            raise ShapeError(f"all axes of value {fmt_shape(v)} and key {fmt_shape(k)} but the last must be equal")
        if len(q) != len(v):
            raise ShapeError(f"query {fmt_shape(q)} and value {fmt_shape(v)} must have the same rank")
        axes = self._axes(q)
        for a in range(len(q) - 1):
            if a not in axes and q[a] != v[a]:
                raise ShapeError(f"query {fmt_shape(q)} and value {fmt_shape(v)} must agree on axis {a + 1}, which is "
                                 f"not an attention axis")
        mask = parts.get("attention_mask")
        if mask is not None or self.use_causal_mask:
            if len(axes) != 1 or len(q) != 2:
                raise ShapeError("masks need a query and value of shape (batch, positions, features) with the default "
                                 f"attention axis; got query {fmt_shape(q)}")
        if mask is not None:
            want = (q[0], v[0])
            if len(mask) != 2 or any(m not in (1, w) and w is not None for m, w in zip(mask, want)):
                raise ShapeError(f"attention_mask {fmt_shape(mask)} must have shape {fmt_shape(want)} (queries, keys), "
                                 f"or size 1 on an axis to broadcast")
        out = tuple(self.output_shape) if self.output_shape else (q[-1],)
        return q, v, k, axes, out

    def compute_output_shape(self, shapes):
        q, _, _, _, out = self._dims(shapes)
        return q[:-1] + out

    def weight_specs(self, shapes):
        q, v, k, _, out = self._dims(shapes)
        h, dk, dv = self.num_heads, self.key_dim, self.value_dim or self.key_dim
        w = []
        for name, d, size in (("query", q[-1], dk), ("key", k[-1], dk), ("value", v[-1], dv)):
            w.append(WeightSpec(f"{name}/kernel", (d, h, size), self.kernel_initializer))
            if self.use_bias:
                w.append(WeightSpec(f"{name}/bias", (h, size), self.bias_initializer))
        w.append(WeightSpec("attention_output/kernel", (h, dv, *out), self.kernel_initializer))
        if self.use_bias:
            w.append(WeightSpec("attention_output/bias", out, self.bias_initializer))
        return w

    def macs(self, shapes, output_shape):
        q, v, k, axes, out = self._dims(shapes)
        h, dk, dv = self.num_heads, self.key_dim, self.value_dim or self.key_dim
        tq, tv = math.prod(q[:-1]), math.prod(v[:-1])
        keys = math.prod(v[a] for a in axes)  # keys each query position attends to
        return (tq * q[-1] * h * dk + tv * k[-1] * h * dk + tv * v[-1] * h * dv + tq * keys * h * (dk + dv)
                + tq * h * dv * math.prod(out))

    # --- runtime ---------------------------------------------------------------------------------------

    def _weights(self, w):
        """(kernels, biases) by projection name; biases None without use_bias."""
        names = ("query", "key", "value", "attention_output")
        if self.use_bias:
            return dict(zip(names, w[0::2])), dict(zip(names, w[1::2]))
        return dict(zip(names, w)), dict.fromkeys(names)

    @staticmethod
    def _to_rows(x, axes):
        """x (B, *sample) -> (B', positions, features) with the attention axes flattened, and how to undo."""
        import numpy as np

        nd = x.ndim
        attn = [a + 1 for a in axes]
        rest = [a for a in range(1, nd - 1) if a not in attn]
        order = [0, *rest, *attn, nd - 1]
        moved = np.transpose(x, order)
        positions = math.prod(x.shape[a] for a in attn)
        return np.ascontiguousarray(moved).reshape(-1, positions, x.shape[-1]), (order, moved.shape)

    @staticmethod
    def _from_rows(y, layout, last):
        import numpy as np

        order, moved_shape = layout
        y = y.reshape(moved_shape[:-1] + last)
        inverse = np.argsort(order[:-1] + list(range(len(order) - 1, len(order) - 1 + len(last))))
        return np.ascontiguousarray(np.transpose(y, inverse))

    def _mask(self, parts, q_rows, v_rows):
        """(m, T, S) uint8 mask, m = 1 or the batch; None when every query attends to every key."""
        import numpy as np

        mask = None
        if "attention_mask" in parts:
            m = np.asarray(parts["attention_mask"])
            mask = np.broadcast_to(m != 0, (m.shape[0], q_rows, v_rows))
        if self.use_causal_mask:
            causal = np.tril(np.ones((q_rows, v_rows), bool))[None]  # query t attends to keys 0..t
            mask = causal if mask is None else mask & causal
        return None if mask is None else np.ascontiguousarray(mask, np.uint8)

    def _groups(self, parts):
        """The projections grouped by the input they read: [(role of the input, [(projection, size)])].
        Self-attention (query, value and key one array) makes one group, projected by one product."""
        dk, dv = self.key_dim, self.value_dim or self.key_dim
        sources = (("query", "query", dk), ("key", "key" if "key" in parts else "value", dk),
                   ("value", "value", dv))
        groups: list = []
        for name, role, size in sources:
            for first, members in groups:
                if parts[first] is parts[role]:
                    members.append((name, size))
                    break
            else:
                groups.append((role, [(name, size)]))
        return groups

    def _packed(self, kernels, biases, members, d, dt):
        """The group's kernels side by side, (d, sum of heads * size), and biases (or an unused array
        without use_bias): the weights themselves for one projection, else copies made at each forward,
        so they follow every update (set_weights, optimizer steps)."""
        h = self.num_heads
        if len(members) == 1:
            name = members[0][0]
            b = biases[name]
            w = kernels[name].reshape(d, -1)
            return w, (w[0] if b is None else b.reshape(-1))
        key = "+".join(name for name, _ in members)
        width = sum(h * size for _, size in members)
        w = empty(f"w:{key}", (d, width), dt)
        b = empty(f"b:{key}", (width,), dt)
        at = 0
        for name, size in members:
            w[:, at: at + h * size] = kernels[name].reshape(d, -1)
            if self.use_bias:
                b[at: at + h * size] = biases[name].reshape(-1)
            at += h * size
        return w, b

    def forward(self, w, xs, training, rng):
        import numpy as np

        from ..kernels import attention, dense

        parts = dict(zip(self._roles or ROLES[: len(xs)], xs, strict=True))
        axes = self._axes(parts["query"].shape[1:])
        kernels, biases = self._weights(w)
        h, dk, dv = self.num_heads, self.key_dim, self.value_dim or self.key_dim
        dt = parts["query"].dtype

        projected, rows = {}, {}
        for role, members in self._groups(parts):
            x, layout = self._to_rows(parts[role], axes)  # (B', L, d)
            n, length, d = x.shape
            wcat, bcat = self._packed(kernels, biases, members, d, dt)
            y = empty(f"proj:{role}", (n * length, wcat.shape[1]), dt)  # (B' L, heads * sizes)
            dense.forward(x.reshape(-1, d), wcat, bcat, self.use_bias, y)
            at = 0
            for name, size in members:  # (B', L, heads, size) views of y's column blocks
                projected[name] = y[:, at: at + h * size].reshape(n, length, h, size)
                at += h * size
            rows[role] = (x, layout, wcat, y, members)
        q, k, v = projected["query"], projected["key"], projected["value"]
        n, t, s = q.shape[0], q.shape[1], k.shape[1]

        mask = self._mask(parts, t, s)
        keep = None
        if training and self.dropout > 0:
            keep = (rng.random((n, h, t, s)) >= self.dropout).astype(dt) / dt.type(1 - self.dropout)
        scale = dt.type(1 / math.sqrt(dk))
        # Inference keeps no probabilities; a backward after it (a frozen layer) computes them again.
        probs = empty("probs", (n, h, t, s) if training else (1, 1, t, s), dt)
        ctx = empty("ctx", (n, t, h, dv), dt)
        use_mask = mask is not None
        mask = mask if use_mask else np.ones((1, 1, 1), np.uint8)
        attention.attention_forward(q, k, v, mask, use_mask, scale,
                                    probs if keep is None else keep, keep is not None, training, probs, ctx)
        ctx2 = ctx.reshape(n * t, h * dv)
        wo = kernels["attention_output"]
        out_dims = wo.shape[2:]
        y = empty("out", (n * t, math.prod(out_dims)), dt)
        bo = biases["attention_output"]
        dense.forward(ctx2, wo.reshape(h * dv, -1), wo[0, 0].reshape(-1) if bo is None else bo.reshape(-1),
                      self.use_bias, y)
        saved = (parts, axes, rows, q, k, v, scale, mask, use_mask, probs if training else None, keep, ctx2)
        return self._from_rows(y, rows["query"][1], tuple(out_dims)), saved

    def backward(self, w, g, saved, dy, need_dx=True):
        import numpy as np

        from ..kernels import attention, dense

        parts, axes, rows, q, k, v, scale, mask, use_mask, probs, keep, ctx2 = saved
        kernels, biases = self._weights(w)
        grads, gbiases = self._weights(g)
        h, dv = self.num_heads, self.value_dim or self.key_dim
        n, t = q.shape[0], q.shape[1]
        dt = q.dtype
        if probs is None:  # the forward ran for inference
            probs = empty("probs", (n, h, t, k.shape[1]), dt)
            attention.attention_forward(q, k, v, mask, use_mask, scale, probs, False,
                                        True, probs, empty("ctx", ctx2.shape, dt).reshape(n, t, h, dv))

        wo = kernels["attention_output"]
        dy = np.asarray(dy, dt)
        dy = dy.reshape(dy.shape[: parts["query"].ndim - 1] + (-1,))  # output axes as one
        dy_rows = self._to_rows(dy, axes)[0].reshape(n * t, -1)  # (B' T, prod(out))
        gbo = gbiases["attention_output"]
        dctx = empty("dctx", (n * t, h * dv), dt)
        dense.backward(ctx2, wo.reshape(h * dv, -1), dy_rows, self.use_bias, True,
                       grads["attention_output"].reshape(h * dv, -1),
                       dctx[0] if gbo is None else gbo.reshape(-1), dctx)

        dproj, dviews = {}, {}
        for role, (x, _, _, y, members) in rows.items():
            dproj[role] = dy_ = empty(f"dproj:{role}", y.shape, dt)  # (B' L, heads * sizes), as y
            at = 0
            for name, size in members:
                dviews[name] = dy_[:, at: at + h * size].reshape(x.shape[0], x.shape[1], h, size)
                at += h * size
        attention.attention_backward(q, k, v, probs, probs if keep is None else keep, keep is not None,
                                     dctx.reshape(n, t, h, dv), scale, dviews["query"], dviews["key"],
                                     dviews["value"])

        out = {}
        for role, (x, layout, wcat, _, members) in rows.items():
            d2 = dproj[role]
            x2 = x.reshape(-1, x.shape[-1])
            if len(members) == 1:  # the gradients straight into the weights' gradient arrays
                name = members[0][0]
                gw, gb = grads[name].reshape(wcat.shape), gbiases[name]
                gb = d2[0] if gb is None else gb.reshape(-1)
            else:
                gw, gb = empty(f"gw:{role}", wcat.shape, dt), empty(f"gb:{role}", (wcat.shape[1],), dt)
            dx = empty(f"dx:{role}", x2.shape, dt) if need_dx else x2[:0]
            dense.backward(x2, wcat, d2, self.use_bias, need_dx, gw, gb, dx)
            if len(members) > 1:
                at = 0
                for name, size in members:
                    grads[name][...] = gw[:, at: at + h * size].reshape(grads[name].shape)
                    if self.use_bias:
                        gbiases[name][...] = gb[at: at + h * size].reshape(h, size)
                    at += h * size
            if need_dx:
                out[role] = self._from_rows(dx.reshape(x.shape), layout, (x.shape[-1],))
        if not need_dx:
            return None
        for role in parts:  # the mask, and an input that is the same array as an earlier one (its gradient is there)
            if role not in out:
                out[role] = zeros = empty(f"dx0:{role}", parts[role].shape, parts[role].dtype)
                zeros.fill(0)  # a workspace array: no fresh pages at every step
        return [out[r] for r in self._roles or ROLES[: len(parts)]]
