"""The LSTM's and GRU's default gates (sigmoid and tanh) in float32 models, which the recurrent kernels compute
in float32 arithmetic of their own: within a few float32 ulps of float64 references over the whole float32
range (the tails, both signs, the points where they round to 0 or 1, the series' and the reduction's
boundaries), through the kernels themselves with a zero recurrent kernel, so that each gate is the
activation of its input projection alone."""

from __future__ import annotations

import numpy as np
import pytest

from specc.kernels import recurrent
from specc.kernels.activations import CODE

F32 = np.float32
REL = 2.0**-22  # 2 to 4 ulps, as tests/test_activation_range.py
TINY = float(np.finfo(F32).tiny)


def _values() -> np.ndarray:
    points = [0.0, 1e-30, 1e-7, 1e-3, 0.03125, 0.1, 0.17, 0.35, 0.5, 0.75, 1.0, 2.0, 5.0, 8.0, 9.0, 9.01, 9.5,
              10.0, 17.0, 20.0, 40.0, 80.0, 87.3, 88.0, 88.73, 100.0, 104.0, 1e4, float(np.finfo(F32).max)]
    near = [np.nextafter(F32(p), F32(np.inf)) for p in points[:-1]] + [np.nextafter(F32(p), F32(-np.inf))
                                                                       for p in points]
    v = np.concatenate([np.linspace(-30, 30, 2401, dtype=F32), np.array(points + near, F32)])
    v = np.concatenate([v, -v])
    return v[np.isfinite(v)]


def _sigmoid(x):
    x = x.astype(np.float64)
    return np.where(x >= 0, 1 / (1 + np.exp(-np.abs(x))), np.exp(-np.abs(x)) / (1 + np.exp(-np.abs(x))))


def _close(got, want):
    err = np.abs(got.astype(np.float64) - want)
    ok = (err <= REL * np.abs(want)) | (err <= TINY)
    assert ok.all(), (got[~ok][:5], want[~ok][:5])


def test_lstm_gates_float32():
    v = _values()
    n = v.size
    xp = np.repeat(v[None, :, None], 4, axis=2).astype(F32)  # (T=1, N, 4u) with u = 1: every gate sees v
    r = np.zeros((1, 4), F32)
    dummy = np.empty((1, 1, 1), F32)
    hs, cs = np.empty((2, n, 1), F32), np.empty((2, n, 1), F32)
    acs = np.empty((1, n, 1), F32)
    pre, gates = np.empty((1, n, 4), F32), np.empty((1, n, 4), F32)
    recurrent.lstm_forward(xp, r, dummy, dummy, False, CODE["tanh"], CODE["sigmoid"], hs, cs, acs, pre, gates)
    for k in (0, 1, 3):
        _close(gates[0, :, k], _sigmoid(v))
    _close(gates[0, :, 2], np.tanh(v.astype(np.float64)))
    _close(acs[0, :, 0], np.tanh(cs[1, :, 0].astype(np.float64)))  # tanh of the stored cell


@pytest.mark.parametrize("use_bias", [True, False])
def test_gru_gates_float32(use_bias):
    v = _values()
    n = v.size
    xp = np.repeat(v[None, :, None], 3, axis=2).astype(F32)
    r = np.zeros((1, 3), F32)
    rg = np.zeros((3, 1, 1), F32)
    rb = np.zeros(3, F32)
    dummy = np.empty((1, 1, 1), F32)
    hs = np.empty((2, n, 1), F32)
    pre, gates = np.empty((1, n, 3), F32), np.empty((1, n, 3), F32)
    aux = np.empty((1, n, 1), F32)
    recurrent.gru_forward(xp, r, np.empty((1, 1), F32), rg, rb, use_bias, dummy, False, True, CODE["tanh"],
                          CODE["sigmoid"], hs, pre, gates, aux)
    _close(gates[0, :, 0], _sigmoid(v))
    _close(gates[0, :, 1], _sigmoid(v))
    _close(gates[0, :, 2], np.tanh(v.astype(np.float64)))
    # h = z * 0 + (1 - z) * hh, from the stored gates
    z, hh = gates[0, :, 0].astype(np.float64), gates[0, :, 2].astype(np.float64)
    _close(hs[1, :, 0], (1 - z) * hh)
