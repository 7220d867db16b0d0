"""bench/torch_zoo.py's Transformer peer computes specc's function on specc's initial weights: the Keras
layouts of MultiHeadAttention (query/key/value kernels (d, heads, head_dim), output kernel (heads, head_dim,
d)) and LayerNormalization mapped into nn.TransformerEncoderLayer. Small shapes; skipped without PyTorch."""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench")
sys.path.insert(0, BENCH)

import torch_zoo  # noqa: E402
import zoo  # noqa: E402

from specc.engine import Engine  # noqa: E402
from specc.spec import load_spec_text  # noqa: E402
from specc.train.fit import Trainer  # noqa: E402

DIMS = dict(features=3, width=8, heads=2, ff=16, depth=2, classes=3)


def test_the_committed_workload_is_what_zoo_writes():
    with open(zoo.path_of("transformer"), encoding="utf-8") as fh:
        assert fh.read() == zoo.to_yaml(zoo.transformer())


def test_torch_peer_matches_specc_forward():
    spec, errors = load_spec_text(zoo.to_yaml(zoo.transformer(steps=5, **DIMS)))
    assert not errors, errors
    engine = Engine(spec.graph)
    engine.initialize(7)
    weights = engine.get_weights()
    # biases are zeros and LayerNormalization's gamma/beta ones/zeros at initialisation: make each distinct
    rng = np.random.default_rng(0)
    weights = [w + rng.normal(0, 0.3, w.shape).astype(w.dtype) for w in weights]
    engine.set_weights(weights)
    x = rng.normal(size=(4, 5, DIMS["features"])).astype(np.float32)
    ours = Trainer.predict_with(engine, x, batch_size=4)[0]

    model = torch_zoo.TransformerClassifier(**DIMS)
    torch_zoo.load_keras_weights(model, weights)
    model.eval()
    with torch.no_grad():
        theirs = torch.softmax(model(torch.from_numpy(x)), -1).numpy()
    np.testing.assert_allclose(ours, theirs, atol=2e-6)


def test_a_misplaced_weight_is_refused():
    model = torch_zoo.TransformerClassifier(**DIMS)
    spec, _ = load_spec_text(zoo.to_yaml(zoo.transformer(steps=5, **DIMS)))
    engine = Engine(spec.graph)
    engine.initialize(0)
    weights = engine.get_weights()
    weights[2], weights[3] = weights[3], weights[2]  # the query kernel and its bias swapped
    with pytest.raises(ValueError, match="does not fit"):
        torch_zoo.load_keras_weights(model, weights)
