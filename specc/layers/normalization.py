"""BatchNormalization and LayerNormalization over the last axis (channels_last)."""

from __future__ import annotations

from typing import Literal

from ..spec.types import Bool, OpenFraction, PositiveFloat, StrictInt
from .base import LayerSpec, ShapeError, WeightSpec, fmt_shape, register
from .initializers import Initializer


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


@register
class LayerNormalization(LayerSpec):
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
