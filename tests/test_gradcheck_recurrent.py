"""SimpleRNN, LSTM and GRU against finite differences (float64, through the engine): every combination of
return_sequences, use_bias and go_backwards, both GRU formulations, non-default activations, and dropout
in training (shared masks, and Keras's per-gate masks when recurrent_dropout is set)."""

from __future__ import annotations

import itertools

import pytest

from .gradcheck import check

SHAPE = [[4, 3]]  # (timesteps, features)

LAYERS = [
    ("simple_rnn", {"type": "SimpleRNN", "units": 3}),
    ("lstm", {"type": "LSTM", "units": 3}),
    ("gru", {"type": "GRU", "units": 3}),
    ("gru_reset_before", {"type": "GRU", "units": 3, "reset_after": False}),
]


def _cases():
    for (name, layer), seq, bias, back in itertools.product(LAYERS, (False, True), (True, False), (False, True)):
        options = dict(layer, return_sequences=seq, use_bias=bias, go_backwards=back)
        yield (f"{name}-{'seq' if seq else 'last'}-{'bias' if bias else 'nobias'}-{'back' if back else 'fwd'}",
               options, {})
    for name, layer in LAYERS:
        extra = {"activation": "gelu"}
        if layer["type"] != "SimpleRNN":
            extra["recurrent_activation"] = "softsign"
        yield f"{name}-activations", dict(layer, return_sequences=True, **extra), {}
        # one mask shared by the gates (LSTM/GRU with recurrent_dropout 0, and SimpleRNN always)
        yield f"{name}-dropout", dict(layer, dropout=0.3, return_sequences=True), {"training": True}
        # recurrent_dropout: LSTM/GRU switch to one mask per gate, for the inputs and for the state
        yield (f"{name}-recurrent-dropout", dict(layer, dropout=0.3, recurrent_dropout=0.4, go_backwards=True),
               {"training": True})
        yield f"{name}-dropout-inference", dict(layer, dropout=0.3, recurrent_dropout=0.4), {}


CASES = list(_cases())


@pytest.mark.parametrize("layer,options", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_recurrent_gradient_matches_finite_differences(layer, options):
    check(layer, SHAPE, **options)


def test_lstm_unit_forget_bias():
    import numpy as np

    from .gradcheck import build

    bias = build({"type": "LSTM", "units": 3}, SHAPE).get_weights()[2]
    assert np.array_equal(bias, [0, 0, 0, 1, 1, 1, 0, 0, 0, 0, 0, 0])
    bias = build({"type": "LSTM", "units": 3, "unit_forget_bias": False}, SHAPE).get_weights()[2]
    assert not bias.any()


NO_DX = [c for c in CASES if c[0].endswith(("-activations", "-recurrent-dropout", "-seq-bias-back"))]


@pytest.mark.parametrize("layer,options", [c[1:] for c in NO_DX], ids=[c[0] for c in NO_DX])
def test_weight_gradients_without_the_input_gradient(layer, options):
    """As a model's first layer in training (Engine.input_gradients off), the layers skip the input
    gradient's product: the weight gradients are the same bits, and no input gradient comes back."""
    import numpy as np

    from .gradcheck import build, make_inputs

    results = []
    for input_gradients in (True, False):
        engine = build(layer, SHAPE)
        engine.params += np.random.default_rng(2).standard_normal(engine.params.shape) * 0.1
        engine.input_gradients = input_gradients
        xs = make_inputs(engine, 3, np.random.default_rng(3))
        out = engine.forward(xs, training=options.get("training", False), rng=np.random.default_rng(7))[0]
        engine.backward([np.random.default_rng(4).standard_normal(out.shape)])
        results.append((engine.grads.copy(), engine._input_grads[engine.input_names[0]]))
    assert np.array_equal(results[0][0], results[1][0])
    assert results[0][1] is not None and results[1][1] is None
