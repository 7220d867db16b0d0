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
        import numpy as np

        from ..kernels import norm

        x2, layout = _to_rows(x, self.axis)
        c, dt = x2.shape[1], x2.dtype
        gamma, beta, _, _ = _affine(self, w, c, dt)
        moving_mean, moving_var = w[-2], w[-1]
        if training:
            mean, var = empty("mean", c, dt), empty("var", c, dt)
            norm.channel_moments(x2, mean, var)
            m = dt.type(self.momentum)
            moving_mean[...] = moving_mean * m + mean * (1 - m)
            moving_var[...] = moving_var * m + var * (1 - m)
        else:
            mean, var = moving_mean, moving_var
        inv = (1 / np.sqrt(var + dt.type(self.epsilon))).astype(dt)
        xhat, out = empty("xhat", x2.shape, x2.dtype), empty("out", x2.shape, x2.dtype)
        norm.channel_normalize(x2, np.ascontiguousarray(mean), inv, gamma, beta, xhat, out)
        return _from_rows(out, layout), (xhat, inv, bool(training), layout)

    def backward(self, w, g, saved, dy, need_dx=True):
        import numpy as np

        from ..kernels import norm

        xhat, inv, training, layout = saved
        dy2, _ = _to_rows(np.asarray(dy, xhat.dtype), self.axis)
        c, dt = xhat.shape[1], xhat.dtype
        gamma, _, gi, bi = _affine(self, w, c, dt)
        dgamma, dbeta = _affine_grads(g, gi, bi, c, dt)
        dx = empty("dx", xhat.shape, xhat.dtype)
        norm.channel_backward(dy2, xhat, gamma, inv, training, dgamma, dbeta, dx)
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

    def forward(self, w, x, training, rng):

        from ..kernels import norm

        x2, layout = _to_rows(x, self.axis)
        c, dt = x2.shape[1], x2.dtype
        gamma, beta, _, _ = _affine(self, w, c, dt)
        xhat, out = empty("xhat", x2.shape, x2.dtype), empty("out", x2.shape, x2.dtype)
        inv = empty("inv", x2.shape[0], dt)
        norm.row_normalize(x2, gamma, beta, dt.type(self.epsilon), xhat, inv, out)
        return _from_rows(out, layout), (xhat, inv, layout)

    def backward(self, w, g, saved, dy, need_dx=True):
        import numpy as np

        from ..kernels import norm

        xhat, inv, layout = saved
        dy2, _ = _to_rows(np.asarray(dy, xhat.dtype), self.axis)
        c, dt = xhat.shape[1], xhat.dtype
        gamma, _, gi, bi = _affine(self, w, c, dt)
        dgamma, dbeta = _affine_grads(g, gi, bi, c, dt)
        dx = empty("dx", xhat.shape, xhat.dtype)
        norm.row_backward(dy2, xhat, gamma, inv, dgamma, dbeta, dx)
        return _from_rows(dx, layout)
