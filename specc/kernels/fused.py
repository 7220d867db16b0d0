"""One jitted call per training step for a chain of Dense layers (an MLP): forward, loss, backward.

For a small model the arithmetic of a step takes microseconds and the Python around each layer call is
most of the step (as for the benchmark's 8-16-16-1 MLP). Here the
whole chain runs inside Numba, reading weights from and writing gradients into the engine's flat buffers
at the offsets the Python side computed, and keeping every intermediate in one preallocated workspace,
so a step allocates nothing.

`layout` (layers, 5) int64, one row per Dense layer in order:
    [kernel offset, bias offset (-1: no bias), units in, units out, activation code]
`plan(layout, batch)` (layers + 1, 7) adds to each row where the layer's z (batch, out) and a (batch, out;
    a is z for a linear activation, and z is a for ReLU, which the product applies itself) start in the
    workspace `work`; its last row holds the starts of two (batch, widest) scratch buffers for backward
    and the workspace size. One plan per batch size.
`loss` (9,) float64, the loss as numbers (see specc/train/fused.py, which builds it):
    [kind, elementwise code, from_logits, lo, hi, delta, row scale, hinge_binary, reads logits]
    kind: 0 elementwise (targets), 1 categorical (targets), 2 sparse categorical (labels)
With "reads logits" (softmax + cross-entropy or sigmoid + binary cross-entropy, fused) the loss reads the
last layer's logits z and its gradient is d/dz; the output a is still computed, for the metrics.
"""

from __future__ import annotations

import numba
import numpy as np

from . import JIT
from . import activations as A
from . import dense as D
from . import losses as L
from .gemm import affine

ELEMENTWISE, CATEGORICAL, SPARSE = 0, 1, 2
# Columns of a plan row.
KERNEL, BIAS, UNITS_IN, UNITS_OUT, ACTIVATION, Z_AT, A_AT = range(7)


@numba.njit(**JIT)
def plan(layout, batch):
    """layout (layers, 5) -> plan (layers + 1, 7) for `batch` rows (see the module docstring)."""
    n = layout.shape[0]
    out = np.zeros((n + 1, 7), np.int64)
    off = 0
    widest = layout[0, UNITS_IN]
    for k in range(n):
        for j in range(5):  # (element by element, as norm._tiled)
            out[k, j] = layout[k, j]
        units = layout[k, UNITS_OUT]
        widest = max(widest, units)
        out[k, Z_AT] = off
        out[k, A_AT] = off
        off += batch * units
        if layout[k, ACTIVATION] not in (A.LINEAR, A.RELU):  # ReLU: forward writes a only (z > 0 iff a > 0)
            out[k, A_AT] = off
            off += batch * units
    out[n, 0] = off
    out[n, 1] = off + batch * widest
    out[n, 2] = off + 2 * batch * widest
    return out


@numba.njit(**JIT)
def _view(buf, at, rows, cols):
    return buf[at: at + rows * cols].reshape(rows, cols)


@numba.njit(**JIT)
def forward(x, params, plan, work):
    """Runs the chain on x (batch, in) with the plan for this batch size; returns the output
    (batch, out), a view into `work`."""
    batch = x.shape[0]
    h = x
    for k in range(plan.shape[0] - 1):
        w_at, b_at, n_in, n_out, act, z_at, a_at = plan[k]
        z = _view(work, z_at, batch, n_out)
        bias = params[b_at: b_at + n_out] if b_at >= 0 else params[:0]
        if act == A.RELU:  # bias and ReLU in the product's epilogue; z is a, which backward reads as z
            D.forward_relu(h, _view(params, w_at, n_in, n_out), bias, b_at >= 0, z)
            h = z
            continue
        D.forward(h, _view(params, w_at, n_in, n_out), bias, b_at >= 0, z)
        h = z
        if act != A.LINEAR:
            h = _view(work, a_at, batch, n_out)
            A.forward(act, z, h)
    return h


@numba.njit(**JIT)
def forward_rows(x, params, plan, work, i0, i1, out):
    """Rows i0:i1 of `forward`, on the calling thread, the output into out (batch, units out) when it has
    the batch's rows (else into `work`, where `forward` leaves it): every layer of the chain is row by
    row, so a block of rows goes through all of them while its activations are still in this core's L2."""
    batch = x.shape[0]
    last = plan.shape[0] - 2
    into = out.shape[0] == batch
    h = x[i0:i1]
    for k in range(last + 1):
        w_at, b_at, n_in, n_out, act, z_at, a_at = plan[k]
        linear = act == A.LINEAR or act == A.RELU  # the product writes the layer's output
        z = out[i0:i1] if into and k == last and linear else _view(work, z_at, batch, n_out)[i0:i1]
        bias = params[b_at: b_at + n_out] if b_at >= 0 else params[:0]
        affine(h, _view(params, w_at, n_in, n_out), bias, b_at >= 0, act == A.RELU, z, False)
        h = z
        if not linear:
            h = out[i0:i1] if into and k == last else _view(work, a_at, batch, n_out)[i0:i1]
            A.forward(act, z, h)


@numba.njit(**JIT)
def train_step(x, labels, targets, weights, params, grads, plan, loss, work):
    """Forward, loss and backward of one batch; returns the loss value (float64).

    x (batch, in); labels (batch,) int64 class ids for the sparse loss, else empty; targets (batch, out)
    for the other losses, else empty; weights (batch,) float64 sample weights (ones when none). Fills the
    gradient of every layer into `grads` (same offsets as `params`). The model's output stays in the last
    layer's a in `work`, for the metrics.
    """
    batch = x.shape[0]
    last = plan.shape[0] - 2
    n_out = plan[last, UNITS_OUT]
    scratch_1, scratch_2 = plan[last + 1, 0], plan[last + 1, 1]
    from_logits = loss[2] != 0.0
    reads_logits = loss[8] != 0.0
    forward(x, params, plan, work)

    # The loss gradient w.r.t. the last layer's z (fused) or its output a, into scratch 1.
    kind = int(loss[0])
    pred = _view(work, plan[last, Z_AT] if reads_logits else plan[last, A_AT], batch, n_out)
    g = _view(work, scratch_1, batch, n_out)
    inv = 1.0 / max(batch, 1)
    lo, hi = loss[3], loss[4]
    if kind == SPARSE:
        value = L.sparse_categorical(labels, pred, weights, inv, from_logits, lo, hi, g)
    elif kind == CATEGORICAL:
        value = L.categorical(targets, pred, weights, inv, from_logits, lo, hi, g)
    else:
        value = L.elementwise(int(loss[1]), targets, pred, weights, loss[6], inv, loss[5], lo, hi,
                              loss[7] != 0.0, g)

    # Backward: the current scratch holds d loss / d a of layer k (d/dz when fused); make it d/dz in
    # place, then the layer's weight gradients, then d/da of layer k-1 into the other scratch buffer.
    current, other = scratch_1, scratch_2
    for k in range(last, -1, -1):
        w_at, b_at, n_in, units, act, z_at, a_at = plan[k]
        dz = _view(work, current, batch, units)
        if act != A.LINEAR and not (k == last and reads_logits):
            A.backward(act, _view(work, z_at, batch, units), _view(work, a_at, batch, units), dz, dz)
        h = x if k == 0 else _view(work, plan[k - 1, A_AT], batch, n_in)
        dbias = grads[b_at: b_at + units] if b_at >= 0 else grads[:0]
        D.backward(h, _view(params, w_at, n_in, units), dz, b_at >= 0, k > 0, _view(grads, w_at, n_in, units),
                   dbias, _view(work, other, batch, n_in))
        current, other = other, current
    return value
