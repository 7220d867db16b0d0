"""SimpleRNN, LSTM and GRU over (timesteps, features) inputs, with Keras 3's weight layouts:
kernel (features, gates*units), recurrent_kernel (units, gates*units), bias (gates*units) — LSTM gates
ordered i, f, c, o; GRU gates z, r, h with bias (2, 3*units) when reset_after."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import field_validator

from ..spec.types import Bool, PositiveInt, Rate
from ..workspace import empty
from .activations import ActivationName
from .base import LayerSpec, ShapeError, WeightSpec, fmt_shape, register, require_rank
from .initializers import Initializer


class _RNN(LayerSpec):
    gates: ClassVar[int] = 1
    # Whether kernel, recurrent_kernel and bias all take d(gate pre-activations) as their gradient's right
    # operand (SimpleRNN, LSTM; not GRU, whose recurrent side has a gradient of its own).
    joint_gradients: ClassVar[bool] = False
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

    @field_validator("activation", "recurrent_activation", check_fields=False)
    @classmethod
    def _elementwise_only(cls, v):
        # A cell applies its activations elementwise; softmax over the units is not a cell activation.
        if v in ("softmax", "log_softmax"):
            raise ValueError(f"{v} works across the units and cannot be a recurrent cell's activation; use an "
                             f"elementwise one such as tanh or sigmoid")
        return v

    def _features(self, s):
        require_rank(self.type, s, ("timesteps", "features"))
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

    # --- runtime -------------------------------------------------------------------------------------
    # Time-major and in processing order inside (the input is flipped for go_backwards, as Keras does):
    # the input projection of every timestep is one GEMM (the Dense kernel) before the time loop, and
    # d(kernel), d(recurrent_kernel), d(bias), d(x) are one GEMM each after the backward loop; the
    # loops themselves live in specc.kernels.recurrent.

    def _codes(self):
        from ..kernels.activations import CODE

        names = [self.activation, getattr(self, "recurrent_activation", "linear")]
        for name in names:
            if name in ("softmax", "log_softmax"):
                raise NotImplementedError(f"{self.type} does not run with activation {name!r} (it normalises "
                                          f"across units, not elementwise)")
        return CODE[names[0]], CODE[names[1]]

    def _per_gate_masks(self) -> bool:
        # Keras 3's LSTM/GRU cells switch to "implementation 1" when recurrent_dropout != 0: one dropout
        # mask per gate (for the inputs as for the state) instead of one shared mask.
        return self.gates > 1 and self.recurrent_dropout > 0

    def _input_bias(self, w):
        return w[2] if self.use_bias else None

    def _project(self, w, x, training, rng):
        """x (N, T, F) -> time-major processing-order input xt (T, N, F), dropout masks, the projection
        xp (T, N, G*u) = dropout(xt) @ kernel + input bias, and xh, the rows of the joint weight gradient
        (below), or None.

        Without dropout, a layer with `joint_gradients` keeps its input and states side by side:
        xh (T, N, F+u+1) holds [x_s | h_{s-1} | 1] in row s (the ones column only with a bias; the states
        are copied in after the recurrence, _keep_states), so that d[kernel; recurrent_kernel; bias] =
        xh.T @ dz is one product over all T*N rows. The products of the forward pass read contiguous
        copies of x and h: as their left operands, views with xh's row stride are slower than copying."""
        import numpy as np

        from ..kernels import dense

        n, t, f = x.shape
        gu = self.gates * self.units
        joint = self.joint_gradients and not (training and (self.dropout > 0 or self.recurrent_dropout > 0))
        xt = empty("xt", (t, n, f), x.dtype)
        np.copyto(xt, (x[:, ::-1] if self.go_backwards else x).transpose(1, 0, 2))
        xh = None
        if joint:
            xh = empty("xh", (t, n, f + self.units + self.use_bias), x.dtype)
            xh[:, :, :f] = xt
            if self.use_bias:
                xh[:, :, -1] = 1
        xmask = rmask = None
        if training and self.dropout > 0:
            count = self.gates if self._per_gate_masks() else 1
            xmask = _keep(rng, (count, n, f), self.dropout, x.dtype)
        if training and self.recurrent_dropout > 0:
            rmask = _keep(rng, (self.gates, n, self.units), self.recurrent_dropout, x.dtype)
        kernel, bias = w[0], self._input_bias(w)
        use_bias = bias is not None
        bias = bias if use_bias else kernel[0]
        xp = empty("xp", (t * n, gu), x.dtype)
        if xmask is None:
            xins = [xt.reshape(t * n, f)]
        else:
            xins = [(xt * m).reshape(t * n, f) for m in xmask]
        if len(xins) == 1:
            dense.forward(xins[0], kernel, bias, use_bias, xp)
        else:
            u = self.units
            out = empty("out", (t * n, u), x.dtype)
            for k, xi in enumerate(xins):
                cols = slice(k * u, (k + 1) * u)
                dense.forward(xi, np.ascontiguousarray(kernel[:, cols]), bias[cols], use_bias, out)
                xp[:, cols] = out
        return xp.reshape(t, n, gu), xins, xmask, rmask, xh

    def _keep_states(self, xh, hs):
        """The states entering each step, hs[:-1] (T, N, u), into their columns of xh (_project), if any."""
        import numpy as np

        if xh is not None:
            f = xh.shape[2] - self.units - self.use_bias
            np.copyto(xh[:, :, f:f + self.units], hs[:-1])

    def _joint_backward(self, w, g, dz, xh, need_dx):
        """All weight gradients from one product xh.T @ dz (_project), and with need_dx d(x) (N, T, F)."""

        from ..kernels import recurrent

        t, n, gu = dz.shape
        f, u = w[0].shape[0], self.units
        dw = empty("dw", (xh.shape[2], gu), dz.dtype)
        dxt = empty("dxt", (t * n, f), dz.dtype)
        recurrent.joint_gradients(xh.reshape(t * n, -1), w[0], dz.reshape(t * n, gu), need_dx, dw, dxt)
        g[0][...] = dw[:f]
        g[1][...] = dw[f:f + u]
        if self.use_bias:
            g[2][...] = dw[f + u]
        if not need_dx:
            return None
        return self._input_order(dxt.reshape(t, n, f))

    def _input_order(self, dxt):
        """d(x) (N, T, F) in the input's order from the time-major, processing-order dxt (T, N, F)."""
        import numpy as np

        t, n, f = dxt.shape
        dx = dxt.transpose(1, 0, 2)
        out = empty("dx", (n, t, f), dxt.dtype)
        np.copyto(out, dx[:, ::-1] if self.go_backwards else dx)
        return out

    def _split(self, r, rmask):
        """The recurrent kernel per gate (G, u, u), contiguous, when the recurrent matmul runs per gate."""
        import numpy as np

        if rmask is None:
            return np.empty((1, 1, 1), r.dtype), np.empty((1, 1, 1), r.dtype), False
        u = self.units
        return np.ascontiguousarray(r.reshape(u, self.gates, u).transpose(1, 0, 2)), rmask, True

    def _state_groups(self, hs, rmask, columns=None):
        """The left operands of the recurrent kernel's gradient: the states entering each step (masked per
        gate under recurrent dropout), for the first `columns` columns (default all)."""
        columns = self.gates * self.units if columns is None else columns
        hprev = hs[:-1]
        if rmask is None:
            return [(hprev, 0, columns)]
        u = self.units
        return [(hprev * rmask[k], k * u, (k + 1) * u) for k in range(columns // u)]

    def _output(self, hs):
        import numpy as np

        if self.return_sequences:
            return np.ascontiguousarray(hs[1:].transpose(1, 0, 2))
        return hs[-1].copy()

    def _dy(self, dy):
        import numpy as np

        if self.return_sequences:
            return np.ascontiguousarray(dy.transpose(1, 0, 2))
        return np.ascontiguousarray(dy).reshape(1, *dy.shape)

    def _input_backward(self, w, g, dz, xins, xmask, dbias, need_dx):
        """d(kernel) into g[0], d(input bias) into dbias (or nowhere), and with need_dx d(x) (N, T, F) from dz
        (T, N, G*u), else None (a model's first layer in training: its product is a third of the layer's
        weight-gradient work)."""
        import numpy as np

        from ..kernels import recurrent

        t, n, gu = dz.shape
        f = w[0].shape[0]
        dz2 = dz.reshape(t * n, gu)
        use_bias = dbias is not None
        dbias = dbias if use_bias else np.empty(gu, dz.dtype)
        dxt = empty("dxt", (t * n, f), dz.dtype)
        if len(xins) == 1:
            recurrent.linear_gradients(xins[0], w[0], dz2, use_bias, need_dx, g[0], dbias, dxt)
            if not need_dx:
                return None
            if xmask is not None:
                dxt = (dxt.reshape(t, n, f) * xmask[0]).reshape(t * n, f)
        else:
            u = self.units
            dxt[...] = 0
            dk = empty("dk", (f, u), dz.dtype)
            dxk = empty("dxk", (t * n, f), dz.dtype)
            for k, xi in enumerate(xins):
                cols = slice(k * u, (k + 1) * u)
                recurrent.linear_gradients(xi, np.ascontiguousarray(w[0][:, cols]), np.ascontiguousarray(dz2[:, cols]),
                               use_bias, need_dx, dk, dbias[cols], dxk)
                g[0][:, cols] = dk
                if need_dx:
                    dxt += (dxk.reshape(t, n, f) * xmask[k]).reshape(t * n, f)
            if not need_dx:
                return None
        return self._input_order(dxt.reshape(t, n, f))



@register
class SimpleRNN(_RNN):
    joint_gradients: ClassVar[bool] = True
    type: Literal["SimpleRNN"] = "SimpleRNN"

    def forward(self, w, x, training, rng):

        from ..kernels import recurrent

        act, _ = self._codes()
        xp, xins, xmask, rmask, xh = self._project(w, x, training, rng)
        t, n, u = xp.shape
        rg, rm, use_rmask = self._split(w[1], rmask)
        hs = empty("hs", (t + 1, n, u), x.dtype)
        pre = empty("pre", (t, n, u), x.dtype)
        recurrent.simple_forward(xp, w[1], rg, rm, use_rmask, act, hs, pre)
        self._keep_states(xh, hs)
        return self._output(hs), (xins, xmask, rmask, rg, xh, hs, pre)

    def backward(self, w, g, saved, dy, need_dx=True):

        from ..kernels import recurrent

        xins, xmask, rmask, rg, xh, hs, pre = saved
        act, _ = self._codes()
        rm = rg if rmask is None else rmask
        dz = empty("dz", pre.shape, pre.dtype)
        recurrent.simple_backward(w[1], rg, rm, rmask is not None, act, hs, pre, self._dy(dy),
                                  self.return_sequences, dz)
        if xh is not None:
            return self._joint_backward(w, g, dz, xh, need_dx)
        _linear_grads(self._state_groups(hs, rmask), dz, g[1], None)
        return self._input_backward(w, g, dz, xins, xmask, g[2] if self.use_bias else None, need_dx)


@register
class LSTM(_RNN):
    gates: ClassVar[int] = 4
    joint_gradients: ClassVar[bool] = True
    type: Literal["LSTM"] = "LSTM"
    recurrent_activation: ActivationName = "sigmoid"
    unit_forget_bias: Bool = True

    def initial_value(self, spec, rng):
        # Keras: bias = [bias_initializer(u), ones(u), bias_initializer(2u)] — ones on the forget gate.
        value = super().initial_value(spec, rng)
        if spec.name == "bias" and self.unit_forget_bias:
            value = value.copy()
            value[self.units: 2 * self.units] = 1.0
        return value

    def forward(self, w, x, training, rng):

        from ..kernels import recurrent

        act, ract = self._codes()
        xp, xins, xmask, rmask, xh = self._project(w, x, training, rng)
        t, n, gu = xp.shape
        u = self.units
        rg, rm, use_rmask = self._split(w[1], rmask)
        hs = empty("hs", (t + 1, n, u), x.dtype)
        cs = empty("cs", (t + 1, n, u), x.dtype)
        acs = empty("acs", (t, n, u), x.dtype)
        pre = empty("pre", (t, n, gu), x.dtype)
        # The gates overwrite the projection they are computed from (each value is read before its own
        # slot is written, and backward does not read the projection): no second (T, N, 4u) stream.
        gates = xp
        _over_batch(n, lambda b, serial: recurrent.lstm_forward(
            xp[:, b], w[1], rg, _rows(rm, b, use_rmask), use_rmask, act, ract, hs[:, b], cs[:, b], acs[:, b],
            pre[:, b], gates[:, b], serial))
        self._keep_states(xh, hs)
        return self._output(hs), (xins, xmask, rmask, rg, xh, hs, cs, acs, pre, gates)

    def backward(self, w, g, saved, dy, need_dx=True):

        from ..kernels import recurrent

        xins, xmask, rmask, rg, xh, hs, cs, acs, pre, gates = saved
        act, ract = self._codes()
        rm = rg if rmask is None else rmask
        dz = empty("dz", pre.shape, pre.dtype)
        dyt = self._dy(dy)
        use_rmask = rmask is not None
        _over_batch(pre.shape[1], lambda b, serial: recurrent.lstm_backward(
            w[1], rg, _rows(rm, b, use_rmask), use_rmask, act, ract, cs[:, b], acs[:, b], pre[:, b], gates[:, b],
            dyt[:, b], self.return_sequences, dz[:, b], serial))
        if xh is not None:
            return self._joint_backward(w, g, dz, xh, need_dx)
        _linear_grads(self._state_groups(hs, rmask), dz, g[1], None)
        return self._input_backward(w, g, dz, xins, xmask, g[2] if self.use_bias else None, need_dx)


@register
class GRU(_RNN):
    gates: ClassVar[int] = 3
    type: Literal["GRU"] = "GRU"
    recurrent_activation: ActivationName = "sigmoid"
    reset_after: Bool = True

    def _bias_shape(self):
        return (2, 3 * self.units) if self.reset_after else (3 * self.units,)

    def _input_bias(self, w):
        if not self.use_bias:
            return None
        return w[2][0] if self.reset_after else w[2]

    def forward(self, w, x, training, rng):
        import numpy as np

        from ..kernels import recurrent

        act, ract = self._codes()
        xp, xins, xmask, rmask, _ = self._project(w, x, training, rng)
        t, n, gu = xp.shape
        u = self.units
        r = w[1]
        rg = np.ascontiguousarray(r.reshape(u, 3, u).transpose(1, 0, 2))  # per gate; Rg[2] is the candidate's
        r2 = empty("r2", (1, 1), x.dtype) if self.reset_after else np.ascontiguousarray(r[:, : 2 * u])
        use_rb = self.use_bias and self.reset_after
        rb = w[2][1] if use_rb else np.empty(1, x.dtype)
        rm = empty("rm", (1, 1, 1), x.dtype) if rmask is None else rmask
        hs = empty("hs", (t + 1, n, u), x.dtype)
        pre = empty("pre", (t, n, gu), x.dtype)
        gates = xp  # in place of the projection, as LSTM's
        aux = empty("aux", (t, n, u), x.dtype)
        use_rmask = rmask is not None
        _over_batch(n, lambda b, serial: recurrent.gru_forward(
            xp[:, b], r, r2, rg, rb, use_rb, _rows(rm, b, use_rmask), use_rmask, self.reset_after, act, ract,
            hs[:, b], pre[:, b], gates[:, b], aux[:, b], serial))
        return self._output(hs), (xins, xmask, rmask, rm, rg, r2, hs, pre, gates, aux)

    def backward(self, w, g, saved, dy, need_dx=True):
        import numpy as np

        from ..kernels import recurrent

        xins, xmask, rmask, rm, rg, r2, hs, pre, gates, aux = saved
        act, ract = self._codes()
        u = self.units
        dz = empty("dz", pre.shape, pre.dtype)
        da = empty("da", pre.shape, pre.dtype) if self.reset_after else np.empty((1, 1, 1), pre.dtype)
        dyt = self._dy(dy)
        use_rmask = rmask is not None
        _over_batch(pre.shape[1], lambda b, serial: recurrent.gru_backward(
            w[1], r2, rg, _rows(rm, b, use_rmask), use_rmask, self.reset_after, act, ract, hs[:, b], pre[:, b],
            gates[:, b], aux[:, b], dyt[:, b], self.return_sequences, dz[:, b], da[:, b] if self.reset_after else da,
            serial))
        if self.reset_after:
            _linear_grads(self._state_groups(hs, rmask), da, g[1], g[2][1] if self.use_bias else None)
        else:  # the candidate's recurrent kernel multiplies q = r * h_prev, kept in aux
            groups = self._state_groups(hs, rmask, 2 * u) + [(aux, 2 * u, 3 * u)]
            _linear_grads(groups, dz, g[1], None)
        dbias = None if not self.use_bias else g[2][0] if self.reset_after else g[2]
        return self._input_backward(w, g, dz, xins, xmask, dbias, need_dx)


MIN_SHARE_ROWS = 8  # samples per thread below which the recurrence stays on one thread (threaded products)


def _over_batch(n, run):
    """run(rows, serial) over the batch's n samples: with several threads, each runs the whole recurrence of
    an equal share of the samples (a slice of the time-major arrays), its per-step products on its own
    thread (serial): no hand-over between threads at every timestep. With one share, run(all rows, False)
    and the products take the threads. Each sample's arithmetic is the same either way."""
    from ..kernels.conv import in_threads, one_blas_thread, share_count

    shares = share_count(n // MIN_SHARE_ROWS)
    if shares <= 1:
        run(slice(0, n), False)
        return
    with one_blas_thread():
        in_threads(shares, lambda share, t0, t1: run(slice(n * t0 // shares, n * t1 // shares), True))


def _rows(rmask, rows, use_rmask):
    """The recurrent dropout masks (G, N, u) of these samples; a dummy when there are none."""
    return rmask[:, rows] if use_rmask else rmask


def _keep(rng, shape, rate, dtype):
    """Keras's dropout mask: keep with probability 1 - rate, scaled by 1 / (1 - rate)."""
    return (rng.random(shape) >= rate).astype(dtype) / dtype.type(1 - rate)


def _linear_grads(groups, d, dw, db):
    """Recurrent-side weight gradients dw (u, G*u) (and db (G*u,) or None) from d (T, N, G*u):
    groups are (left (T, N, u), first column, last column); each column block gets left.T @ d."""
    import numpy as np

    from ..kernels import recurrent

    t, n, gu = d.shape
    d2 = d.reshape(t * n, gu)
    use_bias = db is not None
    dummy_x = empty("dummy_x", (1, 1), d.dtype)
    for left, lo, hi in groups:
        left2 = np.ascontiguousarray(left).reshape(t * n, -1)
        if lo == 0 and hi == gu:
            recurrent.linear_gradients(left2, dw, d2, use_bias, False, dw, db if use_bias else np.empty(gu, d.dtype), dummy_x)
            continue
        dk = empty("recurrent dk", (left2.shape[1], hi - lo), d.dtype)
        dbk = empty("recurrent dbk", hi - lo, d.dtype)
        recurrent.linear_gradients(left2, dk, np.ascontiguousarray(d2[:, lo:hi]), use_bias, False, dk, dbk, dummy_x)
        dw[:, lo:hi] = dk
        if use_bias:
            db[lo:hi] = dbk
