"""The backward pass's shared gradient buffers (workspace.BufferPool, Engine.pool_gradients).

Pooling must change no bit: each model below trains with the pool, whose buffers are filled with NaN
bytes when given back (poison), and without it (one set of arrays per layer call), and the losses and
weights must agree exactly. A buffer given back while a pending gradient still reads it then shows up as
a NaN or a different number; test_a_wrong_release_is_caught shows these models catch one.
"""

from __future__ import annotations

import numpy as np
import pytest

from specc.engine import Engine
from specc.kernels import configure_threads
from specc.spec import load_spec_text
from specc.train.fit import Diverged, Trainer
from specc.workspace import BufferPool, Workspace, empty


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    configure_threads(1)


# --- the pool itself ---------------------------------------------------------------------------------

def test_take_gives_distinct_buffers_until_released():
    pool = BufferPool()
    a = pool.take((4, 8), np.float32)
    b = pool.take((8, 4), np.float32)  # the same size, while a is in use: another buffer
    assert a.shape == (4, 8) and b.shape == (8, 4) and a.dtype == np.float32
    assert not np.shares_memory(a, b)
    assert a.ctypes.data % 64 == 0
    pool.keep_only([b.reshape(-1)[4:]])  # a view of b keeps b; nothing reaches a
    assert pool.in_use == 1
    c = pool.take((32,), np.int32)  # a's bytes again, as another shape and dtype
    assert c.ctypes.data == a.ctypes.data
    d = pool.take((2, 8), np.float32)  # another size: a new buffer
    assert not np.shares_memory(d, b) and not np.shares_memory(d, c)
    assert pool.nbytes == 128 + 128 + 64
    pool.release_all()
    assert pool.in_use == 0
    assert {pool.take((4, 8), np.float32).ctypes.data, pool.take((4, 8), np.float32).ctypes.data} == \
        {b.ctypes.data, c.ctypes.data}
    assert pool.nbytes == 128 + 128 + 64


def test_poison_fills_a_released_buffer_with_nan():
    pool = BufferPool(poison=True)
    a = pool.take(6, np.float32)
    a[...] = 1
    pool.keep_only([])
    assert np.isnan(a).all()


def test_empty_takes_from_the_pool_only_while_pooling():
    ws = Workspace()
    with ws.active():
        ws.owner = "conv"
        kept = empty("dx", (2, 3), np.float32)
        assert empty("dx", (2, 3), np.float32) is kept
        ws.pooling = True
        first = empty("dx", (2, 3), np.float32)
        second = empty("dx", (2, 3), np.float32)  # the same key, the first still in use: another buffer
        assert not np.shares_memory(first, kept) and not np.shares_memory(first, second)
        assert ws.pool.in_use == 2
    assert ws.nbytes == 3 * 24


# --- training with and without the pool ---------------------------------------------------------------

RESIDUAL = """
specc: 1
model:
  inputs: {image: [8, 8, 3]}
  layers:
    - {type: Conv2D, name: stem, filters: 6, kernel_size: 3, padding: same, inputs: image}
    - {type: BatchNormalization, name: stem_bn, inputs: stem}
    - {type: Activation, name: stem_relu, activation: relu, inputs: stem_bn}
    - {type: Conv2D, name: a1, filters: 6, kernel_size: 3, padding: same, activation: relu, inputs: stem_relu}
    - {type: Conv2D, name: a2, filters: 6, kernel_size: 3, padding: same, inputs: a1}
    - {type: BatchNormalization, name: a2_bn, inputs: a2}
    - {type: Add, name: add_a, inputs: [a2_bn, stem_relu]}
    - {type: Activation, name: add_a_relu, activation: relu, inputs: add_a}
    - {type: Conv2D, name: b1, filters: 6, kernel_size: 1, inputs: add_a_relu}
    - {type: Conv2D, name: b2, filters: 6, kernel_size: 3, padding: same, inputs: add_a_relu}
    - {type: Add, name: add_b, inputs: [b1, b2, add_a_relu]}
    - {type: Conv2D, name: down, filters: 8, kernel_size: 3, strides: 2, padding: same, inputs: add_b}
    - {type: Conv2D, name: c, filters: 8, kernel_size: 3, padding: same, activation: relu, inputs: down}
    - {type: MaxPooling2D, name: pool, pool_size: 2, inputs: c}
    - {type: Flatten, name: flat, inputs: pool}
    - {type: Dense, name: head, units: 4, activation: softmax, inputs: flat}
  outputs: head
compile: {optimizer: adam, loss: sparse_categorical_crossentropy}
"""

# A tensor read by three layers (its gradient is the sum of three), merges whose backward reads their
# inputs (Multiply, Concatenate, Subtract), a frozen layer in the middle and two outputs.
BRANCHES = """
specc: 1
model:
  inputs: {x: [12], side: [5]}
  layers:
    - {type: Dense, name: trunk, units: 10, activation: tanh, inputs: x}
    - {type: Dense, name: left, units: 10, activation: relu, inputs: trunk}
    - {type: Dense, name: right, units: 10, activation: sigmoid, inputs: trunk}
    - {type: Multiply, name: gate, inputs: [left, right]}
    - {type: Subtract, name: diff, inputs: [gate, trunk]}
    - {type: Dense, name: frozen, units: 10, activation: relu, trainable: false, inputs: diff}
    - {type: Dense, name: side_proj, units: 6, activation: elu, inputs: side}
    - {type: Concatenate, name: merged, inputs: [frozen, side_proj, trunk]}
    - {type: Dense, name: label, units: 3, activation: softmax, inputs: merged}
    - {type: Dense, name: value, units: 2, inputs: merged}
  outputs: [label, value]
compile:
  optimizer: sgd
  loss: {label: sparse_categorical_crossentropy, value: mean_squared_error}
"""

# Nested Sequential blocks, one frozen with a BatchNormalization in inference mode, and a layer applied
# twice on its weights (its weight gradients summed over both uses).
NESTED = """
specc: 1
model:
  inputs: {a: [10], b: [10]}
  layers:
    - {type: Dense, name: encoder, units: 8, activation: relu, inputs: a}
    - {use: encoder, name: encoder_b, inputs: b}
    - {type: Add, name: both, inputs: [encoder, encoder_b]}
    - type: Sequential
      name: block
      inputs: both
      layers:
        - {type: Dense, units: 8, activation: relu}
        - type: Sequential
          name: inner
          trainable: false
          layers:
            - {type: Dense, units: 8, activation: relu}
            - {type: BatchNormalization}
        - {type: Dense, units: 8, activation: gelu}
    - {type: Concatenate, name: cat, inputs: [block, encoder_b]}
    - {type: Dense, name: out, units: 3, activation: softmax, inputs: cat}
  outputs: out
compile: {optimizer: rmsprop, loss: sparse_categorical_crossentropy}
"""

# Recurrent layers and self-attention: the attention's query, key and value gradients of one tensor
# are summed inside the layer, and the recurrent layers keep per-step scratch.
SEQUENCE = """
specc: 1
model:
  inputs: {tokens: [6, 4]}
  layers:
    - {type: MultiHeadAttention, name: attention, num_heads: 2, key_dim: 3, inputs: [tokens, tokens]}
    - {type: Add, name: residual, inputs: [attention, tokens]}
    - {type: LayerNormalization, name: norm, inputs: residual}
    - {type: Bidirectional, name: birnn, layer: {type: LSTM, units: 5, return_sequences: true}, inputs: norm}
    - {type: GRU, name: gru, units: 4, inputs: birnn}
    - {type: Dense, name: out, units: 2, activation: softmax, inputs: gru}
  outputs: out
compile: {optimizer: adam, loss: sparse_categorical_crossentropy}
"""

# Depthwise and separable convolutions (backward scratch of their own), a padding fused into the
# depthwise convolution, BatchNormalization + ReLU6 fused, dropout, upsampling and a 1-D branch.
MOBILE = """
specc: 1
model:
  inputs: {image: [8, 8, 4], signal: [10, 3]}
  layers:
    - {type: ZeroPadding2D, name: pad, padding: 1, inputs: image}
    - {type: DepthwiseConv2D, name: dw, kernel_size: 3, depth_multiplier: 2, inputs: pad}
    - {type: BatchNormalization, name: dw_bn, inputs: dw}
    - {type: Activation, name: dw_relu6, activation: relu6, inputs: dw_bn}
    - {type: SeparableConv2D, name: sep, filters: 6, kernel_size: 3, padding: same, activation: relu, inputs: dw_relu6}
    - {type: Dropout, name: drop, rate: 0.25, seed: 1, inputs: sep}
    - {type: AveragePooling2D, name: avg, pool_size: 2, inputs: drop}
    - {type: UpSampling2D, name: up, size: 2, inputs: avg}
    - {type: Add, name: skip, inputs: [up, sep]}
    - {type: GlobalAveragePooling2D, name: gap, inputs: skip}
    - {type: Conv1D, name: c1, filters: 4, kernel_size: 3, activation: relu, inputs: signal}
    - {type: SimpleRNN, name: rnn, units: 4, inputs: c1}
    - {type: Concatenate, name: cat, inputs: [gap, rnn]}
    - {type: Dense, name: out, units: 3, activation: softmax, inputs: cat}
  outputs: out
compile: {optimizer: adam, loss: sparse_categorical_crossentropy}
"""


def _data(engine: Engine, n: int, rng) -> tuple[list[np.ndarray], list[np.ndarray]]:
    x = [rng.standard_normal((n, *node.output_shape)).astype(np.float32) for node in engine.graph.inputs]
    y = []
    for step_name in engine.output_names:
        units = next(s for s in engine.steps if s.name == step_name).output_shape[-1]
        y.append(rng.integers(0, units, n) if step_name != "value" else
                 rng.standard_normal((n, units)).astype(np.float32))
    return x, y


def _train(text: str, pooled: bool, fuse: bool = True) -> tuple[list[float], np.ndarray, Engine]:
    spec, errors = load_spec_text(text)
    assert not errors, [e.text() for e in errors]
    engine = Engine(spec.graph, fuse=fuse)
    engine.initialize(0)
    engine.pool_gradients = pooled
    engine.workspace.pool = BufferPool(poison=True)
    trainer = Trainer(engine, spec.compile, 0)
    x, y = _data(engine, 21, np.random.default_rng(3))
    history = trainer.fit(x, y, batch_size=8, epochs=2, shuffle=True, verbose=0)  # batches of 8, 8, 5
    return history.history["loss"], engine.params.copy(), engine


@pytest.mark.parametrize("text", [RESIDUAL, BRANCHES, NESTED, SEQUENCE, MOBILE],
                         ids=["residual", "branches", "nested", "sequence", "mobile"])
@pytest.mark.parametrize("fuse", [True, False], ids=["fused", "apart"])
def test_pooling_changes_no_bit(text, fuse):
    losses, params, engine = _train(text, pooled=True, fuse=fuse)
    plain_losses, plain_params, plain = _train(text, pooled=False, fuse=fuse)
    assert engine.workspace.pool.nbytes > 0 and plain.workspace.pool.nbytes == 0
    assert np.isfinite(losses).all()
    assert losses == plain_losses
    np.testing.assert_array_equal(params, plain_params)


def test_a_wrong_release_is_caught(monkeypatch):
    """The comparison fails when the pool gives back buffers a pending gradient still reads (every one
    in use before each layer): the residual branches' gradients are then NaN or overwritten."""
    plain_losses, plain_params, _ = _train(RESIDUAL, pooled=False)
    monkeypatch.setattr(BufferPool, "keep_only", lambda self, live: self.release_all())
    try:
        losses, params, _ = _train(RESIDUAL, pooled=True)
    except Diverged:  # a NaN gradient reached the loss
        return
    assert losses != plain_losses
    assert not np.array_equal(params, plain_params, equal_nan=True)


def test_input_gradients_of_a_pooled_pass():
    """Gradients w.r.t. the model inputs (kept in `_input_grads` after backward) come out of the pool too:
    the same as without it, for an input read by several layers."""
    spec, _ = load_spec_text(BRANCHES)
    results = []
    for pooled in (True, False):
        engine = Engine(spec.graph)
        engine.initialize(0)
        engine.pool_gradients = pooled
        engine.workspace.pool = BufferPool(poison=True)
        x, _ = _data(engine, 4, np.random.default_rng(5))
        outs = engine.forward(x, training=True, reuse=True)
        d = [np.random.default_rng(6).standard_normal(o.shape).astype(np.float32) for o in outs]
        engine.backward(d, reuse=True)
        results.append(([engine._input_grads[n].copy() for n in engine.input_names], engine.grads.copy()))
    for a, b in zip(results[0][0], results[1][0]):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(results[0][1], results[1][1])


def _chain(depth: int) -> str:
    layers = "\n".join("    - {type: Conv2D, filters: 8, kernel_size: 3, padding: same, activation: relu}"
                       for _ in range(depth))
    return f"""
specc: 1
model:
  input: [8, 8, 8]
  layers:
{layers}
    - {{type: GlobalAveragePooling2D}}
    - {{type: Dense, units: 2, activation: softmax}}
compile: {{optimizer: sgd, loss: sparse_categorical_crossentropy}}
"""


def test_a_deeper_chain_needs_no_more_gradient_buffers():
    """A chain of convolutions keeps the same few gradient buffers whatever its depth, where one set per
    layer call grows with it."""
    pool_bytes, saved = {}, {}
    for depth in (3, 9):
        totals = {}
        for pooled in (True, False):
            spec, _ = load_spec_text(_chain(depth))
            engine = Engine(spec.graph)
            engine.initialize(0)
            engine.pool_gradients = pooled
            x, y = _data(engine, 8, np.random.default_rng(0))
            Trainer(engine, spec.compile, 0).fit(x, y, batch_size=8, epochs=1, verbose=0)
            totals[pooled] = engine.workspace.nbytes
            if pooled:
                pool_bytes[depth] = engine.workspace.pool.nbytes
        saved[depth] = totals[False] - totals[True]
    assert pool_bytes[9] == pool_bytes[3]
    gradient = 8 * 8 * 8 * 8 * 4  # one (8, 8, 8, 8) float32 input gradient of a convolution
    assert saved[9] - saved[3] >= 6 * gradient  # at least each further layer's own dx
