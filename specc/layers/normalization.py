"""BatchNormalization and LayerNormalization over one axis (the last by default, channels_last).

The runtime moves the normalised axis last and works on (rows, channels) arrays, so any non-batch
`axis` is supported at the cost of a transposing copy when it is not the last one.
"""

from __future__ import annotations

from typing import Literal

from ..spec.types import Bool, OpenFraction, PositiveFloat, StrictInt
from ..workspace import empty
from .base import LayerSpec, ShapeError, WeightSpec, fmt_shape, register
from .initializers import Initializer


def _to_rows(x, axis):
    """x (batch, ...) -> ((rows, C) contiguous with the `axis` last, what `_from_rows` needs)."""
    import numpy as np

    a = axis % x.ndim  # the shape rule has checked the range; Keras counts the batch axis
    moved = np.moveaxis(x, a, -1)
    return np.ascontiguousarray(moved).reshape(-1, x.shape[a]), (a, moved.shape)


def _from_rows(y2, layout):
    import numpy as np

    a, moved_shape = layout
    y = y2.reshape(moved_shape)
    return y if a == len(moved_shape) - 1 else np.ascontiguousarray(np.moveaxis(y, -1, a))


def _affine(layer, w, c, dtype):
    """(gamma, beta, index of gamma or None, index of beta or None); ones/zeros stand in when absent."""
    import numpy as np

    gi = 0 if layer.scale else None
    bi = (1 if layer.scale else 0) if layer.center else None
    gamma = w[gi] if gi is not None else np.ones(c, dtype)
    beta = w[bi] if bi is not None else np.zeros(c, dtype)
    return gamma, beta, gi, bi


def _affine_grads(g, gi, bi, c, dtype):
    import numpy as np

    return (g[gi] if gi is not None else np.empty(c, dtype)), (g[bi] if bi is not None else np.empty(c, dtype))


def _axis_size(layer, s, axis):
    rank = len(s) + 1  # with the batch axis, as Keras counts `axis`
    a = axis if axis >= 0 else rank + axis
    if not 1 <= a < rank:
        raise ShapeError(f"axis {axis} is out of range for input {fmt_shape(s)} (the batch axis 0 cannot be "
                         f"normalised)")
    if s[a - 1] is None:
        raise ShapeError(f"the normalised axis {axis} of input {fmt_shape(s)} must have a known size")
    return s[a - 1]


@register
class BatchNormalization(LayerSpec):
    """Weights in Keras's order: gamma, beta (trainable), moving_mean, moving_variance (statistics)."""

    type: Literal["BatchNormalization"] = "BatchNormalization"
    axis: StrictInt = -1
    momentum: OpenFraction = 0.99
    epsilon: PositiveFloat = 1e-3
    center: Bool = True
    scale: Bool = True
    beta_initializer: Initializer = "zeros"
    gamma_initializer: Initializer = "ones"
    moving_mean_initializer: Initializer = "zeros"
    moving_variance_initializer: Initializer = "ones"

    def compute_output_shape(self, s):
        _axis_size(self.type, s, self.axis)
        return s

    def weight_specs(self, s):
        c = (_axis_size(self.type, s, self.axis),)
        w = []
        if self.scale:
            w.append(WeightSpec("gamma", c, self.gamma_initializer))
        if self.center:
            w.append(WeightSpec("beta", c, self.beta_initializer))
        w.append(WeightSpec("moving_mean", c, self.moving_mean_initializer, trainable=False))
        w.append(WeightSpec("moving_variance", c, self.moving_variance_initializer, trainable=False))
        return w

    def forward(self, w, x, training, rng):
        """Training: normalise with the batch mean and biased variance over every axis but `axis`, and
        update the statistics in place as Keras 3 does, with the *biased* batch variance:
        moving = moving * momentum + batch * (1 - momentum). Inference (or a frozen layer, which the
        engine runs with training=False): normalise with the moving statistics."""
        return self.forward_act(w, x, training, 0)

    def forward_act(self, w, x, training, act):
        """forward, then the activation of code `act` (kernels.norm.ACT_*) in the same pass
        (layers/fusion.py's BatchNormAct)."""
        import numpy as np

        from ..kernels import norm

        x2, layout = _to_rows(x, self.axis)
        rows, c = x2.shape
        dt = x2.dtype
        gamma, beta, _, _ = _affine(self, w, c, dt)
        moving_mean, moving_var = w[-2], w[-1]
        per, chunks = norm.batch_chunking(rows, c)
        if training:
            shift = x2[0].copy()
            s1 = empty("sums", (chunks, c), np.float64)
            s2 = empty("squares", (chunks, c), np.float64)
            norm.batch_pass(norm.SUMS, x2, x2, shift, shift, shift, shift, shift, shift, act, per, chunks, s1, s2)
            mean64, var64 = empty("mean64", c, np.float64), empty("var64", c, np.float64)
            norm.batch_moments(s1, s2, shift, rows, mean64, var64)
            mean, var = mean64.astype(dt), var64.astype(dt)
            m = dt.type(self.momentum)
            moving_mean[...] = moving_mean * m + mean * (1 - m)
            moving_var[...] = moving_var * m + var * (1 - m)
        else:
            mean, var = np.ascontiguousarray(moving_mean), moving_var
        inv = (1 / np.sqrt(var + dt.type(self.epsilon))).astype(dt)
        scale = (gamma * inv).astype(dt)
        offset = (beta - mean * scale).astype(dt)
        out = empty("out", x2.shape, dt)
        norm.batch_pass(norm.AFFINE, x2, x2, scale, scale, offset, scale, scale, scale, act, per, chunks, out=out)
        return _from_rows(out, layout), (x2, mean, inv, scale, offset, bool(training), layout, act)

    def backward(self, w, g, saved, dy, need_dx=True):
        import numpy as np

        from ..kernels import norm

        x2, mean, inv, scale, offset, training, layout, act = saved
        dy2, _ = _to_rows(np.asarray(dy, x2.dtype), self.axis)
        rows, c = x2.shape
        dt = x2.dtype
        gamma, _, gi, bi = _affine(self, w, c, dt)
        dgamma, dbeta = _affine_grads(g, gi, bi, c, dt)
        per, chunks = norm.batch_chunking(rows, c)
        s1 = empty("sums", (chunks, c), np.float64)
        s2 = empty("products", (chunks, c), np.float64)
        norm.batch_pass(norm.GRAD_SUMS, dy2, x2, mean, scale, offset, mean, mean, mean, act, per, chunks, s1, s2)
        sum_dz, sum_dzx = s1.sum(axis=0), s2.sum(axis=0)  # (C,) float64, added in chunk order
        dbeta[...] = sum_dz
        dgamma[...] = sum_dzx * inv
        if not need_dx:
            return None
        # dx = k * (dz - mb - xhat * mg) = k * dz + c0 - c1 * (x - mean) (kernels/norm.batch_dx_range)
        k = gamma.astype(np.float64) * inv
        if training:
            mb, mg = sum_dz / rows, sum_dzx * inv / rows
            c0, c1 = -k * mb, k * inv * mg
        else:
            c0 = c1 = np.zeros(c)
        dx = empty("dx", x2.shape, dt)
        k, c0, c1 = k.astype(dt), c0.astype(dt), c1.astype(dt)
        norm.batch_pass(norm.DX, dy2, x2, mean, scale, offset, k, c0, c1, act, per, chunks, out=dx)
        return _from_rows(dx, layout)


@register
class LayerNormalization(LayerSpec):
    """Normalises each sample over `axis` (mean and biased variance), then gamma * xhat + beta."""

    type: Literal["LayerNormalization"] = "LayerNormalization"
    axis: StrictInt = -1
    epsilon: PositiveFloat = 1e-3
    center: Bool = True
    scale: Bool = True
    beta_initializer: Initializer = "zeros"
    gamma_initializer: Initializer = "ones"

    def compute_output_shape(self, s):
        _axis_size(self.type, s, self.axis)
        return s

    def weight_specs(self, s):
        c = (_axis_size(self.type, s, self.axis),)
        w = []
        if self.scale:
            w.append(WeightSpec("gamma", c, self.gamma_initializer))
        if self.center:
            w.append(WeightSpec("beta", c, self.beta_initializer))
        return w

    def forward(self, w, x, training, rng, residual=None):
        """Keeps x (a view of the input when `axis` is last) and per-row statistics, the same in training
        and inference: backward recomputes the normalised values (kernels/layernorm.py). With `residual`
        (of x's shape: an Add that only this normalisation reads, layers/fusion.py AddNorm), of x +
        residual in the same pass, keeping the sum as the x backward reads."""
        import numpy as np

        from ..kernels import layernorm

        x2, layout = _to_rows(x, self.axis)
        rows, c = x2.shape
        dt = x2.dtype
        b2 = None if residual is None else _to_rows(np.asarray(residual, dt), self.axis)[0]
        gamma, beta, _, _ = _affine(self, w, c, dt)
        out = empty("out", x2.shape, dt)
        total = None if b2 is None else empty("sum", x2.shape, dt)
        mean, inv = empty("mean", (rows,), np.float64), empty("inv", (rows,), np.float64)
        layernorm.forward(x2, gamma, beta, float(self.epsilon), mean, inv, out, b2, total)
        return _from_rows(out, layout), (x2 if total is None else total, mean, inv, layout)

    def backward(self, w, g, saved, dy, need_dx=True):
        import numpy as np

        from ..kernels import layernorm

        x2, mean, inv, layout = saved
        dy2, _ = _to_rows(np.asarray(dy, x2.dtype), self.axis)
        c, dt = x2.shape[1], x2.dtype
        gamma, _, gi, bi = _affine(self, w, c, dt)
        dgamma, dbeta = _affine_grads(g, gi, bi, c, dt)
        dx = empty("dx", x2.shape, dt) if need_dx else x2[:0]
        layernorm.backward(dy2, x2, mean, inv, gamma, need_dx, dgamma, dbeta, dx)
        return _from_rows(dx, layout) if need_dx else None
