"""SimpleRNN, LSTM and GRU recurrences: the time loops, forward and backward (backprop through time).

The layer (specc.layers.recurrent) does the work that is one GEMM over all timesteps — the input
projection `x @ kernel + bias` before the loop, and d(kernel), d(recurrent_kernel), d(x) after the
backward loop — with the Dense kernels. What is left here is strictly sequential: per step one
(N, units) @ (units, gates*units) GEMM and the gate maths, and in backward one GEMM per step to carry
the gradient to the previous state.

Everything is time-major and in processing order (the layer flips the input for `go_backwards`):
    xp     (T, N, G*u)  input projection, bias included
    hs     (T+1, N, u)  states, hs[0] = 0 (Keras's zero initial state), hs[s+1] = h after step s
    pre    (T, N, G*u)  gate pre-activations;  gates (T, N, G*u) the same after their activation
    dz     (T, N, G*u)  d(loss)/d(pre-activation): rows of the kernel/bias/input gradients
so that every per-step slice `a[s]` is a contiguous (N, ...) matrix that BLAS takes as is.

Recurrent dropout (training only) multiplies the state by a mask before the recurrent matmul. When a
layer has one mask per gate (Keras's LSTM and GRU with recurrent_dropout, "implementation 1"),
`rmask` is (G, N, u) and `Rg` (G, u, u) holds the recurrent kernel split per gate (contiguous), and the
recurrent matmul runs per gate; otherwise `use_rmask` is False and `rmask`/`Rg` are dummies.
"""

from __future__ import annotations

import functools
import importlib
import math
import warnings

import numba
import numpy as np
from numba import types
from numba.extending import overload

from . import JIT, native
from .activations import (
    _ONE32,
    CODE,
    F32,
    _exp_parts32,
    _float64_from_bits,
    _scalar_derivative,
    _scalar_forward,
)
from .dense import column_sums
from .gemm import matmul, matmul_blas, matmul_serial

SIGMOID, TANH = CODE["sigmoid"], CODE["tanh"]

# The gate maths' Cody-Waite reduction below subtracts k * ln 2 in two parts; fastmath's reassociation
# would merge them back into one rounded constant (several float32 ulps of exp at large k). These loops
# are elementwise (no sums to reorder), so they vectorise without it: FMA contraction only.
GATE_JIT = dict(JIT, fastmath={"contract"})


# The gates' default activations are inlined here, branch-free and from one exp each: through the shared
# helpers they cost a call per element, and math.tanh (like math.expm1) is several times slower than
# math.exp. Both are within a few ulps of the exact values (tanh takes its Taylor series below 1/32,
# where 1 - exp(-2|x|) would cancel). Every other activation goes through the shared scalar helpers.
@numba.njit(inline="always", **GATE_JIT)
def _tanh_from(v, a, t):
    """tanh(v) from a = min(|v|, 20) (tanh(20) rounds to 1 in float64) and t = exp(-2a)."""
    a2 = a * a
    series = a * (1.0 + a2 * (-1.0 / 3.0 + a2 * (2.0 / 15.0 + a2 * (-17.0 / 315.0 + a2 * (62.0 / 2835.0)))))
    return math.copysign(series if a < 0.03125 else (1.0 - t) / (1.0 + t), v)


@numba.njit(inline="always", **GATE_JIT)
def _act(code, x):
    if code == TANH:
        v = float(x)
        a = min(abs(v), 20.0)
        return _tanh_from(v, a, math.exp(-2.0 * a))
    if code == SIGMOID:
        v = min(max(float(x), -700.0), 700.0)  # keeps exp finite
        return 1.0 / (1.0 + math.exp(-v))
    return _scalar_forward(code, x)


# The LSTM's default gates (sigmoid, tanh) in loops LLVM vectorises (_lstm_cells). math.exp is a libm call
# per value, which no loop around it vectorises, and the gate maths would then dominate a recurrent step.
# _exp is exp as arithmetic: 2^k from its bits times a degree-12 polynomial of the remainder, relative
# error below 1e-13 in float64 (fastmath lets LLVM merge the two-part ln 2 of the reduction; float32
# rounds at 6e-8).
_LOG2E, _LN2_HI, _LN2_LO = 1.4426950408889634, 6.93147180369123816490e-01, 1.90821492927058770002e-10


@numba.njit(inline="always", **GATE_JIT)
def _exp(x):
    """exp(x) for float64 x in [-708, 709] (clamped to it), without a call or a branch."""
    x = min(max(x, -708.0), 709.0)
    k = math.floor(x * _LOG2E + 0.5)
    r = (x - k * _LN2_HI) - k * _LN2_LO  # |r| <= ln(2) / 2: the series' next term is below 2e-16
    p = 1.0 + r * (1.0 + r * (1 / 2 + r * (1 / 6 + r * (1 / 24 + r * (1 / 120 + r * (1 / 720 + r * (
        1 / 5040 + r * (1 / 40320 + r * (1 / 362880 + r * (1 / 3628800 + r * (1 / 39916800 + r / 479001600)))))))))))
    return p * _float64_from_bits((np.int64(k) + 1023) << 52)


@numba.njit(inline="always", **GATE_JIT)
def _sigmoid_v(x):
    return 1.0 / (1.0 + _exp(-min(max(float(x), -700.0), 700.0)))


@numba.njit(inline="always", **GATE_JIT)
def _tanh_v(x):
    v = float(x)
    a = min(abs(v), 20.0)
    return _tanh_from(v, a, _exp(-2.0 * a))


# float32 models' gates in float32 arithmetic (twice the lanes of float64, and no conversions), to within a few
# float32 ulps of the exact values (tests/test_recurrent_gates.py), from activations._exp_parts32. tanh is
# -expm1(-2a) / (2 + expm1(-2a)), which keeps tanh's relative precision near 0 where (1 - t) / (1 + t)
# would cancel; sigmoid is 1 / (1 + e) or e / (1 + e) from e = exp(-|x|), exact in both tails.
_TWO32, _SIG_MAX32, _TANH_MAX32 = F32(2), F32(87.34), F32(9.5)


@numba.njit(inline="always", **GATE_JIT)
def _sigmoid32(x):
    v = F32(x)
    s, m = _exp_parts32(-min(abs(v), _SIG_MAX32))  # exp(-87.34) is just below float32's smallest normal number
    e = s + s * m
    return (_ONE32 if v >= 0 else e) / (_ONE32 + e)


@numba.njit(inline="always", **GATE_JIT)
def _tanh32(x):
    v = F32(x)
    s, m = _exp_parts32(F32(-2) * min(abs(v), _TANH_MAX32))  # tanh(9.5) rounds to 1 in float32
    em = s * m + (s - _ONE32)  # expm1(-2|x|), exact to its rounding: s - 1 is exact for these k
    return math.copysign(-em / (_TWO32 + em), v)


@numba.njit(**GATE_JIT)
def _lstm_cells32(a, x, gates, c_prev, c, ac, h, u):
    """_lstm_cells for float32, with the input projection x (4u,) added to a here, first: gates may be x
    itself, and a loop that reads x and writes gates would then fail LLVM's overlap check and run scalar."""
    for j in range(4 * u):
        a[j] += x[j]
    for j in range(2 * u):  # i, f
        gates[j] = _sigmoid32(a[j])
    for j in range(2 * u, 3 * u):  # g
        gates[j] = _tanh32(a[j])
    for j in range(3 * u, 4 * u):  # o
        gates[j] = _sigmoid32(a[j])
    for j in range(u):
        c[j] = gates[u + j] * c_prev[j] + gates[j] * gates[2 * u + j]
    for j in range(u):
        ac[j] = _tanh32(c[j])
    for j in range(u):
        h[j] = gates[3 * u + j] * ac[j]


@numba.njit(**GATE_JIT)
def _lstm_cell_grads32(dh, gates, c_prev, ac, dc, d, u):
    """_lstm_cell_grads for float32, in float32 (d's store is float32 either way)."""
    for j in range(u):
        o = gates[3 * u + j]
        d[3 * u + j] = dh[j] * ac[j] * (o * (_ONE32 - o))
    for j in range(u):
        dcell = dh[j] * gates[3 * u + j] * (_ONE32 - ac[j] * ac[j]) + dc[j]
        i = gates[j]
        f = gates[u + j]
        g = gates[2 * u + j]
        dc[j] = dcell * f
        d[j] = dcell * g * (i * (_ONE32 - i))
        d[u + j] = dcell * c_prev[j] * (f * (_ONE32 - f))
        d[2 * u + j] = dcell * i * (_ONE32 - g * g)


@numba.njit(**GATE_JIT)
def _lstm_cells(a, gates, c_prev, c, ac, h, u):
    """One sample's LSTM step with the default activations, from its gate pre-activations a (4u,): gates,
    the cell c, ac = tanh(c) and h, each in a loop of its own. One loop writing them all compiles to a
    vector version as well, but runs at the speed of its scalar one."""
    for j in range(2 * u):  # i, f
        gates[j] = _sigmoid_v(a[j])
    for j in range(2 * u, 3 * u):  # g
        gates[j] = _tanh_v(a[j])
    for j in range(3 * u, 4 * u):  # o
        gates[j] = _sigmoid_v(a[j])
    for j in range(u):
        c[j] = gates[u + j] * c_prev[j] + gates[j] * gates[2 * u + j]
    for j in range(u):
        ac[j] = _tanh_v(c[j])  # of the stored (array-dtype) value, as the general loop
    for j in range(u):
        h[j] = gates[3 * u + j] * ac[j]


@functools.cache
def _recurrent_tiles():
    """native.recurrent_tiles where sgemm loaded (AVX-512 or AVX2 with FMA), else None (with one warning if
    it fails to load: the loops below then run instead)."""
    if native.sgemm is None:
        return None
    try:
        return importlib.import_module(f"{native.__name__}.recurrent_tiles")
    except Exception as error:  # pragma: no cover - depends on the installed Numba/llvmlite
        warnings.warn(f"specc: the LSTM's native tiles failed to load ({type(error).__name__}: {error}); using "
                      f"portable kernels", RuntimeWarning, stacklevel=2)
        return None


def _lstm_packed(w):
    """The recurrent kernel w (u, 4u) in the layout _lstm_tiles reads (native.recurrent_tiles.pack) where
    they run, else an empty array. Compiled (the overload below); from Python (eager mode) empty."""
    return np.empty((0, 0, 0, 0), w.dtype)


@overload(_lstm_packed, jit_options=JIT)
def _lstm_packed_njit(w):
    tiles = _recurrent_tiles()
    if tiles is None or w.dtype != types.float32:
        return lambda w: np.empty((0, 0, 0, 0), w.dtype)
    return lambda w: tiles.pack(w)


def _lstm_tiles(h, w, xp, cp, gates, c, ac, hout):
    """One float32 LSTM step with the default gates on register tiles, the recurrent product and the gate
    maths in one pass (native/recurrent_tiles.py), w the recurrent kernel from _lstm_packed: True when
    done, else False and nothing done.

    Compiled (the overload below): native.recurrent_tiles.lstm_step for float32 where it loaded, else
    False. From Python (eager mode) False."""
    return False


@overload(_lstm_tiles, jit_options=JIT)
def _lstm_tiles_njit(h, w, xp, cp, gates, c, ac, hout):
    tiles = _recurrent_tiles()
    if tiles is None or h.dtype != types.float32:
        return lambda h, w, xp, cp, gates, c, ac, hout: False
    return lambda h, w, xp, cp, gates, c, ac, hout: tiles.lstm_step(h, w, xp, cp, gates, c, ac, hout)


@numba.njit(inline="always", **GATE_JIT)
def _dact(code, x, y):
    if code == TANH:
        return 1 - y * y
    if code == SIGMOID:
        return y * (1 - y)
    return _scalar_derivative(code, x, y)


@numba.njit(inline="always", **GATE_JIT)
def _product(a, b, out, serial):
    """matmul, or on the calling thread only when the recurrence runs on a share of the batch in a thread of
    its own (serial)."""
    if serial:
        matmul_serial(a, b, out)
    else:
        matmul(a, b, out)


@numba.njit(**GATE_JIT)
def _rec_fwd(h, R, Rg, rmask, use_rmask, out, hm, tmp, serial):
    """out (N, G*u) = h @ R, or per gate k: out[:, k] = (h * rmask[k]) @ Rg[k]."""
    if not use_rmask:
        _product(h, R, out, serial)
        return
    n_rows, u = h.shape
    for k in range(out.shape[1] // u):
        for n in range(n_rows):
            for j in range(u):
                hm[n, j] = h[n, j] * rmask[k, n, j]
        _product(hm, Rg[k], tmp, serial)
        for n in range(n_rows):
            for j in range(u):
                out[n, k * u + j] = tmp[n, j]


@numba.njit(**GATE_JIT)
def _rec_back(da, RT, Rg, rmask, use_rmask, out, tmp, tmp2, serial):
    """out (N, u) = d(loss)/dh for out-of-`_rec_fwd` gradient da (N, G*u): da @ RT, with RT (G*u, u) the
    recurrent kernel transposed into a contiguous copy (a transposed view would be packed again at every
    step), or per gate sum_k (da[:, k] @ Rg[k].T) * rmask[k]. Overwrites `out`."""
    if not use_rmask:
        _product(da, RT, out, serial)
        return
    n_rows, u = out.shape
    for n in range(n_rows):
        for j in range(u):
            out[n, j] = 0
    for k in range(da.shape[1] // u):
        for n in range(n_rows):
            for j in range(u):
                tmp[n, j] = da[n, k * u + j]
        _product(tmp, Rg[k].T, tmp2, serial)
        for n in range(n_rows):
            for j in range(u):
                out[n, j] += tmp2[n, j] * rmask[k, n, j]


# --- SimpleRNN: h = act(xp + h_prev @ R) -------------------------------------------------------------


@numba.njit(**GATE_JIT)
def simple_forward(xp, R, Rg, rmask, use_rmask, act, hs, pre, serial=False):
    T, N, u = xp.shape
    hm = np.empty((N, u), xp.dtype)
    tmp = np.empty((N, u), xp.dtype)
    for n in range(N):
        for j in range(u):
            hs[0, n, j] = 0
    for s in range(T):
        a = pre[s]
        _rec_fwd(hs[s], R, Rg, rmask, use_rmask, a, hm, tmp, serial)
        for n in range(N):
            for j in range(u):
                v = a[n, j] + xp[s, n, j]
                a[n, j] = v
                hs[s + 1, n, j] = _act(act, v)


@numba.njit(**GATE_JIT)
def simple_backward(R, Rg, rmask, use_rmask, act, hs, pre, dy, seq, dz, serial=False):
    """dy: (T, N, u) when `seq` (return_sequences), else (1, N, u) for the last state only."""
    T, N, u = pre.shape
    dh = np.zeros((N, u), pre.dtype)
    tmp = np.empty((N, u), pre.dtype)
    tmp2 = np.empty((N, u), pre.dtype)
    RT = np.ascontiguousarray(R.T)
    for s in range(T - 1, -1, -1):
        if seq:
            for n in range(N):
                for j in range(u):
                    dh[n, j] += dy[s, n, j]
        elif s == T - 1:
            for n in range(N):
                for j in range(u):
                    dh[n, j] += dy[0, n, j]
        d = dz[s]
        for n in range(N):
            for j in range(u):
                d[n, j] = dh[n, j] * _dact(act, pre[s, n, j], hs[s + 1, n, j])
        _rec_back(d, RT, Rg, rmask, use_rmask, dh, tmp, tmp2, serial)


# --- LSTM, gates i, f, c, o: c = f*c_prev + i*act(zc); h = o*act(c) ----------------------------------


@numba.njit(**GATE_JIT)
def lstm_forward(xp, R, Rg, rmask, use_rmask, act, ract, hs, cs, acs, pre, gates, serial=False):
    """cs (T+1, N, u) carries (cs[0] = 0); acs (T, N, u) = act(cs[1:]). gates may be xp itself: each
    projection value is read before the gate in its place is written."""
    T, N, G = xp.shape
    u = G // 4
    hm = np.empty((N, u), xp.dtype)
    tmp = np.empty((N, u), xp.dtype)
    for n in range(N):
        for j in range(u):
            hs[0, n, j] = 0
            cs[0, n, j] = 0
    default = act == TANH and ract == SIGMOID
    f32 = xp.itemsize == 4
    acc = np.empty((N, G), xp.dtype)  # the default activations' backward reads no pre-activations
    tiles = default and f32 and not use_rmask
    packed = _lstm_packed(R)
    for s in range(T):
        if tiles and _lstm_tiles(hs[s], packed, xp[s], cs[s], gates[s], cs[s + 1], acs[s], hs[s + 1]):
            continue
        a = acc if default else pre[s]
        _rec_fwd(hs[s], R, Rg, rmask, use_rmask, a, hm, tmp, serial)
        for n in range(N):
            if default and f32:
                _lstm_cells32(a[n], xp[s, n], gates[s, n], cs[s, n], cs[s + 1, n], acs[s, n], hs[s + 1, n], u)
                continue
            for j in range(G):
                a[n, j] += xp[s, n, j]
            if default:
                _lstm_cells(a[n], gates[s, n], cs[s, n], cs[s + 1, n], acs[s, n], hs[s + 1, n], u)
                continue
            for j in range(u):
                i = _act(ract, a[n, j])
                f = _act(ract, a[n, u + j])
                g = _act(act, a[n, 2 * u + j])
                o = _act(ract, a[n, 3 * u + j])
                gates[s, n, j] = i
                gates[s, n, u + j] = f
                gates[s, n, 2 * u + j] = g
                gates[s, n, 3 * u + j] = o
                cs[s + 1, n, j] = f * cs[s, n, j] + i * g
                ac = _act(act, cs[s + 1, n, j])  # the stored (array-dtype) value: one specialisation
                acs[s, n, j] = ac
                hs[s + 1, n, j] = o * ac


@numba.njit(**GATE_JIT)
def _lstm_cell_grads(dh, gates, c_prev, ac, dc, d, dcell, u):
    """One sample's step of lstm_backward with the default activations, each output in a loop of its own
    (as _lstm_cells): from dh (u,), the gradient reaching h, and dc (u,), the one reaching the cell from
    the next step, d (4u,) = d(loss)/d(gate pre-activations); dc becomes the gradient to the previous
    cell. dcell (u,) float64 is scratch for the cell's gradient, which the general loop keeps in float64
    too: the same operations in the same order."""
    for j in range(u):
        d[3 * u + j] = dh[j] * ac[j] * (gates[3 * u + j] * (1 - gates[3 * u + j]))  # o's
    for j in range(u):
        dcell[j] = dh[j] * gates[3 * u + j] * (1 - ac[j] * ac[j]) + dc[j]
    for j in range(u):
        dc[j] = dcell[j] * gates[u + j]
    for j in range(u):
        d[j] = dcell[j] * gates[2 * u + j] * (gates[j] * (1 - gates[j]))
    for j in range(u):
        d[u + j] = dcell[j] * c_prev[j] * (gates[u + j] * (1 - gates[u + j]))
    for j in range(u):
        d[2 * u + j] = dcell[j] * gates[j] * (1 - gates[2 * u + j] * gates[2 * u + j])


@numba.njit(**GATE_JIT)
def lstm_backward(R, Rg, rmask, use_rmask, act, ract, cs, acs, pre, gates, dy, seq, dz, serial=False):
    T, N, G = pre.shape
    u = G // 4
    dh = np.zeros((N, u), pre.dtype)
    dc = np.zeros((N, u), pre.dtype)
    tmp = np.empty((N, u), pre.dtype)
    tmp2 = np.empty((N, u), pre.dtype)
    default = act == TANH and ract == SIGMOID
    f32 = pre.itemsize == 4
    dcell = np.empty(u, np.float64)
    RT = np.ascontiguousarray(R.T)
    for s in range(T - 1, -1, -1):
        d = dz[s]
        for n in range(N):
            if default:  # dh is overwritten below (_rec_back), so it can take this step's dy
                if seq or s == T - 1:
                    for j in range(u):
                        dh[n, j] += dy[s if seq else 0, n, j]
                if f32:
                    _lstm_cell_grads32(dh[n], gates[s, n], cs[s, n], acs[s, n], dc[n], d[n], u)
                else:
                    _lstm_cell_grads(dh[n], gates[s, n], cs[s, n], acs[s, n], dc[n], d[n], dcell, u)
                continue
            for j in range(u):
                dhv = dh[n, j]
                if seq:
                    dhv += dy[s, n, j]
                elif s == T - 1:
                    dhv += dy[0, n, j]
                i = gates[s, n, j]
                f = gates[s, n, u + j]
                g = gates[s, n, 2 * u + j]
                o = gates[s, n, 3 * u + j]
                c = cs[s + 1, n, j]
                ac = acs[s, n, j]
                dcv = dhv * o * _dact(act, c, ac) + dc[n, j]
                dc[n, j] = dcv * f
                d[n, j] = dcv * g * _dact(ract, pre[s, n, j], i)
                d[n, u + j] = dcv * cs[s, n, j] * _dact(ract, pre[s, n, u + j], f)
                d[n, 2 * u + j] = dcv * i * _dact(act, pre[s, n, 2 * u + j], g)
                d[n, 3 * u + j] = dhv * ac * _dact(ract, pre[s, n, 3 * u + j], o)
        _rec_back(d, RT, Rg, rmask, use_rmask, dh, tmp, tmp2, serial)


# --- GRU, gates z, r, h: h = z*h_prev + (1-z)*hh ----------------------------------------------------
# reset_after:     hh = act(xh + r * (h_prev @ Rh + rb_h)), recurrent bias rb (3u,) on all three gates
# not reset_after: hh = act(xh + (r * h_prev) @ Rh), no recurrent bias
# aux (T, N, u) keeps what hh's recurrent term needs in backward: h_prev @ Rh + rb_h when reset_after,
# else q = r * h_prev (masked), the left operand of Rh.


@numba.njit(**GATE_JIT)
def _gru_cells(x, a, rb, use_rb, h_prev, pre, gates, aux, h, u):
    """One sample's GRU step (reset_after) with the default activations, as _lstm_cells: from its input
    projection x (3u,) and a (3u,) = h_prev @ R (its recurrent bias added here, in place), the gates'
    pre-activations, the gates, aux (the candidate's recurrent term) and h, each in a loop of its own."""
    if use_rb:
        for j in range(3 * u):
            a[j] += rb[j]
    for j in range(2 * u):  # z, r
        pre[j] = x[j] + a[j]
    for j in range(2 * u):
        gates[j] = _sigmoid_v(pre[j])
    for j in range(u):
        pre[2 * u + j] = x[2 * u + j] + gates[u + j] * a[2 * u + j]
    for j in range(u):
        gates[2 * u + j] = _tanh_v(pre[2 * u + j])
    for j in range(u):
        aux[j] = a[2 * u + j]
    for j in range(u):
        h[j] = gates[j] * h_prev[j] + (1 - gates[j]) * gates[2 * u + j]


@numba.njit(**GATE_JIT)
def _gru_cells32(x, a, rb, use_rb, h_prev, gates, aux, h, u):
    """_gru_cells for float32. The pre-activations are not stored: the default activations' derivatives
    come from their outputs. gates may be x itself (as in _lstm_cells32): no loop reads x and writes gates."""
    if use_rb:
        for j in range(3 * u):
            a[j] += rb[j]
    for j in range(u):
        aux[j] = a[2 * u + j]
    for j in range(2 * u):  # z, r
        a[j] += x[j]
    for j in range(2 * u):
        gates[j] = _sigmoid32(a[j])
    for j in range(u):
        a[2 * u + j] = x[2 * u + j] + gates[u + j] * aux[j]
    for j in range(u):
        gates[2 * u + j] = _tanh32(a[2 * u + j])
    for j in range(u):
        z = gates[j]
        h[j] = z * h_prev[j] + (_ONE32 - z) * gates[2 * u + j]


@numba.njit(**GATE_JIT)
def _gru_cell_grads32(dh, gates, h_prev, aux, d, ds, dhp, u):
    """One sample's step of gru_backward (reset_after, default activations) in float32: from dh (u,), the
    gradient reaching h, d (3u,) for the input side, ds (3u,) for the recurrent side, and dhp (u,) the
    gradient h_prev takes directly (through z * h_prev)."""
    for j in range(u):
        z = gates[j]
        r = gates[u + j]
        hh = gates[2 * u + j]
        dhv = dh[j]
        dhp[j] = dhv * z
        dzv = dhv * (h_prev[j] - hh) * (z * (_ONE32 - z))
        dph = dhv * (_ONE32 - z) * (_ONE32 - hh * hh)
        dpr = dph * aux[j] * (r * (_ONE32 - r))
        d[j] = dzv
        d[u + j] = dpr
        d[2 * u + j] = dph
        ds[j] = dzv
        ds[u + j] = dpr
        ds[2 * u + j] = dph * r


@numba.njit(**GATE_JIT)
def gru_forward(xp, R, R2, Rg, rb, use_rb, rmask, use_rmask, reset_after, act, ract, hs, pre, gates, aux,
                serial=False):
    """R (u, 3u); R2 (u, 2u) = R[:, :2u] (only when not reset_after); Rg (3, u, u) R split per gate
    (always: Rg[2] is the candidate's kernel when not reset_after). gates may be xp itself, as in
    lstm_forward."""
    T, N, G = xp.shape
    u = G // 3
    hm = np.empty((N, u), xp.dtype)
    tmp = np.empty((N, u), xp.dtype)
    a = np.empty((N, G), xp.dtype)
    a2 = np.empty((N, 2 * u), xp.dtype)
    for n in range(N):
        for j in range(u):
            hs[0, n, j] = 0
    default = act == TANH and ract == SIGMOID
    f32 = xp.itemsize == 4
    for s in range(T):
        hp = hs[s]
        if reset_after:
            _rec_fwd(hp, R, Rg, rmask, use_rmask, a, hm, tmp, serial)
            for n in range(N):
                if default and f32:
                    _gru_cells32(xp[s, n], a[n], rb, use_rb, hp[n], gates[s, n], aux[s, n], hs[s + 1, n], u)
                    continue
                if default:
                    _gru_cells(xp[s, n], a[n], rb, use_rb, hp[n], pre[s, n], gates[s, n], aux[s, n], hs[s + 1, n], u)
                    continue
                for j in range(u):
                    az = a[n, j]
                    ar = a[n, u + j]
                    ah = a[n, 2 * u + j]
                    if use_rb:
                        az += rb[j]
                        ar += rb[u + j]
                        ah += rb[2 * u + j]
                    pz = xp[s, n, j] + az
                    pr = xp[s, n, u + j] + ar
                    z = _act(ract, pz)
                    r = _act(ract, pr)
                    pre[s, n, j] = pz
                    pre[s, n, u + j] = pr
                    pre[s, n, 2 * u + j] = xp[s, n, 2 * u + j] + r * ah
                    hh = _act(act, pre[s, n, 2 * u + j])
                    gates[s, n, j] = z
                    gates[s, n, u + j] = r
                    gates[s, n, 2 * u + j] = hh
                    aux[s, n, j] = ah
                    hs[s + 1, n, j] = z * hp[n, j] + (1 - z) * hh
        else:
            _rec_fwd(hp, R2, Rg, rmask, use_rmask, a2, hm, tmp, serial)
            q = aux[s]
            for n in range(N):
                for j in range(u):
                    pz = xp[s, n, j] + a2[n, j]
                    pr = xp[s, n, u + j] + a2[n, u + j]
                    z = _act(ract, pz)
                    r = _act(ract, pr)
                    pre[s, n, j] = pz
                    pre[s, n, u + j] = pr
                    gates[s, n, j] = z
                    gates[s, n, u + j] = r
                    hv = hp[n, j]
                    if use_rmask:
                        hv *= rmask[2, n, j]
                    q[n, j] = r * hv
            _product(q, Rg[2], tmp, serial)
            for n in range(N):
                for j in range(u):
                    ph = xp[s, n, 2 * u + j] + tmp[n, j]
                    hh = _act(act, ph)
                    z = gates[s, n, j]
                    pre[s, n, 2 * u + j] = ph
                    gates[s, n, 2 * u + j] = hh
                    hs[s + 1, n, j] = z * hp[n, j] + (1 - z) * hh


@numba.njit(**GATE_JIT)
def gru_backward(R, R2, Rg, rmask, use_rmask, reset_after, act, ract, hs, pre, gates, aux, dy, seq, dz, da,
                 serial=False):
    """dz (T, N, 3u): gradient of the input side (xp). da (T, N, 3u), reset_after only: gradient of the
    recurrent side (h_prev @ R + rb), whose candidate column is r * dz's. When not reset_after, the
    recurrent kernel's z, r columns take dz's and its candidate columns take dz's against aux (q)."""
    T, N, G = pre.shape
    u = G // 3
    dh = np.zeros((N, u), pre.dtype)
    dhp = np.empty((N, u), pre.dtype)
    tmp = np.empty((N, u), pre.dtype)
    tmp2 = np.empty((N, u), pre.dtype)
    back = np.empty((N, u), pre.dtype)
    dph = np.empty((N, u), pre.dtype)
    dq = np.empty((N, u), pre.dtype)
    d2 = np.empty((N, 2 * u), pre.dtype)
    RT = np.ascontiguousarray(R.T if reset_after else R2.T)
    fast = reset_after and act == TANH and ract == SIGMOID and pre.itemsize == 4
    for s in range(T - 1, -1, -1):
        hp = hs[s]
        d = dz[s]
        if fast:
            ds = da[s]
            for n in range(N):
                if seq or s == T - 1:
                    for j in range(u):
                        dh[n, j] += dy[s if seq else 0, n, j]
                _gru_cell_grads32(dh[n], gates[s, n], hp[n], aux[s, n], d[n], ds[n], dhp[n], u)
            _rec_back(ds, RT, Rg, rmask, use_rmask, back, tmp, tmp2, serial)
            for n in range(N):
                for j in range(u):
                    dh[n, j] = dhp[n, j] + back[n, j]
            continue
        for n in range(N):
            for j in range(u):
                dhv = dh[n, j]
                if seq:
                    dhv += dy[s, n, j]
                elif s == T - 1:
                    dhv += dy[0, n, j]
                z = gates[s, n, j]
                hh = gates[s, n, 2 * u + j]
                dhp[n, j] = dhv * z
                d[n, j] = dhv * (hp[n, j] - hh) * _dact(ract, pre[s, n, j], z)
                dphv = dhv * (1 - z) * _dact(act, pre[s, n, 2 * u + j], hh)
                d[n, 2 * u + j] = dphv
                dph[n, j] = dphv
        if reset_after:
            ds = da[s]
            for n in range(N):
                for j in range(u):
                    r = gates[s, n, u + j]
                    dpr = dph[n, j] * aux[s, n, j] * _dact(ract, pre[s, n, u + j], r)
                    d[n, u + j] = dpr
                    ds[n, j] = d[n, j]
                    ds[n, u + j] = dpr
                    ds[n, 2 * u + j] = dph[n, j] * r
            _rec_back(ds, RT, Rg, rmask, use_rmask, back, tmp, tmp2, serial)
        else:
            _product(dph, Rg[2].T, dq, serial)  # d(loss)/dq
            for n in range(N):
                for j in range(u):
                    r = gates[s, n, u + j]
                    m = rmask[2, n, j] if use_rmask else 1.0
                    dpr = dq[n, j] * hp[n, j] * m * _dact(ract, pre[s, n, u + j], r)
                    d[n, u + j] = dpr
                    dhp[n, j] += dq[n, j] * r * m
                    d2[n, j] = d[n, j]
                    d2[n, u + j] = dpr
            _rec_back(d2, RT, Rg, rmask, use_rmask, back, tmp, tmp2, serial)
        for n in range(N):
            for j in range(u):
                dh[n, j] = dhp[n, j] + back[n, j]


# --- weight gradients over every timestep at once ----------------------------------------------------


# The weight gradients sum over every timestep of the batch (thousands of rows) into few output rows: on
# AVX-512 sgemm's transposed-operand path runs that shape faster than OpenBLAS, on AVX2 slower (the mode is
# in the kernel cache's stamp, so this constant is compiled in for one mode only).
_ROW_SUMS_ON_SGEMM = native.AVX512


@numba.njit(inline="always", **GATE_JIT)
def _over_rows(x, dz, out):
    """out (k, n) = x (rows, k).T @ dz (rows, n)."""
    if _ROW_SUMS_ON_SGEMM:
        matmul(x.T, dz, out)
    else:
        matmul_blas(x.T, dz, out)


@numba.njit(**GATE_JIT)
def linear_gradients(x, kernel, dz, use_bias, need_dx, dkernel, dbias, dx):
    """dz (rows, n) -> dkernel (k, n) = x (rows, k).T @ dz, dbias = dz summed over rows, and with need_dx
    dx (rows, k) = dz @ kernel.T: dense.backward for the recurrent layers' T*N rows (_over_rows says where
    the kernel gradient runs)."""
    _over_rows(x, dz, dkernel)
    if use_bias:
        column_sums(dz, dbias)
    if need_dx:
        matmul(dz, kernel.T, dx)


@numba.njit(**GATE_JIT)
def joint_gradients(xh, kernel, dz, need_dx, dw, dx):
    """dw (k, n) = xh (rows, k).T @ dz (rows, n), the stacked kernel, recurrent kernel and bias gradients of
    a layer whose rows hold [x | h_prev | 1] (layers.recurrent._project), and with need_dx the input's part
    dx (rows, F) = dz @ kernel (F, n).T, as linear_gradients."""
    _over_rows(xh, dz, dw)
    if need_dx:
        matmul(dz, kernel.T, dx)
