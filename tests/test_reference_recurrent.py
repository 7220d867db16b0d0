"""SimpleRNN, LSTM and GRU against independent implementations: PyTorch's nn.RNN/LSTM/GRU (outputs and
gradients, weights mapped from Keras's layout) and Keras 3 itself on the torch backend (outputs, and
gradients through torch's autograd), loading identical weights.

Layout mapping Keras -> torch: torch keeps weight_ih (G*u, F) = kernel.T and weight_hh = recurrent_kernel.T
with the gate blocks in its own order: LSTM i, f, g, o (the same as Keras's i, f, c, o); GRU r, z, n
(Keras's z, r, h reordered). torch has two biases that are simply added; Keras's SimpleRNN/LSTM bias goes
to bias_ih (bias_hh = 0), Keras's GRU (reset_after) bias rows are (input, recurrent) = (bias_ih, bias_hh).
torch's GRU is the reset_after formulation only; reset_after=False is checked against Keras.
"""

from __future__ import annotations

import itertools
import os

import numpy as np
import pytest

from specc.engine import Engine
from specc.spec import load_spec_text

from .modelspec import model_yaml

torch = pytest.importorskip("torch")

N, T, F, U = 3, 5, 4, 6


def _data(layer: dict, seed: int = 0):
    """Random weights in Keras's shapes, input x and output gradient dy."""
    rng = np.random.default_rng(seed)
    engine = _engine(layer, np.float64)
    weights = [rng.standard_normal(s.shape) * 0.4 for s in engine.steps[0].specs]
    x = rng.standard_normal((N, T, F))
    dy = rng.standard_normal((N, T, U) if layer.get("return_sequences") else (N, U))
    return weights, x, dy


def _engine(layer: dict, dtype) -> Engine:
    spec, errors = load_spec_text(model_yaml(layer, [[T, F]]), "reference.yaml")
    assert not errors, [e.text() for e in errors]
    return Engine(spec.graph, dtype)


def run_specc(layer: dict, weights, x, dy, dtype=np.float64):
    """(y, weight gradients in Keras's order, dx) of loss = sum(dy * y)."""
    engine = _engine(layer, dtype)
    engine.set_weights(weights)
    y = engine.forward([x.astype(dtype)])[0]
    engine.backward([dy.astype(dtype)])
    grads = [g.copy() for g in engine.steps[0].grads]
    return y, grads, engine._input_grads[engine.input_names[0]]


def _torch_order(kind: str) -> np.ndarray:
    """Keras columns in torch's gate order."""
    perm = {"SimpleRNN": [0], "LSTM": [0, 1, 2, 3], "GRU": [1, 0, 2]}[kind]
    return np.concatenate([np.arange(k * U, (k + 1) * U) for k in perm])


def run_torch(layer: dict, weights, x, dy):
    kind, use_bias = layer["type"], layer.get("use_bias", True)
    module = {"SimpleRNN": torch.nn.RNN, "LSTM": torch.nn.LSTM, "GRU": torch.nn.GRU}[kind](
        F, U, batch_first=True, bias=use_bias, dtype=torch.float64)
    cols = _torch_order(kind)
    kernel, recurrent = weights[0], weights[1]
    with torch.no_grad():
        module.weight_ih_l0.copy_(torch.from_numpy(kernel[:, cols].T.copy()))
        module.weight_hh_l0.copy_(torch.from_numpy(recurrent[:, cols].T.copy()))
        if use_bias:
            bias = weights[2]
            b_ih, b_hh = (bias[0], bias[1]) if kind == "GRU" else (bias, np.zeros_like(bias))
            module.bias_ih_l0.copy_(torch.from_numpy(b_ih[cols].copy()))
            module.bias_hh_l0.copy_(torch.from_numpy(b_hh[cols].copy()))
    xt = torch.from_numpy(x.copy()).requires_grad_(True)
    inp = torch.flip(xt, [1]) if layer.get("go_backwards") else xt  # Keras reverses the input in time
    out, _ = module(inp)
    y = out if layer.get("return_sequences") else out[:, -1]
    (y * torch.from_numpy(dy)).sum().backward()

    def keras_cols(a):  # torch's gate order back to Keras's
        out = np.empty_like(a)
        out[..., cols] = a
        return out

    grads = [keras_cols(module.weight_ih_l0.grad.numpy().T), keras_cols(module.weight_hh_l0.grad.numpy().T)]
    if use_bias:
        if kind == "GRU":
            grads.append(np.stack([keras_cols(module.bias_ih_l0.grad.numpy()),
                                   keras_cols(module.bias_hh_l0.grad.numpy())]))
        else:
            grads.append(keras_cols(module.bias_ih_l0.grad.numpy()))
    return y.detach().numpy(), grads, xt.grad.numpy()


def _compare(got, want, rtol, atol):
    y, grads, dx = got
    y_ref, grads_ref, dx_ref = want
    np.testing.assert_allclose(y, y_ref, rtol=rtol, atol=atol, err_msg="output")
    assert len(grads) == len(grads_ref)
    for k, (g, g_ref) in enumerate(zip(grads, grads_ref, strict=True)):
        np.testing.assert_allclose(g, g_ref, rtol=rtol, atol=atol, err_msg=f"gradient of weight {k}")
    np.testing.assert_allclose(dx, dx_ref, rtol=rtol, atol=atol, err_msg="input gradient")


TORCH_CASES = [
    (f"{kind}-{'seq' if seq else 'last'}-{'back' if back else 'fwd'}-{'bias' if bias else 'nobias'}",
     {"type": kind, "units": U, "return_sequences": seq, "go_backwards": back, "use_bias": bias})
    for kind, seq, back, bias in itertools.product(("SimpleRNN", "LSTM", "GRU"), (False, True), (False, True),
                                                   (True, False))
]


@pytest.mark.parametrize("layer", [c[1] for c in TORCH_CASES], ids=[c[0] for c in TORCH_CASES])
def test_matches_torch_float64(layer):
    weights, x, dy = _data(layer)
    _compare(run_specc(layer, weights, x, dy), run_torch(layer, weights, x, dy), rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("kind", ["SimpleRNN", "LSTM", "GRU"])
def test_matches_torch_float32(kind):
    layer = {"type": kind, "units": U, "return_sequences": True}
    weights, x, dy = _data(layer, seed=1)
    got = run_specc(layer, weights, x, dy, np.float32)
    assert got[0].dtype == np.float32 and got[2].dtype == np.float32
    _compare(got, run_torch(layer, weights, x, dy), rtol=1e-4, atol=2e-5)


# --- Keras 3 ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def keras():
    """Keras on the torch backend, with float64 kept float64.

    Outside TensorFlow, Keras 3's type promotion (keras.src.backend.common.dtypes, "aligned with JAX")
    maps float64 to float32, so ops.matmul of two float64 tensors runs in float32 and a float64 layer is
    only float32-accurate. Patching that table for these tests makes the float64 comparison exact; if the
    table moves in a later Keras, the comparison falls back to float32 tolerances.
    """
    os.environ.setdefault("KERAS_BACKEND", "torch")
    keras = pytest.importorskip("keras")
    if keras.backend.backend() != "torch":
        pytest.skip(f"Keras runs on {keras.backend.backend()}, these tests need its torch backend")
    with pytest.MonkeyPatch.context() as patch:
        try:
            from keras.src.backend.common import dtypes

            patch.setitem(dtypes.BIT64_TO_BIT32_DTYPE, "float64", "float64")
            tolerance = dict(rtol=1e-9, atol=1e-11)
        except (ImportError, AttributeError):
            tolerance = dict(rtol=1e-5, atol=1e-6)
        yield keras, tolerance


def run_keras(keras, layer: dict, weights, x, dy, dtype="float64"):
    options = {k: v for k, v in layer.items() if k != "type"}
    klayer = getattr(keras.layers, layer["type"])(**options, dtype=dtype)
    klayer.build((None, T, F))
    klayer.set_weights([w.astype(dtype) for w in weights])
    xt = torch.from_numpy(x.astype(dtype)).requires_grad_(True)
    y = klayer(xt)
    (y * torch.from_numpy(dy.astype(dtype))).sum().backward()
    grads = [v.value.grad.numpy().copy() for v in klayer.weights]
    return y.detach().numpy(), grads, xt.grad.numpy()


KERAS_CASES = [
    *[(f"{kind}{suffix}-{'seq' if seq else 'last'}-{'back' if back else 'fwd'}",
       {"type": kind, "units": U, "return_sequences": seq, "go_backwards": back, **extra})
      for (kind, suffix, extra), seq, back in itertools.product(
          [("SimpleRNN", "", {}), ("LSTM", "", {}), ("GRU", "", {}), ("GRU", "_reset_before", {"reset_after": False})],
          (False, True), (False, True))],
    ("SimpleRNN-nobias-relu", {"type": "SimpleRNN", "units": U, "use_bias": False, "activation": "relu",
                               "return_sequences": True}),
    ("LSTM-nobias", {"type": "LSTM", "units": U, "use_bias": False}),
    ("LSTM-activations", {"type": "LSTM", "units": U, "activation": "softsign",
                          "recurrent_activation": "hard_sigmoid", "return_sequences": True}),
    ("GRU-nobias", {"type": "GRU", "units": U, "use_bias": False, "go_backwards": True}),
    ("GRU_reset_before-nobias", {"type": "GRU", "units": U, "use_bias": False, "reset_after": False}),
    ("GRU-activations", {"type": "GRU", "units": U, "activation": "elu", "recurrent_activation": "softsign",
                         "return_sequences": True}),
    ("GRU_reset_before-activations", {"type": "GRU", "units": U, "activation": "gelu",
                                      "recurrent_activation": "hard_sigmoid", "reset_after": False}),
]


@pytest.mark.parametrize("layer", [c[1] for c in KERAS_CASES], ids=[c[0] for c in KERAS_CASES])
def test_matches_keras(keras, layer):
    keras, tolerance = keras
    if "hard_sigmoid" in layer.values() and tolerance["rtol"] < 1e-6:
        # Keras's hard_sigmoid (relu6(x + 3) / 6 on torch) back-propagates a slope of float32(1/6) even in
        # float64: its gradients are good to ~1e-7 relative only.
        tolerance = dict(rtol=1e-6, atol=1e-8)
    weights, x, dy = _data(layer)
    _compare(run_specc(layer, weights, x, dy), run_keras(keras, layer, weights, x, dy), **tolerance)
    # float32 forward against Keras in float32
    y32 = run_specc(layer, weights, x, dy, np.float32)[0]
    y_keras = run_keras(keras, layer, weights, x, dy, "float32")[0]
    np.testing.assert_allclose(y32, y_keras, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kind", ["LSTM", "GRU", "SimpleRNN"])
def test_dropout_is_inactive_in_inference_like_keras(keras, kind):
    keras, tolerance = keras
    layer = {"type": kind, "units": U, "dropout": 0.5, "recurrent_dropout": 0.5, "return_sequences": True}
    weights, x, dy = _data(layer)
    _compare(run_specc(layer, weights, x, dy), run_keras(keras, layer, weights, x, dy), **tolerance)


def test_lstm_initial_bias_like_keras(keras):
    keras, _ = keras
    klayer = keras.layers.LSTM(U)
    klayer.build((None, T, F))
    engine = _engine({"type": "LSTM", "units": U}, np.float32)
    engine.initialize(0)
    np.testing.assert_array_equal(engine.get_weights()[2], klayer.weights[2].value.detach().numpy())


class _FixedMasks:
    """Stands in for the dropout generator: hands out given uniforms, in the order the layer asks."""

    def __init__(self, arrays):
        self.arrays = list(arrays)

    def random(self, shape):
        a = self.arrays.pop(0)
        assert a.shape == shape, (a.shape, shape)
        return a


DROPOUT_CASES = [
    (f"{name}-{which}", dict(layer, units=U, return_sequences=True, go_backwards=back, **rates))
    for name, layer, back in [("SimpleRNN", {"type": "SimpleRNN"}, False), ("LSTM", {"type": "LSTM"}, True),
                              ("GRU", {"type": "GRU"}, False),
                              ("GRU_reset_before", {"type": "GRU", "reset_after": False}, True)]
    for which, rates in [("dropout", {"dropout": 0.3}), ("recurrent", {"recurrent_dropout": 0.4}),
                         ("both", {"dropout": 0.3, "recurrent_dropout": 0.4})]
]


@pytest.mark.parametrize("layer", [c[1] for c in DROPOUT_CASES], ids=[c[0] for c in DROPOUT_CASES])
def test_training_dropout_like_keras(keras, layer):
    """The same masks given to both (Keras caches a cell's masks; ours come from the generator): one mask
    per sequence; LSTM/GRU share it across gates unless recurrent_dropout is set, which switches Keras to
    one mask per gate for the inputs and for the state."""
    keras, tolerance = keras
    weights, x, dy = _data(layer, seed=3)
    gates = {"SimpleRNN": 1, "LSTM": 4, "GRU": 3}[layer["type"]]
    per_gate = gates > 1 and layer.get("recurrent_dropout", 0) > 0
    rng = np.random.default_rng(4)
    uniforms, keras_masks = [], {}
    for key, rate, width in [("dropout", layer.get("dropout", 0), F), ("recurrent_dropout",
                                                                    layer.get("recurrent_dropout", 0), U)]:
        if not rate:
            continue
        count = gates if per_gate or key == "recurrent_dropout" else 1
        u = rng.random((count, N, width))
        uniforms.append(u)
        masks = [torch.from_numpy((m >= rate) / (1 - rate)) for m in u]
        keras_masks[key] = masks if per_gate else masks[0]

    engine = _engine(layer, np.float64)
    engine.set_weights(weights)
    y = engine.forward([x], training=True, rng=_FixedMasks(uniforms))[0]
    engine.backward([dy])
    got = y, [g.copy() for g in engine.steps[0].grads], engine._input_grads[engine.input_names[0]]

    klayer = getattr(keras.layers, layer["type"])(**{k: v for k, v in layer.items() if k != "type"},
                                                  dtype="float64")
    klayer.build((None, T, F))
    klayer.set_weights(weights)
    klayer.cell._dropout_mask = keras_masks.get("dropout")
    klayer.cell._recurrent_dropout_mask = keras_masks.get("recurrent_dropout")
    xt = torch.from_numpy(x).requires_grad_(True)
    yk = klayer(xt, training=True)
    (yk * torch.from_numpy(dy)).sum().backward()
    want = yk.detach().numpy(), [v.value.grad.numpy() for v in klayer.weights], xt.grad.numpy()
    _compare(got, want, **tolerance)
    # and the masks did something: inference differs
    assert not np.allclose(y, engine.forward([x])[0])
