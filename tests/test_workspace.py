"""Workspace reuse (specc/workspace.py): arrays keyed by layer call, role, shape and dtype; training steps
of the general engine path allocate no array once every batch size has its set; results are unchanged.
"""

from __future__ import annotations

import numpy as np
import pytest

from specc.engine import Engine
from specc.kernels import configure_threads
from specc.spec import load_spec_text
from specc.train.fit import Trainer
from specc.workspace import Workspace, empty

from .stepmemory import StepPeak


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    configure_threads(1)


def test_same_key_same_array_and_nothing_shared_across_keys():
    ws = Workspace()
    with ws.active():
        ws.owner = "conv"
        a = empty("out", (2, 3), np.float32)
        assert empty("out", (2, 3), np.float32) is a
        others = [empty("dx", (2, 3), np.float32), empty("out", (3, 2), np.float32),
                  empty("out", (2, 3), np.float64)]
        ws.owner = "conv_1"  # a shared layer's second call
        others.append(empty("out", (2, 3), np.float32))
        assert all(o is not a for o in others)
        assert empty("bias", 4, np.float32).shape == (4,)
    assert empty("out", (2, 3), np.float32) is not a  # outside the workspace: always fresh
    assert ws.nbytes == a.nbytes * 4 + 2 * 3 * 8 + 16


CNN = """
specc: 1
model:
  input: [12, 12, 3]
  layers:
    - {type: Conv2D, filters: 8, kernel_size: 3, activation: relu}
    - {type: MaxPooling2D, pool_size: 2}
    - {type: BatchNormalization}
    - {type: Conv2D, filters: 8, kernel_size: 3, padding: same}
    - {type: Flatten}
    - {type: Dense, units: 4, activation: softmax}
compile:
  optimizer: adam
  loss: sparse_categorical_crossentropy
  metrics: [accuracy]
"""


def _fit(engine, spec, x, y, callbacks=(), epochs=3):
    trainer = Trainer(engine, spec.compile, 0)
    return trainer.fit(x, y, batch_size=32, epochs=epochs, shuffle=True, verbose=0, callbacks=list(callbacks))


def test_general_path_steady_state_allocates_no_arrays():
    spec, errors = load_spec_text(CNN)
    assert not errors
    engine = Engine(spec.graph)
    engine.initialize(0)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((32 * 6 + 10, 12, 12, 3)).astype(np.float32)
    y = rng.integers(0, 4, len(x))

    with StepPeak() as record:
        _fit(engine, spec, x, y, [record])
    steps = len(record.peaks) // 3
    smallest_buffer = 32 * 10 * 10 * 8 * 4  # the first convolution's output, 100 KB
    assert max(record.peaks[:steps]) > smallest_buffer  # the sets are made in the first epoch: seen here
    # Later steps: small Python objects and label-sized arrays only (the loss's NaN check and label cast,
    # the metric, about 16 KB in all); each epoch's first step also holds the epoch's permutation. The
    # bound is a quarter of the smallest activation buffer: any array of a layer's size would cross it.
    later = [p for k, p in enumerate(record.peaks[steps:]) if k % steps]
    assert max(later) < smallest_buffer // 4, later


def test_reuse_changes_no_result():
    """The same fit with and without the workspace (Engine.forward/backward reuse=False) agrees to the bit."""
    spec, _ = load_spec_text(CNN)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((70, 12, 12, 3)).astype(np.float32)
    y = rng.integers(0, 4, len(x))
    results = []
    for reuse in (True, False):
        engine = Engine(spec.graph)
        engine.initialize(0)
        if not reuse:
            forward, backward = engine.forward, engine.backward
            engine.forward = lambda *a, f=forward, reuse=False, **k: f(*a, reuse=False, **k)
            engine.backward = lambda *a, b=backward, reuse=False, **k: b(*a, reuse=False, **k)
        history = _fit(engine, spec, x, y, epochs=2)
        results.append((history.history["loss"], engine.params.copy(), engine.workspace.nbytes))
    assert results[0][2] > 100_000 > results[1][2]  # without reuse only the losses' small arrays are kept
    assert results[0][0] == results[1][0]
    np.testing.assert_array_equal(results[0][1], results[1][1])
