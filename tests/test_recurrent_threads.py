"""With two threads, LSTM and GRU run the recurrence of each half of the batch on a thread of its own
(specc.layers.recurrent._over_batch): outputs, weight gradients and input gradients must be those of one
thread, for the default gates and the general path (other activations, dropout masks per gate, both GRU
formulations, backwards), in float32 and float64."""

from __future__ import annotations

import numpy as np
import pytest

from specc.kernels import configure_threads, thread_count

from .gradcheck import build, make_inputs

LAYERS = [
    {"type": "LSTM", "units": 5},
    {"type": "LSTM", "units": 16},  # float32: the register tiles (native/recurrent_tiles.py)
    {"type": "LSTM", "units": 5, "return_sequences": True, "go_backwards": True},
    {"type": "LSTM", "units": 5, "activation": "softsign", "recurrent_dropout": 0.3, "dropout": 0.2},
    {"type": "GRU", "units": 5, "return_sequences": True},
    {"type": "GRU", "units": 5, "reset_after": False, "recurrent_dropout": 0.3},
    {"type": "GRU", "units": 5, "recurrent_activation": "hard_sigmoid", "go_backwards": True},
]


def _run(layer, dtype, threads):
    configure_threads(threads)
    engine = build(layer, [[6, 4]])
    if dtype == np.float32:
        from specc.engine import Engine

        engine = Engine(engine.graph, np.float32)
        engine.initialize(0)
    engine.params += np.random.default_rng(2).standard_normal(engine.params.shape).astype(engine.params.dtype) * 0.1
    xs = [x.astype(dtype) for x in make_inputs(engine, 32, np.random.default_rng(3))]
    out = engine.forward(xs, training=True, rng=np.random.default_rng(7))[0]
    engine.backward([np.random.default_rng(4).standard_normal(out.shape).astype(dtype)])
    return out.copy(), engine.grads.copy(), engine._input_grads[engine.input_names[0]].copy()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("layer", LAYERS, ids=lambda layer: "-".join(f"{v}" for v in layer.values()))
def test_two_threads_give_the_one_thread_result(layer, dtype):
    before = thread_count()
    try:
        one = _run(layer, dtype, 1)
        two = _run(layer, dtype, 2)
    finally:
        configure_threads(before)
    for a, b in zip(one, two):
        np.testing.assert_allclose(b, a, rtol=1e-5 if dtype == np.float32 else 1e-12, atol=1e-6)
