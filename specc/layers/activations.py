"""Activation functions by Keras name, the Activation layer, and the activation layers with arguments
(ReLU, LeakyReLU, PReLU, ELU, Softmax).

Only names live here (validation must not import Numba); the runtime maps each name to its kernel.
"""

from __future__ import annotations

from typing import Literal

from pydantic import field_validator

from ..spec.types import NonNegFloat, Number, PositiveInt, StrictInt, choice
from ..workspace import empty
from .base import LayerSpec, ShapeError, WeightSpec, fmt_shape, register
from .initializers import Initializer

ACTIVATIONS = (
    "linear", "relu", "relu6", "leaky_relu", "elu", "selu", "gelu", "sigmoid", "hard_sigmoid", "tanh",
    "softmax", "log_softmax", "softplus", "softsign", "silu", "exponential",
)
# Keras 3 treats `swish` as another name for `silu`; `null` means no activation.
ActivationName = choice(ACTIVATIONS, "activation", aliases={"swish": "silu"}, none_as="linear")


@register
class Activation(LayerSpec):
    type: Literal["Activation"] = "Activation"
    activation: ActivationName

    # The engine applies `output_activation` (and its derivative) to the layer's output.
    def output_activation(self):
        return self.activation

    def forward(self, w, x, training, rng):
        return x, None

    def backward(self, w, g, saved, dy, need_dx=True):
        return dy


# --- activation layers with arguments (Keras's keras.layers.ReLU, LeakyReLU, PReLU, ELU, Softmax) --------


def _flat(x):
    import numpy as np

    return np.ascontiguousarray(x).reshape(-1)


class _PiecewiseLinear(LayerSpec):
    """ReLU and LeakyReLU: one kernel pair, given (negative_slope, max_value or -1 for none, threshold)."""

    def _args(self):
        raise NotImplementedError

    def forward(self, w, x, training, rng):
        from ..kernels import pointwise

        y = empty("out", x.shape, x.dtype)
        pointwise.relu_forward(_flat(x), *self._args(), y.reshape(-1))
        return y, x

    def backward(self, w, g, x, dy, need_dx=True):
        from ..kernels import pointwise

        dx = empty("dx", x.shape, x.dtype)
        pointwise.relu_backward(_flat(x), *self._args(), _flat(dy.astype(x.dtype, copy=False)), dx.reshape(-1))
        return dx


@register
class ReLU(_PiecewiseLinear):
    """Keras 3's relu with arguments: x above `threshold` (else 0), clipped at `max_value`, minus
    negative_slope * max(threshold - x, 0). MobileNets use ReLU(max_value=6)."""

    type: Literal["ReLU"] = "ReLU"
    max_value: NonNegFloat | None = None
    negative_slope: NonNegFloat = 0.0
    threshold: NonNegFloat = 0.0

    def _args(self):
        return self.negative_slope, -1.0 if self.max_value is None else self.max_value, self.threshold


@register
class LeakyReLU(_PiecewiseLinear):
    """x for x >= 0, negative_slope * x below (Keras 3's default slope is 0.3, its `alpha` renamed)."""

    type: Literal["LeakyReLU"] = "LeakyReLU"
    negative_slope: NonNegFloat = 0.3

    def _args(self):
        return self.negative_slope, -1.0, 0.0


@register
class ELU(LayerSpec):
    """x for x > 0, alpha * (exp(x) - 1) otherwise."""

    type: Literal["ELU"] = "ELU"
    alpha: Number = 1.0

    def forward(self, w, x, training, rng):
        from ..kernels import pointwise

        y = empty("out", x.shape, x.dtype)
        pointwise.elu_forward(_flat(x), self.alpha, y.reshape(-1))
        return y, x

    def backward(self, w, g, x, dy, need_dx=True):
        from ..kernels import pointwise

        dx = empty("dx", x.shape, x.dtype)
        pointwise.elu_backward(_flat(x), self.alpha, _flat(dy.astype(x.dtype, copy=False)), dx.reshape(-1))
        return dx


@register
class PReLU(LayerSpec):
    """x for x >= 0, alpha * x below, with a learned `alpha` of the input's shape (batch axis excluded);
    `shared_axes` (Keras counts the batch axis as 0) get size 1 in alpha and share its values."""

    type: Literal["PReLU"] = "PReLU"
    alpha_initializer: Initializer = "zeros"
    shared_axes: list[PositiveInt] | None = None

    @field_validator("shared_axes", mode="before")
    @classmethod
    def _one_axis(cls, v):
        return [v] if isinstance(v, int) and not isinstance(v, bool) else v

    def _alpha_shape(self, s):
        shared = set(self.shared_axes or ())
        for a in sorted(shared):
            if a > len(s):
                raise ShapeError(f"shared_axes entry {a} is out of range for input {fmt_shape(s)} (axes 1 to "
                                 f"{len(s)}; 0 is the batch axis)")
        shape = tuple(1 if i + 1 in shared else d for i, d in enumerate(s))
        if None in shape:
            raise ShapeError(f"every axis of its input {fmt_shape(s)} that is not in shared_axes must have a "
                             f"known size to size alpha")
        return shape

    def compute_output_shape(self, s):
        self._alpha_shape(s)
        return s

    def weight_specs(self, s):
        return [WeightSpec("alpha", self._alpha_shape(s), self.alpha_initializer)]

    def forward(self, w, x, training, rng):
        import numpy as np

        alpha = w[0]  # broadcasts over the batch axis and the shared axes
        return np.where(x > 0, x, alpha * x).astype(x.dtype, copy=False), x

    def backward(self, w, g, x, dy, need_dx=True):
        import numpy as np

        alpha = w[0]
        negative = x <= 0
        grad_alpha = np.where(negative, dy * x, 0)
        g[0][...] = grad_alpha.sum(axis=tuple(i for i in range(x.ndim) if i == 0 or alpha.shape[i - 1] == 1)
                                   ).reshape(alpha.shape)
        return np.where(negative, alpha * dy, dy).astype(x.dtype, copy=False) if need_dx else None


def _axes_of(layer_type, axis, s):
    """Keras-counted axes (the batch axis is 0; negative from the end) -> sorted sample axes (0-based
    without the batch axis); the batch axis is refused, as each sample must stay independent."""
    rank = len(s) + 1
    axes = [axis] if isinstance(axis, int) else list(axis)
    out = []
    for a in axes:
        k = a + rank if a < 0 else a
        if not 1 <= k < rank:
            raise ShapeError(f"axis {a} is out of range for input {fmt_shape(s)}; {layer_type} normalises within "
                             f"a sample, so the batch axis 0 (or {-rank}) cannot be one of them")
        if k - 1 in out:
            raise ShapeError(f"axis {a} is given twice")
        out.append(k - 1)
    return sorted(out)


@register
class Softmax(LayerSpec):
    """exp(x) / sum(exp(x)) over `axis` (an integer or a list of them, counted with the batch axis)."""

    type: Literal["Softmax"] = "Softmax"
    axis: StrictInt | list[StrictInt] = -1

    def compute_output_shape(self, s):
        _axes_of(self.type, self.axis, s)
        return s

    def _rows(self, x):
        """x (batch, ...) -> (rows, n) contiguous with the softmax axes last, and the moved shape."""
        import numpy as np

        axes = [a + 1 for a in _axes_of(self.type, self.axis, x.shape[1:])]
        moved = np.moveaxis(x, axes, list(range(x.ndim - len(axes), x.ndim)))
        n = int(np.prod([x.shape[a] for a in axes]))
        return np.ascontiguousarray(moved).reshape(-1, n), moved.shape, axes

    def _back(self, rows, moved_shape, axes):
        import numpy as np

        y = rows.reshape(moved_shape)
        nd = len(moved_shape)
        return np.ascontiguousarray(np.moveaxis(y, list(range(nd - len(axes), nd)), axes))

    def forward(self, w, x, training, rng):
        from ..kernels import activations

        z, moved_shape, axes = self._rows(x)
        y = empty("out", z.shape, z.dtype)
        activations.softmax(False, z, y)
        return self._back(y, moved_shape, axes), (z, y, moved_shape, axes)

    def backward(self, w, g, saved, dy, need_dx=True):
        from ..kernels import activations

        z, y, moved_shape, axes = saved
        dy2, _, _ = self._rows(dy.astype(z.dtype, copy=False))
        dz = empty("dx", z.shape, z.dtype)
        activations.softmax_backward(False, z, y, dy2, dz)
        return self._back(dz, moved_shape, axes)
