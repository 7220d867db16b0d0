"""The float32 LSTM step on register tiles (specc/kernels/native/recurrent_tiles.py), which lstm_forward takes
for the default gates when the units are a multiple of the vector width: its gates within a few float32 ulps
of float64 references over the whole float32 range, and a layer's outputs and gradients within float32
rounding of the float64 engine's (whose gradients tests/test_gradcheck_recurrent.py checks against finite
differences), for batches that take every tile height and for both directions."""

from __future__ import annotations

import numpy as np
import pytest

from specc.engine import Engine
from specc.kernels import native, recurrent
from specc.kernels.activations import CODE

from .gradcheck import build, make_inputs
from .test_recurrent_gates import _close, _sigmoid, _values

F32 = np.float32
UNITS = 16  # a multiple of both vector widths (16 float32 on AVX-512, 8 on AVX2)


def test_the_tiles_load_with_the_native_products():
    # Where sgemm loaded (AVX-512 or AVX2 with FMA) the tiles are there too; elsewhere (SPECC_NATIVE=0, a
    # generic CPU) the portable loops run and the tests below check those.
    assert (recurrent._recurrent_tiles() is not None) == (native.sgemm is not None)


def test_tile_gates_float32():
    v = _values()
    per_sample = UNITS
    v = np.concatenate([v, np.zeros(-v.size % per_sample, F32)])
    n = v.size // per_sample
    rows = v.reshape(n, per_sample)
    xp = np.tile(rows, (1, 4))[None].astype(F32)  # (T=1, N, 4u): each gate of unit j of sample m sees rows[m, j]
    r = np.zeros((UNITS, 4 * UNITS), F32)
    dummy = np.empty((1, 1, 1), F32)
    hs, cs = np.empty((2, n, UNITS), F32), np.empty((2, n, UNITS), F32)
    acs = np.empty((1, n, UNITS), F32)
    pre, gates = np.empty((1, n, 4 * UNITS), F32), np.empty((1, n, 4 * UNITS), F32)
    recurrent.lstm_forward(xp, r, dummy, dummy, False, CODE["tanh"], CODE["sigmoid"], hs, cs, acs, pre, gates)
    g = gates[0].reshape(n, 4, UNITS)
    for k in (0, 1, 3):
        _close(g[:, k].ravel(), _sigmoid(v))
    _close(g[:, 2].ravel(), np.tanh(v.astype(np.float64)))
    i, cand, o = (g[:, k].astype(np.float64) for k in (0, 2, 3))
    _close(cs[1].ravel(), (i * cand).ravel())  # the cell entering is 0
    _close(acs[0].ravel(), np.tanh(cs[1].astype(np.float64)).ravel())
    _close(hs[1].ravel(), (o * acs[0].astype(np.float64)).ravel())


def _run(layer, dtype, batch):
    engine = build(layer, [[7, 5]])
    engine.params += np.random.default_rng(2).standard_normal(engine.params.shape) * 0.3
    if dtype == np.float32:
        params = engine.params.copy()
        engine = Engine(engine.graph, np.float32)
        engine.initialize(0)
        engine.params[...] = params
    xs = [x.astype(dtype) for x in make_inputs(engine, batch, np.random.default_rng(3))]
    out = engine.forward(xs, training=True, rng=np.random.default_rng(7))[0]
    engine.backward([np.random.default_rng(4).standard_normal(out.shape).astype(dtype)])
    return out.copy(), engine.grads.copy(), engine._input_grads[engine.input_names[0]].copy()


@pytest.mark.parametrize("batch", [1, 13, 32])  # 13 = 6 + 4 + 2 + 1 rows of tiles on AVX-512
@pytest.mark.parametrize("layer", [{"type": "LSTM", "units": UNITS},
                                   {"type": "LSTM", "units": 2 * UNITS, "return_sequences": True,
                                    "go_backwards": True}], ids=["last", "sequences-backwards"])
def test_float32_layer_matches_float64(layer, batch):
    got = _run(layer, np.float32, batch)
    want = _run(layer, np.float64, batch)
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5)
