"""bench/zoo.py's real-architecture workloads: the committed specs are what the generator writes, they
validate, and bench/torch_zoo.py's hand-written PyTorch peers compute the same function from specc's
initial weights (same training-mode forward, hence the same first loss in bench/run.py's check)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from specc.spec import load_spec

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "bench"
MODELS = ("resnet20", "mobilenetv2", "resnet50")


def test_committed_specs_are_the_generated_ones():
    proc = subprocess.run([sys.executable, str(BENCH / "zoo.py"), "--check"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("model", MODELS)
def test_specs_validate(model):
    spec, errors = load_spec(str(BENCH / "workloads" / f"{model}_train.yaml"))
    assert not errors, errors
    assert spec.compile.optimizer.type == "sgd" and spec.compile.optimizer.momentum == 0.9


def test_resnet20_parameter_count():
    # He et al. (2016), Table 6: ResNet-20 has 0.27M parameters (our shortcuts are 1x1 projections with
    # BatchNormalization where the shape changes, "option B": a few thousand more than option A)
    from specc.engine import Engine

    spec, _ = load_spec(str(BENCH / "workloads" / "resnet20_train.yaml"))
    engine = Engine(spec.graph)
    assert 265_000 <= engine.n_trainable <= 280_000


@pytest.mark.parametrize("model", ("resnet20", "mobilenetv2"))
def test_torch_peer_computes_the_same_training_forward(model):
    torch = pytest.importorskip("torch")
    sys.path.insert(0, str(BENCH))
    try:
        import torch_zoo
    finally:
        sys.path.remove(str(BENCH))
    from specc.engine import Engine

    spec, _ = load_spec(str(BENCH / "workloads" / f"{model}_train.yaml"))
    engine = Engine(spec.graph)
    engine.initialize(0)
    peer = torch_zoo.build(model, engine.get_weights())
    shape = spec.graph.inputs[0].output_shape
    x = np.random.default_rng(1).normal(size=(4, *shape)).astype(np.float32)
    ours = engine.forward([x], training=True)[0]
    peer.train()
    with torch.no_grad():
        theirs = torch.softmax(peer(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())), -1).numpy()
    np.testing.assert_allclose(ours, theirs, rtol=1e-3, atol=1e-5)
