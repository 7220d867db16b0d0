"""The start-up compile worker of `specc train` (specc/train/warmup.py): started on a cache no model has
been trained into, not on one that has (a marker), stopped after the first step; training with it gives
what training without it gives."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from specc.spec.overrides import apply_overrides
from specc.train import warmup

SPEC = """\
specc: 1
name: cold_tiny
seed: 0
model:
  input: [6]
  layers:
    - {type: Dense, units: 5, activation: relu}
    - {type: Dense, units: 3, activation: softmax}
data: {source: synthetic, samples: 32, classes: 3, test_split: 0.0}
compile:
  optimizer: {type: sgd, learning_rate: 0.1}
  loss: sparse_categorical_crossentropy
fit: {batch_size: 8, epochs: 1, shuffle: false, verbose: 0}
"""


def parsed():
    spec, errors = apply_overrides(SPEC.encode(), [], "spec.yaml")
    assert not errors
    return spec


def test_the_worker_starts_on_a_cold_cache_and_not_once_a_model_is_trained_into_it(tmp_path, monkeypatch):
    monkeypatch.setenv("NUMBA_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("SPECC_COMPILE_WORKER", raising=False)
    monkeypatch.delenv("SPECC_COMPILE_CLAIMS", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    spec = parsed()
    running = warmup.start(spec, SPEC.encode(), "spec.yaml", [], 8, 1)
    assert running is not None
    try:
        assert running.process.poll() is None
        assert os.path.isdir(os.environ["SPECC_COMPILE_CLAIMS"])
    finally:
        running.finish(compiled=True)  # what the end of the first step does
    assert running.process is None and not os.path.exists(running.claims)
    assert "SPECC_COMPILE_CLAIMS" not in os.environ
    assert warmup.start(spec, SPEC.encode(), "spec.yaml", [], 8, 1) is None  # its marker is there now
    # nor for another model: a cache a model was trained into holds most kernels
    assert warmup.start(spec, SPEC.encode(), "spec.yaml", [], 16, 1) is None


def test_no_worker_on_one_core_or_when_turned_off(tmp_path, monkeypatch):
    monkeypatch.setenv("NUMBA_CACHE_DIR", str(tmp_path / "cache"))
    spec = parsed()
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0}, raising=False)
    assert warmup.start(spec, SPEC.encode(), "spec.yaml", [], 8, 1) is None
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    monkeypatch.setenv("SPECC_COMPILE_WORKER", "0")
    assert warmup.start(spec, SPEC.encode(), "spec.yaml", [], 8, 1) is None
    # a cache directory where no marker can be written: a worker would start at every run
    monkeypatch.setenv("SPECC_COMPILE_WORKER", "1")
    monkeypatch.setattr(os, "access", lambda path, mode: False)
    assert warmup.start(spec, SPEC.encode(), "spec.yaml", [], 8, 1) is None


def train(tmp_path, cache: str, worker: bool) -> dict:
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC)
    env = {k: v for k, v in os.environ.items() if k not in ("SPECC_COMPILE_CLAIMS",)}
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(warmup.__file__))))  # holds specc/
    env.update(NUMBA_CACHE_DIR=cache, SPECC_NATIVE="0", SPECC_COMPILE_WORKER="1" if worker else "0",
               PYTHONPATH=os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")])))
    out = tmp_path / ("runs-worker" if worker else "runs")
    proc = subprocess.run([sys.executable, "-m", "specc.cli", "train", str(spec), "--quiet", "--out", str(out),
                           "--threads", "1"], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    (run,) = [os.path.join(root, d) for root, dirs, _ in os.walk(out) for d in dirs if d[:1].isdigit()]
    with np.load(os.path.join(run, "weights.final.npz")) as weights:
        return {k: weights[k] for k in weights.files}


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity") or len(os.sched_getaffinity(0)) < 2,
                    reason="the worker needs a second core")
def test_training_with_the_worker_on_a_cold_cache_matches_training_without_it(tmp_path):
    cache = str(tmp_path / "cache")
    with_worker = train(tmp_path, cache, worker=True)
    assert [n for n in os.listdir(cache) if n.startswith(warmup.MARKER_PREFIX)], "no marker after the first step"
    without = train(tmp_path, str(tmp_path / "other-cache"), worker=False)
    assert with_worker.keys() == without.keys()
    for key in without:
        np.testing.assert_array_equal(with_worker[key], without[key])
