"""Dense, Embedding and Dropout: the layers every model starts from."""

from __future__ import annotations

from typing import Any, Literal

from ..spec.types import Bool, PositiveInt, Rate, StrictInt
from ..workspace import empty
from .activations import ActivationName
from .base import LayerSpec, ShapeError, WeightSpec, fmt_shape, prod, register
from .initializers import Initializer

# kernels.dense, imported by Dense's first pass: `specc validate` and `summary` load this module without
# Numba or NumPy. (Not a `from ..kernels import` in forward: that runs importlib's Python code at every
# call; `import numpy` of a loaded module is a dictionary lookup.)
_dense: Any = None


def _dense_kernels():
    global _dense
    if _dense is None:
        from ..kernels import dense as loaded

        _dense = loaded
    return _dense


@register
class Dense(LayerSpec):
    """y = activation(x @ kernel + bias) on the last axis; kernel (in, units), bias (units,)."""

    type: Literal["Dense"] = "Dense"
    units: PositiveInt
    activation: ActivationName = "linear"
    use_bias: Bool = True
    kernel_initializer: Initializer = "glorot_uniform"
    bias_initializer: Initializer = "zeros"

    def _in(self, s):
        if s[-1] is None:
            raise ShapeError(f"the last axis of its input {fmt_shape(s)} must be known to size the kernel")
        return s[-1]

    def compute_output_shape(self, s):
        self._in(s)
        return s[:-1] + (self.units,)

    def weight_specs(self, s):
        w = [WeightSpec("kernel", (self._in(s), self.units), self.kernel_initializer)]
        if self.use_bias:
            w.append(WeightSpec("bias", (self.units,), self.bias_initializer))
        return w

    def macs(self, s, out):
        return (prod(s[:-1]) or 1) * s[-1] * self.units

    def output_activation(self):
        return self.activation

    def forward(self, w, x, training, rng):
        import numpy as np

        dense = _dense or _dense_kernels()
        x2 = np.ascontiguousarray(x.reshape(-1, x.shape[-1]))  # (rows, in)
        out = empty("out", (x2.shape[0], self.units), x.dtype)
        bias = w[1] if self.use_bias else w[0][0]
        dense.forward(x2, w[0], bias, self.use_bias, out)
        return out.reshape(x.shape[:-1] + (self.units,)), (x2, x.shape)

    def backward(self, w, g, saved, dy, need_dx=True):
        import numpy as np

        dense = _dense or _dense_kernels()
        x2, in_shape = saved
        dz = np.ascontiguousarray(dy.reshape(-1, self.units))
        dx = empty("dx", x2.shape, x2.dtype) if need_dx else x2[:0]  # the first layer's dx: a third of backward
        dbias = g[1] if self.use_bias else np.empty(self.units, dy.dtype)
        dense.backward(x2, w[0], dz, self.use_bias, need_dx, g[0], dbias, dx)
        return dx.reshape(in_shape) if need_dx else None


@register
class Embedding(LayerSpec):
    """Integer ids (..., ) -> vectors (..., output_dim); embeddings (input_dim, output_dim)."""

    type: Literal["Embedding"] = "Embedding"
    input_dim: PositiveInt
    output_dim: PositiveInt
    embeddings_initializer: Initializer = "random_uniform"

    def compute_output_shape(self, s):
        return s + (self.output_dim,)

    def weight_specs(self, s):
        return [WeightSpec("embeddings", (self.input_dim, self.output_dim), self.embeddings_initializer)]

    def forward(self, w, x, training, rng):
        """Ids may arrive as floats (the engine feeds the model's dtype) or integers; each must be a whole
        number in [0, input_dim - 1], else a ValueError names the range (Keras would truncate fractions)."""
        import numpy as np

        from ..kernels import embedding

        x = np.asarray(x)
        flat = x.reshape(-1)
        if flat.dtype.kind in "iu":
            bad = (flat < 0) | (flat >= self.input_dim)
        else:
            bad = ~((flat >= 0) & (flat < self.input_dim) & (np.trunc(flat) == flat))  # NaN is bad too
        if bad.any():
            where = int(np.argmax(bad))
            who = f"{self.type} {self.name!r}" if self.name else self.type
            raise ValueError(f"{who}: ids must be whole numbers in [0, {self.input_dim - 1}] (input_dim="
                             f"{self.input_dim}); got {flat[where].item()!r} at flat position {where} of an input "
                             f"of shape {x.shape}")
        ids = flat.astype(np.int64)
        table = w[0]
        out = empty("out", (ids.size, self.output_dim), table.dtype)
        embedding.gather(ids, table, out)
        return out.reshape(x.shape + (self.output_dim,)), (ids, x.shape, x.dtype)

    def backward(self, w, g, saved, dy, need_dx=True):
        """Scatter-adds dy into the embeddings gradient; ids have no gradient, so dx is zeros."""
        import numpy as np

        from ..kernels import embedding

        ids, shape, dtype = saved
        dy2 = np.ascontiguousarray(dy.reshape(-1, self.output_dim), g[0].dtype)
        embedding.scatter_add(ids, dy2, g[0])
        return np.zeros(shape, dtype if dtype.kind == "f" else dy.dtype)


@register
class Dropout(LayerSpec):
    """Zeroes a `rate` fraction of inputs in training and scales the rest by 1/(1-rate)."""

    type: Literal["Dropout"] = "Dropout"
    rate: Rate
    noise_shape: list[PositiveInt | None] | None = None
    seed: StrictInt | None = None

    def compute_output_shape(self, s):
        if self.noise_shape is not None and len(self.noise_shape) != len(s) + 1:
            raise ShapeError(f"noise_shape {self.noise_shape} must have {len(s) + 1} entries (batch axis first) "
                             f"for input {fmt_shape(s)}")
        return s

    def forward(self, w, x, training, rng):
        if not training or self.rate == 0:
            return x, None
        shape = x.shape
        if self.noise_shape is not None:  # None entries take the input's size; 1s broadcast the mask
            shape = tuple(x.shape[i] if d is None else d for i, d in enumerate(self.noise_shape))
        keep = (rng.random(shape) >= self.rate).astype(x.dtype) / x.dtype.type(1 - self.rate)
        return x * keep, keep

    def backward(self, w, g, keep, dy, need_dx=True):
        return dy if keep is None else dy * keep
