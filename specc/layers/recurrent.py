"""SimpleRNN, LSTM and GRU over (timesteps, features) inputs, with Keras 3's weight layouts:
kernel (features, gates*units), recurrent_kernel (units, gates*units), bias (gates*units) — LSTM gates
ordered i, f, c, o; GRU gates z, r, h with bias (2, 3*units) when reset_after."""

from __future__ import annotations

from typing import ClassVar, Literal

from ..spec.types import Bool, PositiveInt, Rate
from .activations import ActivationName
from .base import LayerSpec, ShapeError, WeightSpec, fmt_shape, register
from .initializers import Initializer


class _RNN(LayerSpec):
    gates: ClassVar[int] = 1
    units: PositiveInt
    activation: ActivationName = "tanh"
    use_bias: Bool = True
    kernel_initializer: Initializer = "glorot_uniform"
    recurrent_initializer: Initializer = "orthogonal"
    bias_initializer: Initializer = "zeros"
    dropout: Rate = 0.0
    recurrent_dropout: Rate = 0.0
    return_sequences: Bool = False
    go_backwards: Bool = False

    def _features(self, s):
        if len(s) != 2:
            raise ShapeError(f"{self.type} expects input of rank 2 (timesteps, features) (without the batch "
                             f"axis), got {fmt_shape(s)}")
        if s[1] is None:
            raise ShapeError(f"the features axis of its input {fmt_shape(s)} must be known")
        return s[1]

    def compute_output_shape(self, s):
        self._features(s)
        return (s[0], self.units) if self.return_sequences else (self.units,)

    def _bias_shape(self):
        return (self.gates * self.units,)

    def weight_specs(self, s):
        g = self.gates * self.units
        w = [WeightSpec("kernel", (self._features(s), g), self.kernel_initializer),
             WeightSpec("recurrent_kernel", (self.units, g), self.recurrent_initializer)]
        if self.use_bias:
            w.append(WeightSpec("bias", self._bias_shape(), self.bias_initializer))
        return w

    def macs(self, s, out):
        return (s[0] or 1) * self.gates * self.units * (s[1] + self.units)


@register
class SimpleRNN(_RNN):
    type: Literal["SimpleRNN"] = "SimpleRNN"


@register
class LSTM(_RNN):
    gates: ClassVar[int] = 4
    type: Literal["LSTM"] = "LSTM"
    recurrent_activation: ActivationName = "sigmoid"
    unit_forget_bias: Bool = True


@register
class GRU(_RNN):
    gates: ClassVar[int] = 3
    type: Literal["GRU"] = "GRU"
    recurrent_activation: ActivationName = "sigmoid"
    reset_after: Bool = True

    def _bias_shape(self):
        return (2, 3 * self.units) if self.reset_after else (3 * self.units,)
